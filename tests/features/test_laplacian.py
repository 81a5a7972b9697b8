"""The graph Laplacian of a mask and its smallest eigenvectors (Wachinger et al. 2018, Eq. 4-5): hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.laplacian import (
    block_mask,
    coarse_to_fine,
    eigenvector_images,
    laplacian,
    largest_component,
)


@pytest.fixture
def brain_like() -> np.ndarray:
    """An asymmetric ellipsoid 'brain' (longest along axis 1) on an even-sized grid."""
    grid = np.indices((36, 44, 30), dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (17.5, 21.5, 14.5), (13.0, 19.0, 11.0))) <= 1.0


# --- Laplacian (Eq. 4) --------------------------------------------------------------------------------------------


def test_laplacian_of_a_2x2x1_square_by_hand():
    # voxels (0,0), (0,1), (1,0), (1,1) in C order: each has two face neighbours, the diagonal pairs none
    lap = laplacian(np.ones((2, 2, 1), bool))
    assert lap.format == "csr" and lap.shape == (4, 4)
    np.testing.assert_array_equal(lap.toarray(), [[2, -1, -1, 0], [-1, 2, 0, -1], [-1, 0, 2, -1], [0, -1, -1, 2]])


def test_laplacian_of_a_path_and_a_ring():
    line = np.zeros((1, 5, 1), bool)
    line[0, 1:4, 0] = True  # three voxels in a row, along the middle axis
    np.testing.assert_array_equal(laplacian(line).toarray(), [[1, -1, 0], [-1, 2, -1], [0, -1, 1]])
    ring = np.ones((3, 3, 1), bool)
    ring[1, 1, 0] = False  # 8 voxels around a hole: every voxel has exactly two neighbours
    lap = laplacian(ring)
    np.testing.assert_array_equal(lap.diagonal(), np.full(8, 2.0))
    assert lap.nnz == 8 + 16


def test_laplacian_invariants(brain_like):
    lap = laplacian(brain_like)
    assert lap.shape == (brain_like.sum(),) * 2
    assert abs(lap - lap.T).max() == 0
    np.testing.assert_allclose(lap @ np.ones(lap.shape[0]), 0.0)  # the constant is in the kernel
    assert set(np.unique(lap.data)) <= {-1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0}


def test_block_mask_by_hand():
    mask = np.zeros((4, 2, 3), bool)
    mask[0:2, :, 0] = True  # 4 voxels (axis 2, of 3 voxels, is zero-padded to 4)
    mask[2, 0, 2] = True  # a quarter of a block
    coarse = block_mask(mask, (2, 2, 2))
    assert coarse.shape == (2, 1, 2)
    # block (0, 0, 0) holds 4 of 8 voxels (half: brain); block (1, 0, 1) holds 1 of 8 (padded) voxels
    np.testing.assert_array_equal(coarse, [[[True, False]], [[False, False]]])


def test_interpolation_rule_hits_coarse_centres():
    # with factor 2, fine voxels 2I and 2I+1 straddle coarse centre I at fine index 2I + 0.5
    coarse = np.arange(4.0).reshape(1, 4, 1, 1) * np.ones((1, 4, 1, 1))
    fine = np.stack([np.arange(8), np.zeros(8), np.zeros(8)], axis=1)
    values = coarse_to_fine(coarse, fine, (2, 1, 1))[:, 0]
    np.testing.assert_allclose(values, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_largest_component_keeps_the_bigger_of_two_and_ignores_diagonal_contact():
    mask = np.zeros((5, 5, 1), bool)
    mask[0:2, 0:2, 0] = True  # 4 voxels
    mask[2:4, 2:5, 0] = True  # 6 voxels; voxel (2, 2) touches the square's (1, 1) only at a corner
    expected = np.isin(np.arange(25).reshape(5, 5, 1), [12, 13, 14, 17, 18, 19])
    np.testing.assert_array_equal(largest_component(mask), expected)
    single = np.zeros((3, 4, 2), bool)
    single[1, 1:3, :] = True
    assert largest_component(single) is single


def test_dense_solve_of_a_path_gives_its_cosines_orthogonal_to_the_constant():
    # a path of n voxels along the last axis: eigenvalues 2 - 2 cos(pi m / n), eigenvectors cos(pi m (i + 1/2) / n)
    n = 7
    mask = np.zeros((1, 2, n), bool)
    mask[0, 1, :] = True
    images = eigenvector_images(mask, np.ones(3), np.random.default_rng(0))
    assert images.shape == (4, 1, 2, n) and images.dtype == np.float64
    for m in range(1, 5):
        exact = np.cos(np.pi * m * (np.arange(n) + 0.5) / n)
        exact /= np.linalg.norm(exact)
        assert abs(images[m - 1, 0, 1] @ exact) == pytest.approx(1.0, abs=1e-9)
    # the row outside the path takes the value of the voxel beside it
    np.testing.assert_array_equal(images[:, 0, 0], images[:, 0, 1])


def test_iterative_solve_spans_the_dense_eigenvectors_on_a_graph_above_the_dense_limit(brain_like):
    mask = brain_like[::2, ::2, ::2]  # about 1,400 voxels: LOBPCG, not the dense solve
    assert mask.sum() > 1_000
    images = eigenvector_images(mask, np.ones(3), np.random.default_rng(3), bounded_to=mask)
    vectors = images[:3, mask].T
    dense = np.linalg.eigh(laplacian(mask).toarray())[1][:, 1:4]
    # eigenvalues of this ellipsoid are well separated: each solved vector lies in the dense one's direction
    cosines = np.abs(np.sum(vectors / np.linalg.norm(vectors, axis=0) * dense, axis=0))
    assert cosines.min() > 0.99
    np.testing.assert_allclose(vectors.sum(axis=0), 0.0, atol=1e-8)  # orthogonal to the constant


def test_too_small_a_component_is_refused():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, :] = True
    with pytest.raises(ValueError, match="at least 4"):
        eigenvector_images(mask, np.ones(3), np.random.default_rng(0))
