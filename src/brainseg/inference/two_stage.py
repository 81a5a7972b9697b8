"""Iterative two-stage inference with centroid distances (de Brébisson and Montana 2015, §3.4).

The centroid distances of a voxel need the brain's region centroids, which inference does not know:

1. a network without the centroid pathway segments the brain;
2. the centroids are estimated from that segmentation (:class:`~brainseg.features.centroids.RegionCentroids`);
3. the full network segments with the distances to those centroids;
4. the centroids are re-estimated from the new segmentation and steps 3-4 repeat until the
   segmentation stops changing: the fraction of brain voxels whose class changed in the last pass is
   at most ``tolerance``, or ``max_iterations`` passes of the full network have run.

:func:`iterate_centroids` runs this loop over two callables, so that the family's dense predictor can
reuse the image features across passes and recompute only the distance pathway and the head. It logs
the changed fraction of every pass, and a region missing from an intermediate segmentation gets the
placement rule of :func:`~brainseg.features.centroids.region_centroids`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from brainseg.features.centroids import RegionCentroids

__all__ = ["TwoStageResult", "iterate_centroids"]

log = logging.getLogger(__name__)


@dataclass
class TwoStageResult:
    """What the iterative inference did.

    Attributes
    ----------
    classes : ndarray of uint8, shape (D, H, W)
        The last segmentation (class indices).
    iterations : int
        Passes of the full network (0 when the first stage found no two regions to measure from).
    changed : list of float
        Per pass of the full network, the fraction of brain voxels whose class changed from the
        segmentation before it (the first compares with the first stage's).
    missing : list of int
        Per segmentation the centroids were estimated from, the number of regions absent from it.
    converged : bool
        Whether the last pass changed at most ``tolerance`` of the brain voxels.
    passes : list of ndarray
        With ``keep_passes``: the first stage's class map, then each pass's (to score every
        iteration, e.g. :mod:`brainseg.training.refinement`); else empty.
    """

    classes: np.ndarray
    iterations: int = 0
    changed: list[float] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    converged: bool = False
    passes: list[np.ndarray] = field(default_factory=list)


def iterate_centroids(
    first_stage: Callable[[], np.ndarray],
    full_network: Callable[[RegionCentroids], np.ndarray],
    mask: np.ndarray,
    affine: np.ndarray,
    num_regions: int,
    *,
    max_iterations: int = 5,
    tolerance: float = 1e-3,
    keep_passes: bool = False,
) -> TwoStageResult:
    """Segment, estimate centroids, re-segment with their distances until the labels settle (§3.4).

    Parameters
    ----------
    first_stage : callable () -> ndarray of int, shape (D, H, W)
        The network without the centroid pathway: a class map.
    full_network : callable (RegionCentroids) -> ndarray of int, shape (D, H, W)
        The full network given the centroids: a class map.
    mask : ndarray of bool, shape (D, H, W)
        Brain voxels (where the changed fraction is measured).
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm of the class maps.
    num_regions : int
        Regions ``1 .. K`` whose centroids the full network reads.
    max_iterations : int
        Most passes of the full network (>= 1).
    tolerance : float
        Stop once a pass changes at most this fraction of the brain voxels.
    keep_passes : bool
        Keep every segmentation in :attr:`TwoStageResult.passes`.

    Returns
    -------
    TwoStageResult

    Raises
    ------
    ValueError
        If ``max_iterations`` < 1 or ``tolerance`` < 0.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    brain = np.asarray(mask, bool)
    classes = np.asarray(first_stage())
    result = TwoStageResult(classes)
    if keep_passes:
        result.passes.append(classes)
    for iteration in range(1, max_iterations + 1):
        present = np.unique(classes[brain & (classes > 0) & (classes <= num_regions)])
        if len(present) < 2:
            log.warning("centroid distances: fewer than two regions segmented; keeping the segmentation")
            break
        centroids = RegionCentroids.of(classes, affine, num_regions)
        result.missing.append(int((~centroids.present).sum()))
        new = np.asarray(full_network(centroids))
        changed = float(np.count_nonzero((new != classes) & brain)) / max(int(brain.sum()), 1)
        result.changed.append(changed)
        result.iterations, result.classes, classes = iteration, new, new
        if keep_passes:
            result.passes.append(new)
        log.info(
            "centroid pass %d: %.4f of brain voxels changed, %d regions missing", iteration, changed, result.missing[-1]
        )
        if changed <= tolerance:
            result.converged = True
            break
    return result
