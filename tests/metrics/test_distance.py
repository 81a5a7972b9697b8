"""Tests of brainseg.metrics.distance against hand values and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainseg.metrics.distance import SurfaceDistances, surface_distances


def _two_voxels(shape=(4, 5, 7), a=(1, 2, 1), b=(1, 2, 4)):
    p = np.zeros(shape, bool)
    r = np.zeros(shape, bool)
    p[a] = True
    r[b] = True
    return p, r


def _brute_force(p: np.ndarray, r: np.ndarray, spacing) -> tuple[float, float, float]:
    """Surface voxels (6-connected, outside the array is background) and all pairwise distances.

    Written from the definitions, not from the implementation: HD is the largest of all directed
    nearest-surface distances, HD95 the larger directed 95th percentile, and the mean surface distance
    Ganaye et al.'s d_msd = (mean_x d(x, Y) + mean_y d(y, X)) / 2, each computed by a plain loop.
    """

    def surface(m):
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(3):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    sp, sr = surface(p), surface(r)
    d_pr = [min(math.dist(x, y) for y in sr) for x in sp]
    d_rp = [min(math.dist(y, x) for x in sp) for y in sr]
    return (
        max(max(d_pr), max(d_rp)),
        max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)),
        0.5 * (sum(d_pr) / len(d_pr) + sum(d_rp) / len(d_rp)),
    )


def test_msd_is_the_papers_mean_of_directed_means():
    """One voxel at the centre of a 7^3 cube, checked by hand.

    From the voxel to the cube's surface: 3 mm (to a face centre). From the 218 surface voxels back to the
    voxel: offsets (i, j, k) in {-3..3}^3 with max(|i|, |j|, |k|) = 3, mean length 3.8911 mm. The paper's
    d_msd = (3 + 3.8911) / 2 = 3.4456 mm; pooling both directions would give (3 + 218 * 3.8911) / 219 =
    3.8870 mm.
    """
    cube = np.zeros((9, 10, 11), bool)
    cube[1:8, 1:8, 2:9] = True
    dot = np.zeros_like(cube)
    dot[4, 4, 5] = True
    offsets = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shell = offsets[np.abs(offsets).max(axis=1) == 3]
    assert len(shell) == 218
    back = np.linalg.norm(shell, axis=1).mean()
    assert back == pytest.approx(3.8911, abs=1e-4)
    d = surface_distances(dot, cube)
    assert d.mean == pytest.approx((3.0 + back) / 2) == pytest.approx(3.4456, abs=1e-4)
    assert d.mean != pytest.approx((3.0 + 218 * back) / 219, abs=0.1)
    assert d.hausdorff == pytest.approx(np.sqrt(27))


def test_single_voxels_3_apart():
    p, r = _two_voxels()
    d = surface_distances(p, r)
    assert d == SurfaceDistances(3.0, 3.0, 3.0)


def test_single_voxels_3_apart_anisotropic(spacing):
    p, r = _two_voxels()
    d = surface_distances(p, r, spacing)  # 3 voxels of 2 mm along the last axis
    assert (d.hausdorff, d.hd95, d.mean) == pytest.approx((6.0, 6.0, 6.0))
    p, r = _two_voxels(a=(0, 2, 1), b=(3, 2, 1))  # 3 voxels of 1 mm along the first axis
    assert surface_distances(p, r, spacing).hausdorff == pytest.approx(3.0)


def test_diagonal_distance():
    p, r = _two_voxels(a=(0, 0, 0), b=(1, 2, 2))
    assert surface_distances(p, r, (1.0, 1.0, 2.0)).hausdorff == pytest.approx(math.sqrt(1 + 4 + 16))


def test_symmetric_and_identity(rng):
    p = rng.random((10, 20, 30)) < 0.2
    r = rng.random((10, 20, 30)) < 0.2
    assert surface_distances(p, r, (1, 1, 2)) == surface_distances(r, p, (1, 1, 2))
    assert surface_distances(p, p, (1, 1, 2)) == SurfaceDistances(0.0, 0.0, 0.0)


def test_hd95_at_most_hd(rng):
    p = np.zeros((10, 20, 30), bool)
    r = np.zeros((10, 20, 30), bool)
    p[2:8, 3:15, 5:20] = True
    r[3:9, 5:16, 4:24] = True
    r[0, 0, 29] = True  # an outlier pulls the Hausdorff distance up, not the 95th percentile
    d = surface_distances(p, r, (1, 1, 2))
    assert d.mean <= d.hd95 < d.hausdorff


def test_distances_scale_with_spacing(rng):
    p = rng.random((6, 7, 8)) < 0.3
    r = rng.random((6, 7, 8)) < 0.3
    d1 = surface_distances(p, r, (1.0, 1.0, 2.0))
    d2 = surface_distances(p, r, (2.0, 2.0, 4.0))
    assert (d2.hausdorff, d2.hd95, d2.mean) == pytest.approx((2 * d1.hausdorff, 2 * d1.hd95, 2 * d1.mean))


def test_empty_masks():
    empty = np.zeros((3, 4, 5), bool)
    full = np.ones((3, 4, 5), bool)
    for d in (surface_distances(empty, full), surface_distances(full, empty)):
        assert d == SurfaceDistances(math.inf, math.inf, math.inf)
    d = surface_distances(empty, empty)
    assert math.isnan(d.hausdorff) and math.isnan(d.hd95) and math.isnan(d.mean)


def test_argument_errors():
    with pytest.raises(ValueError, match="shape"):
        surface_distances(np.zeros((2, 3, 4), bool), np.zeros((2, 4, 3), bool))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool), (1.0, 0.0, 1.0))


@pytest.mark.parametrize("seed", range(4))
def test_crop_is_exact(seed):
    # Masks touching the edges of a small array, then the same masks in a big zero-padded volume.
    rng = np.random.default_rng(seed)
    p = rng.random((6, 7, 8)) < 0.4
    r = rng.random((6, 7, 8)) < 0.4
    spacing = (1.0, 1.0, 2.0)
    small = surface_distances(p, r, spacing)
    pad = ((5, 9), (3, 12), (11, 4))
    big = surface_distances(np.pad(p, pad), np.pad(r, pad), spacing)
    assert (big.hausdorff, big.hd95, big.mean) == pytest.approx((small.hausdorff, small.hd95, small.mean), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0), (0.7, 1.3, 2.1)])
def test_matches_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    p = np.zeros((10, 20, 30), bool)
    r = np.zeros((10, 20, 30), bool)
    p[2:8, 4:12, 5:15] = rng.random((6, 8, 10)) < 0.5  # masks away from the edges: the crop is used
    r[1:7, 6:14, 8:18] = rng.random((6, 8, 10)) < 0.5
    d = surface_distances(p, r, spacing)
    assert (d.hausdorff, d.hd95, d.mean) == pytest.approx(_brute_force(p, r, spacing), rel=1e-9, abs=1e-9)
    edge_p, edge_r = rng.random((5, 6, 7)) < 0.3, rng.random((5, 6, 7)) < 0.3  # masks touching the edges
    d = surface_distances(edge_p, edge_r, spacing)
    assert (d.hausdorff, d.hd95, d.mean) == pytest.approx(_brute_force(edge_p, edge_r, spacing), rel=1e-9, abs=1e-9)


def test_doc_example_on_line():
    p, r = _two_voxels(shape=(1, 1, 5), a=(0, 0, 0), b=(0, 0, 3))
    assert surface_distances(p, r).hausdorff == 3.0
