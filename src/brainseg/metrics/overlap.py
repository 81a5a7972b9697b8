"""Overlap metrics: Dice and volumetric similarity, per structure.

Conventions for a structure missing from one or both label maps:

- absent from both: Dice and volumetric similarity are NaN (nothing to
  score) and the structure is left out of means;
- absent from one side only: Dice = 0 and volumetric similarity = 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "dice_per_class", "error_rate", "volumetric_similarity"]


def _check(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient 2|P & R| / (|P| + |R|) of two binary masks.

    Parameters
    ----------
    prediction, reference : ndarray of bool, same shape
        Binary masks.

    Returns
    -------
    float
        In [0, 1]; NaN when both masks are empty.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([1, 1, 1, 1, 0], bool); r = np.array([1, 1, 1, 0, 0], bool)
    >>> round(dice(p, r), 3)
    0.857
    """
    _check(prediction, reference)
    p, r = np.asarray(prediction, bool), np.asarray(reference, bool)
    total = int(p.sum()) + int(r.sum())
    return float("nan") if total == 0 else 2.0 * int((p & r).sum()) / total


def volumetric_similarity(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Volumetric similarity 1 - ||P| - |R|| / (|P| + |R|) of two binary masks.

    Returns NaN when both masks are empty. One of the three MRBrainS18 challenge metrics (with Dice and
    HD95); it compares the volumes only, not where the voxels are.

    Parameters
    ----------
    prediction, reference : ndarray, same shape
        Binary masks (any dtype; non-zero voxels are in the mask).

    Returns
    -------
    float
        In [0, 1]; 0 when exactly one mask is empty, NaN when both are.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    _check(prediction, reference)
    a, b = int(np.count_nonzero(prediction)), int(np.count_nonzero(reference))
    return float("nan") if a + b == 0 else 1.0 - abs(a - b) / (a + b)


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every class at once, from a confusion count.

    Parameters
    ----------
    prediction, reference : ndarray of int, same shape
        Class indices in ``0 .. num_classes - 1``.
    num_classes : int
        Number of classes, background included.

    Returns
    -------
    ndarray of float64, shape (num_classes,)
        Dice per class (index 0 is background); NaN where a class is absent
        from both maps.
    """
    _check(prediction, reference)
    p = np.asarray(prediction, np.int64).ravel()
    r = np.asarray(reference, np.int64).ravel()
    both = np.bincount(p[p == r], minlength=num_classes)[:num_classes]
    sizes = np.bincount(p, minlength=num_classes)[:num_classes] + np.bincount(r, minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, 2.0 * both / np.maximum(sizes, 1), np.nan)


def error_rate(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of the reference's structure voxels given another class (de Brébisson and Montana 2015, Table 1).

    The paper's error rate is measured on voxels drawn uniformly from the labelled brain; here it is
    over every voxel whose reference class is a structure (class > 0), so a structure voxel predicted
    as background counts as an error and a background voxel predicted as a structure does not.

    Parameters
    ----------
    prediction, reference : ndarray of int, same shape
        Class indices (0 = background).

    Returns
    -------
    float
        In [0, 1]; NaN if the reference has no structure voxel.

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> error_rate(np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 2, 0]))
    0.3333333333333333
    """
    _check(prediction, reference)
    labelled = np.asarray(reference) > 0
    total = int(np.count_nonzero(labelled))
    if total == 0:
        return float("nan")
    return float(np.count_nonzero(np.asarray(prediction)[labelled] != np.asarray(reference)[labelled])) / total
