"""Landmark grid and distances against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.landmarks import landmark_distances, landmark_grid, rbf, voxel_centres_mm


def test_grid_positions_by_hand():
    # 7 landmarks along an axis of 14 voxels: bin centres at 0.5, 2.5, ..., 12.5 voxels.
    grid = landmark_grid((14, 7, 21), np.eye(4), n=7)
    assert grid.shape == (343, 3)
    np.testing.assert_allclose(np.unique(grid[:, 0]), np.arange(7) * 2 + 0.5)
    np.testing.assert_allclose(np.unique(grid[:, 1]), np.arange(7))
    np.testing.assert_allclose(np.unique(grid[:, 2]), np.arange(7) * 3 + 1.0)
    # last axis varies fastest
    np.testing.assert_allclose(grid[:3, 2], [1.0, 4.0, 7.0])
    assert grid[0, 0] == grid[6, 0] and grid[7, 1] != grid[0, 1]


def test_grid_follows_anisotropic_affine(affine):
    grid = landmark_grid((10, 20, 30), affine, n=2)
    # voxel index of landmark 0 is (2, 4.5, 7); world = affine @ index
    expected = affine[:3, :3] @ np.array([2.0, 4.5, 7.0]) + affine[:3, 3]
    np.testing.assert_allclose(grid[0], expected)
    np.testing.assert_allclose(voxel_centres_mm(np.array([[2.0, 4.5, 7.0]]), affine)[0], expected)


def test_distances_by_hand():
    landmarks = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 2.0, 2.0]])
    d = landmark_distances(np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 12.0]]), landmarks)
    np.testing.assert_allclose(d, [[0.0, 5.0, 3.0], [13.0, 12.0, np.sqrt(4 + 4 + 100)]], rtol=1e-6)
    assert d.dtype == np.float32


def test_distances_scale_with_spacing():
    idx = np.array([[0, 0, 0], [3, 1, 2]])
    iso = landmark_distances(voxel_centres_mm(idx[:1], np.eye(4)), voxel_centres_mm(idx[1:], np.eye(4)))
    aniso = landmark_distances(
        voxel_centres_mm(idx[:1], np.diag([2.0, 2.0, 2.0, 1.0])),
        voxel_centres_mm(idx[1:], np.diag([2.0, 2.0, 2.0, 1.0])),
    )
    np.testing.assert_allclose(aniso, 2 * iso)


def test_rbf_values():
    np.testing.assert_allclose(rbf(np.array([0.0, 10.0])), [1.0, np.exp(-1.0)])
    np.testing.assert_allclose(rbf(np.array([2.0]), alpha=0.25), [np.exp(-1.0)])


def test_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        landmark_grid((4, 4, 4), np.eye(4), n=0)
