"""Distances from a voxel to the centroids of the brain's regions (de Brébisson and Montana 2015, §3.1.2, §3.4).

A region's centroid is its centre of mass in mm (world coordinates). The distances from a voxel to
the ``K`` centroids describe where the voxel lies relative to the brain's anatomy, whatever the head's
position. So that brains of different sizes give comparable values, the distances are divided by the
brain's mean inter-centroid distance (the mean over all pairs of present centroids): section 3.1.2's
formula prints this factor as a multiplication, which would make the values grow with the brain; a
division makes them invariant to the brain's scale (tested: a brain scaled by 1.1 gives the same
scaled distances).

At training time the centroids come from the reference label map; at inference from a segmentation
(the iterative two-stage inference of section 3.4). A region absent from a segmentation has no
centroid: it is placed at the centre of mass of all present regions' voxels (the brain's centre),
which keeps its distances finite and of the brain's scale; the authors' code put it at the mean of
the present centroids' coordinates, which is nearly the same point.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist, pdist

__all__ = ["RegionCentroids", "region_centroids"]


def region_centroids(class_map: np.ndarray, affine: np.ndarray, num_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of mass in mm of regions ``1 .. num_regions`` of a class map.

    Parameters
    ----------
    class_map : ndarray of int, shape (D, H, W)
        Class indices, 0 = background.
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm.
    num_regions : int
        ``K``: classes ``1 .. K`` are regions.

    Returns
    -------
    centroids : ndarray of float64, shape (K, 3)
        In mm; a missing region gets the centre of mass of all region voxels (see the module notes).
    present : ndarray of bool, shape (K,)
        Whether each region has voxels.

    Raises
    ------
    ValueError
        If the map holds no region voxel at all.

    Examples
    --------
    >>> m = np.zeros((4, 1, 1), int); m[0] = 1; m[3] = 1
    >>> c, present = region_centroids(m, np.diag([2.0, 1.0, 1.0, 1.0]), 2)
    >>> c.tolist(), present.tolist()
    ([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]], [True, False])
    """
    labels = np.asarray(class_map)
    index = np.arange(1, num_regions + 1)
    counts = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    present = counts > 0
    if not present.any():
        raise ValueError("the class map has no region voxel: no centroid can be computed")
    ijk = np.zeros((num_regions, 3))
    for axis in range(3):
        coordinate = np.broadcast_to(
            np.arange(labels.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]), labels.shape
        )
        sums = ndimage.sum_labels(coordinate, labels, index)
        ijk[present, axis] = sums[present] / counts[present]
        ijk[~present, axis] = sums[present].sum() / counts[present].sum()
    affine = np.asarray(affine, float)
    return ijk @ affine[:3, :3].T + affine[:3, 3], present


class RegionCentroids:
    """A brain's region centroids and its scale: the per-voxel scaled centroid distances (§3.1.2).

    Parameters
    ----------
    centroids : ndarray of float, shape (K, 3)
        In mm (:func:`region_centroids`).
    present : ndarray of bool, shape (K,), optional
        Regions with voxels; the scale is the mean distance between pairs of present centroids
        (default: all present).

    Raises
    ------
    ValueError
        If fewer than two centroids are present (no scale).
    """

    def __init__(self, centroids: np.ndarray, present: np.ndarray | None = None) -> None:
        self.centroids = np.asarray(centroids, float).reshape(-1, 3)
        self.present = np.ones(len(self.centroids), bool) if present is None else np.asarray(present, bool)
        if self.present.sum() < 2:
            raise ValueError("need at least two present regions to scale centroid distances")
        self.scale_mm = float(pdist(self.centroids[self.present]).mean())

    @classmethod
    def of(cls, class_map: np.ndarray, affine: np.ndarray, num_regions: int) -> RegionCentroids:
        """The centroids of a class map (:func:`region_centroids`).

        Parameters
        ----------
        class_map : ndarray of int, shape (D, H, W)
            Class indices, 0 = background.
        affine : ndarray of float, shape (4, 4)
            Voxel -> mm.
        num_regions : int
            ``K``: classes ``1 .. K`` are regions.

        Returns
        -------
        RegionCentroids

        Raises
        ------
        ValueError
            If fewer than two regions have voxels.
        """
        return cls(*region_centroids(class_map, affine, num_regions))

    def distances(self, points_mm: np.ndarray) -> np.ndarray:
        """Scaled distances ``(N, K)`` float32 from points ``(N, 3)`` in mm: mm distances / :attr:`scale_mm`.

        Parameters
        ----------
        points_mm : ndarray of float, shape (N, 3)
            Points (e.g. voxel centres) in mm.

        Returns
        -------
        ndarray of float32, shape (N, K)
            Euclidean distance to each centroid (absent regions' included) divided by :attr:`scale_mm`
            (section 3.1.2, with the division explained in the module notes).
        """
        points = np.asarray(points_mm, float).reshape(-1, 3)
        return (cdist(points, self.centroids) / self.scale_mm).astype(np.float32)
