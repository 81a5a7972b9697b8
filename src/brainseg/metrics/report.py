"""Per-structure evaluation of a predicted label map against a reference."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainseg.io.atomic import atomic_write_text
from brainseg.labels import LabelTable
from brainseg.metrics.distance import surface_distances
from brainseg.metrics.overlap import dice_per_class, volumetric_similarity

__all__ = ["StructureScore", "evaluate_label_maps", "summarize", "write_scores_csv", "write_scores_json"]

METRICS = ("dice", "hausdorff", "hd95", "msd", "volumetric_similarity")


@dataclass(frozen=True)
class StructureScore:
    """Scores of one structure of one case. Distances in mm; see :mod:`brainseg.metrics.distance`.

    Attributes
    ----------
    case_id : str
        The case the structure belongs to ("" when not given).
    label : int
        The structure's protocol label number.
    name : str
        The structure's name in the label table.
    dice : float
        Dice coefficient 2|P & R| / (|P| + |R|); NaN if the structure is absent from both maps.
    hausdorff : float
        Symmetric Hausdorff distance in mm; NaN if absent from both maps, ``inf`` if absent from one.
    hd95 : float
        Larger of the two directed 95th-percentile surface distances in mm; NaN or ``inf`` as ``hausdorff``.
    msd : float
        Mean surface distance in mm (Ganaye et al. 2018, section 3.2); NaN or ``inf`` as ``hausdorff``.
    volumetric_similarity : float
        1 - ||P| - |R|| / (|P| + |R|); NaN if the structure is absent from both maps.
    prediction_voxels, reference_voxels : int
        Voxels of the structure in the prediction and in the reference.
    """

    case_id: str
    label: int
    name: str
    dice: float
    hausdorff: float
    hd95: float
    msd: float
    volumetric_similarity: float
    prediction_voxels: int
    reference_voxels: int


def evaluate_label_maps(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: LabelTable,
    spacing: tuple[float, ...],
    *,
    case_id: str = "",
    distances: bool = True,
) -> list[StructureScore]:
    """Score every structure (background excluded) of a prediction.

    Parameters
    ----------
    prediction, reference : ndarray of int, shape (D, H, W)
        Protocol label numbers on the same grid; numbers not in ``labels``
        count as background.
    labels : LabelTable
        The structures to score.
    spacing : tuple of 3 float
        Voxel size in mm.
    case_id : str
        Written into each row.
    distances : bool
        Compute the surface distances (set False for Dice only).

    Returns
    -------
    list of StructureScore
        One per structure, in class order.

    Raises
    ------
    ValueError
        If the two maps' shapes differ.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    p, r = labels.to_classes(prediction), labels.to_classes(reference)
    n = labels.num_classes
    dices = dice_per_class(p, r, n)
    p_counts = np.bincount(p.ravel(), minlength=n)
    r_counts = np.bincount(r.ravel(), minlength=n)
    nan = float("nan")
    scores = []
    for c in range(1, n):
        in_p, in_r = p == c, r == c
        vs = volumetric_similarity(in_p, in_r)
        d = surface_distances(in_p, in_r, spacing) if distances else None
        scores.append(
            StructureScore(
                case_id,
                labels.labels[c],
                labels.names[c],
                float(dices[c]),
                d.hausdorff if d else nan,
                d.hd95 if d else nan,
                d.mean if d else nan,
                vs,
                int(p_counts[c]),
                int(r_counts[c]),
            )
        )
    return scores


def summarize(scores: list[StructureScore]) -> dict[str, float]:
    """Means over structures (and cases) of every metric.

    Structures absent from both maps (NaN) and, for distances, structures
    absent from one map (inf) are left out of the means; ``missing`` counts
    the latter.

    Parameters
    ----------
    scores : list of StructureScore
        Rows of one or more cases.

    Returns
    -------
    dict of str to float
        The mean of each of ``dice``, ``hausdorff``, ``hd95``, ``msd`` and ``volumetric_similarity`` (NaN if no
        finite value; distances in mm), plus ``missing`` (structures whose Hausdorff distance is ``inf``) and
        ``structures`` (the number of rows), both int.
    """
    out: dict[str, float] = {}
    for metric in METRICS:
        values = [getattr(s, metric) for s in scores]
        finite = [v for v in values if math.isfinite(v)]
        out[metric] = float(np.mean(finite)) if finite else float("nan")
    out["missing"] = sum(1 for s in scores if math.isinf(s.hausdorff))
    out["structures"] = len(scores)
    return out


def write_scores_csv(path: str | Path, scores: list[StructureScore]) -> None:
    """Write one row per structure and a final ``mean`` row.

    Parameters
    ----------
    path : str or Path
        The CSV file, written atomically (replaced if it exists).
    scores : list of StructureScore
        The rows; the columns are the fields of :class:`StructureScore`, and the ``mean`` row holds
        :func:`summarize`'s means (``case_id`` "mean", ``name`` "all", label and voxel counts empty).
    """
    import io

    buf = io.StringIO()
    fields = list(StructureScore.__dataclass_fields__)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for s in scores:
        writer.writerow([getattr(s, f) for f in fields])
    mean = summarize(scores)
    writer.writerow(["mean", "", "all"] + [mean[m] for m in METRICS] + ["", ""])
    atomic_write_text(Path(path), buf.getvalue())


def write_scores_json(path: str | Path, scores: list[StructureScore]) -> None:
    """Write ``{"structures": [...], "mean": {...}}`` (NaN and inf as null).

    Parameters
    ----------
    path : str or Path
        The JSON file, written atomically (replaced if it exists).
    scores : list of StructureScore
        One ``structures`` entry each; ``mean`` is :func:`summarize` of them.
    """

    def clean(v: object) -> object:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    data = {
        "structures": [{k: clean(v) for k, v in asdict(s).items()} for s in scores],
        "mean": {k: clean(v) for k, v in summarize(scores).items()},
    }
    atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")
