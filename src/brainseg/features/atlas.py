"""Probabilistic atlases: per-class voxel frequencies of registered label maps (Ganaye et al. 2018, section 2.3).

The ProbBranch of Ganaye et al. reads, at each voxel, the probability of every
class given by an atlas built from the training label maps registered to a
common reference space. Frequencies are lightly smoothed and floored so that
no class is impossible anywhere, then renormalised to sum to 1 per voxel.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["build_probabilistic_atlas"]


def build_probabilistic_atlas(
    class_maps: Iterable[np.ndarray],
    num_classes: int,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    sigma_mm: float = 1.0,
    floor: float = 1e-4,
) -> np.ndarray:
    """Build a probabilistic atlas from label maps already on one reference grid.

    Parameters
    ----------
    class_maps : iterable of ndarray of int, each shape (D, H, W)
        Class indices (``0 .. num_classes - 1``, not protocol label numbers)
        of the registered training subjects.
    num_classes : int
        Number of classes, background included.
    spacing : tuple of 3 float
        Voxel size of the reference grid in mm.
    sigma_mm : float
        Standard deviation of the Gaussian smoothing in mm (0 = none).
    floor : float
        Added to every class probability before renormalisation (> 0 keeps
        every class possible).

    Returns
    -------
    ndarray of float32, shape (num_classes, D, H, W)
        Class probabilities; they sum to 1 over axis 0 at every voxel.

    Raises
    ------
    ValueError
        If no map is given, shapes differ, a class index is out of range, or
        ``floor`` is negative.

    Examples
    --------
    Two one-voxel "subjects", labelled 1 and 2, three classes, no smoothing or floor:

    >>> atlas = build_probabilistic_atlas([np.array([[[1]]]), np.array([[[2]]])], 3, sigma_mm=0, floor=0)
    >>> atlas[:, 0, 0, 0].tolist()
    [0.0, 0.5, 0.5]
    """
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    counts: np.ndarray | None = None
    n = 0
    for class_map in class_maps:
        class_map = np.asarray(class_map)
        if counts is None:
            counts = np.zeros((num_classes,) + class_map.shape, np.float32)
        if class_map.shape != counts.shape[1:]:
            raise ValueError(f"label map shape {class_map.shape} != {counts.shape[1:]}")
        if class_map.min() < 0 or class_map.max() >= num_classes:
            raise ValueError(f"class indices must lie in [0, {num_classes}), got {class_map.min()}..{class_map.max()}")
        for c in np.unique(class_map):
            counts[c] += class_map == c
        n += 1
    if counts is None:
        raise ValueError("no label maps given")
    atlas = counts / n
    if sigma_mm > 0:
        sigma = [sigma_mm / s for s in spacing]
        for c in range(num_classes):
            ndimage.gaussian_filter(atlas[c], sigma, output=atlas[c], mode="nearest")
    atlas += floor
    atlas /= atlas.sum(axis=0, keepdims=True)
    return atlas
