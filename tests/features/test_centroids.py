"""Centroid distances (de Brébisson and Montana 2015): centres of mass in mm, scale invariance, missing regions."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.centroids import RegionCentroids, region_centroids


def _regions(shape=(20, 24, 16)) -> np.ndarray:
    # Three box regions of different sizes in a non-cubic volume.
    m = np.zeros(shape, int)
    m[2:6, 3:9, 2:5] = 1
    m[10:18, 4:8, 6:14] = 2
    m[5:9, 15:22, 9:12] = 3
    return m


def test_centroids_are_centres_of_mass_in_world_mm(affine):
    m = _regions()
    centroids, present = region_centroids(m, affine, 3)
    assert present.all()
    for k in range(3):
        ijk = np.argwhere(m == k + 1).mean(axis=0)
        np.testing.assert_allclose(centroids[k], affine[:3, :3] @ ijk + affine[:3, 3])
    # box 1's centre by hand: voxels 2..5, 3..8, 2..4 -> (3.5, 5.5, 3)
    np.testing.assert_allclose(centroids[0], affine[:3, :3] @ [3.5, 5.5, 3.0] + affine[:3, 3])


def test_scaled_distances_are_invariant_to_the_brain_s_size(affine, rng):
    m = _regions()
    points_ijk = rng.uniform(0, 15, (50, 3))
    base = RegionCentroids.of(m, affine, 3)
    d = base.distances(points_ijk @ affine[:3, :3].T + affine[:3, 3])
    # the same brain 1.1 times larger (voxel size times 1.1) and moved: same scaled distances at the same voxels
    bigger = affine.copy()
    bigger[:3, :3] *= 1.1
    bigger[:3, 3] += (5.0, -3.0, 12.0)
    big = RegionCentroids.of(m, bigger, 3)
    np.testing.assert_allclose(big.distances(points_ijk @ bigger[:3, :3].T + bigger[:3, 3]), d, rtol=1e-5)
    assert big.scale_mm == pytest.approx(1.1 * base.scale_mm)
    # and the scale is the mean pairwise centroid distance
    c = base.centroids
    pairs = [np.linalg.norm(c[i] - c[j]) for i in range(3) for j in range(i + 1, 3)]
    assert base.scale_mm == pytest.approx(np.mean(pairs))
    assert d.dtype == np.float32 and d.shape == (50, 3)


def test_a_missing_region_sits_at_the_brain_s_centre(affine):
    m = _regions()
    m[m == 2] = 0
    centroids, present = region_centroids(m, affine, 4)  # region 4 never occurs, region 2 removed
    assert present.tolist() == [True, False, True, False]
    centre = affine[:3, :3] @ np.argwhere(m > 0).mean(axis=0) + affine[:3, 3]
    np.testing.assert_allclose(centroids[1], centre)
    np.testing.assert_allclose(centroids[3], centre)
    cents = RegionCentroids(centroids, present)
    # the scale comes from the present regions only
    assert cents.scale_mm == pytest.approx(np.linalg.norm(centroids[0] - centroids[2]))
    assert np.isfinite(cents.distances(np.zeros((1, 3)))).all()


def test_errors():
    with pytest.raises(ValueError, match="no region voxel"):
        region_centroids(np.zeros((3, 3, 3), int), np.eye(4), 2)
    with pytest.raises(ValueError, match="at least two"):
        RegionCentroids(np.zeros((3, 3)), np.array([True, False, False]))
