"""Structure volumes of a label map."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from brainseg.io.atomic import atomic_write_text
from brainseg.labels import LabelTable

__all__ = ["structure_volumes", "write_volumes_csv"]


def structure_volumes(
    label_map: np.ndarray, labels: LabelTable, spacing: tuple[float, ...]
) -> list[tuple[int, str, int, float]]:
    """Voxel count and volume of every structure of a protocol.

    Parameters
    ----------
    label_map : ndarray of int, shape (D, H, W)
        Protocol label numbers.
    labels : LabelTable
        Structures to report (background excluded).
    spacing : tuple of 3 float
        Voxel size in mm.

    Returns
    -------
    list of (label, name, voxels, volume_mm3)
        One row per structure in class order, zero where absent.

    Examples
    --------
    >>> import numpy as np
    >>> table = LabelTable((0, 4), ("Background", "3rd Ventricle"))
    >>> structure_volumes(np.array([[[0, 4, 4]]]), table, (1.0, 1.0, 2.0))
    [(4, '3rd Ventricle', 2, 4.0)]
    """
    voxel_mm3 = float(np.prod(spacing))
    classes = labels.to_classes(label_map)
    counts = np.bincount(classes.ravel(), minlength=labels.num_classes)
    return [
        (labels.labels[c], labels.names[c], int(counts[c]), float(counts[c]) * voxel_mm3)
        for c in range(1, labels.num_classes)
    ]


def write_volumes_csv(path: str | Path, rows: list[tuple[int, str, int, float]]) -> Path:
    """Write ``label,name,voxels,volume_mm3`` rows atomically."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "name", "voxels", "volume_mm3"])
    for label, name, voxels, volume in rows:
        writer.writerow([label, name, voxels, f"{volume:.3f}"])
    return atomic_write_text(path, buf.getvalue())
