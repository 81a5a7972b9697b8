"""Structure volumes of a label map."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from brainseg.io.atomic import atomic_write_text
from brainseg.labels import LabelTable

__all__ = ["read_volumes_csv", "structure_volumes", "voxel_volume_mm3", "write_volumes_csv"]


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm^3: |det| of the affine's 3 x 3 part.

    The product of the column norms (the voxel sizes) is only right for an
    orthogonal affine; a sheared one has a smaller voxel.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel index -> mm.

    Returns
    -------
    float
        mm^3.

    Examples
    --------
    >>> import numpy as np
    >>> sheared = np.eye(4); sheared[0, 1] = 1.0  # columns (1,0,0), (1,1,0), (0,0,1): norms 1, 1.414, 1
    >>> voxel_volume_mm3(sheared)
    1.0
    """
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))


def structure_volumes(
    label_map: np.ndarray, labels: LabelTable, affine: np.ndarray
) -> list[tuple[int, str, int, float]]:
    """Voxel count and volume of every structure of a protocol.

    Parameters
    ----------
    label_map : ndarray of int, shape (D, H, W)
        Protocol label numbers.
    labels : LabelTable
        Structures to report (background excluded).
    affine : ndarray, shape (4, 4)
        Voxel index -> mm of ``label_map``'s grid; a voxel's volume is
        :func:`voxel_volume_mm3` (|det| of its 3 x 3 part).

    Returns
    -------
    list of (label, name, voxels, volume_mm3)
        One row per structure in class order, zero where absent.

    Examples
    --------
    >>> import numpy as np
    >>> table = LabelTable((0, 4), ("Background", "3rd Ventricle"))
    >>> structure_volumes(np.array([[[0, 4, 4]]]), table, np.diag([1.0, 1.0, 2.0, 1.0]))
    [(4, '3rd Ventricle', 2, 4.0)]
    """
    voxel_mm3 = voxel_volume_mm3(affine)
    classes = labels.to_classes(label_map)
    counts = np.bincount(classes.ravel(), minlength=labels.num_classes)
    return [
        (labels.labels[c], labels.names[c], int(counts[c]), float(counts[c]) * voxel_mm3)
        for c in range(1, labels.num_classes)
    ]


def write_volumes_csv(
    path: str | Path, rows: list[tuple[int, str, int, float]], comments: list[str] | None = None
) -> Path:
    """Write ``label,name,voxels,volume_mm3`` rows atomically, after ``# comment`` lines.

    Parameters
    ----------
    path : str or Path
        Output CSV.
    rows : list of (label, name, voxels, volume_mm3)
        From :func:`structure_volumes`.
    comments : list of str, optional
        Lines written first, each prefixed with ``# `` (what was done: brainseg
        version, model, input, skull stripping). Read the file with
        ``pandas.read_csv(path, comment="#")`` or :func:`read_volumes_csv`.

    Returns
    -------
    Path
        ``path``. Volumes are written with 3 decimals (mm^3).
    """
    path = Path(path)
    buf = io.StringIO()
    for line in comments or []:
        buf.write("# " + line.replace("\n", " ") + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "name", "voxels", "volume_mm3"])
    for label, name, voxels, volume in rows:
        writer.writerow([label, name, voxels, f"{volume:.3f}"])
    return atomic_write_text(path, buf.getvalue())


def read_volumes_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a volumes CSV written by :func:`write_volumes_csv`.

    Parameters
    ----------
    path : str or Path
        The CSV file.

    Returns
    -------
    comments : list of str
        The ``#`` header lines, without the ``# ``.
    rows : list of dict
        ``label``, ``name``, ``voxels``, ``volume_mm3`` as strings.
    """
    lines = Path(path).read_text().splitlines()
    comments = [line[2:] if line.startswith("# ") else line[1:] for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    return comments, rows
