"""The permutohedral lattice against explicit Gaussian sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.postprocessing.permutohedral import GAINS, PermutohedralLattice, lattice_gain


def _grid_features(shape, spacing, sigma_mm, intensity=None, sigma_i=1.0):
    positions = np.argwhere(np.ones(shape, bool)) * np.asarray(spacing, float) / sigma_mm
    if intensity is None:
        return positions
    return np.concatenate([positions, intensity.reshape(-1, 1) / sigma_i], axis=1)


def _explicit(features, values):
    kernel = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
    return kernel @ values


@pytest.mark.parametrize("with_intensity", [False, True])
def test_filter_approximates_explicit_gaussian_sums(with_intensity):
    # non-cubic grid, anisotropic spacing, two intensity levels: the CRF's use
    rng = np.random.default_rng(1)
    shape, spacing = (12, 10, 7), (1.0, 1.2, 2.0)
    intensity = np.where(rng.random(shape) > 0.5, 1.0, 0.0) if with_intensity else None
    features = _grid_features(shape, spacing, 3.0, intensity, 0.5)
    values = rng.uniform(0, 1, (len(features), 3))
    lattice = PermutohedralLattice(features)
    got = lattice.filter(torch.tensor(values, dtype=torch.float32)).numpy()
    want = _explicit(features, values)
    rel = np.abs(got - want) / want
    # measured: median 0.03 (d = 3) and 0.10 (d = 4), max 0.20 and 0.25
    assert np.median(rel) < 0.15 and rel.max() < 0.35
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98


def test_sparse_channels_equal_dense_channels():
    rng = np.random.default_rng(2)
    features = rng.uniform(0, 4, (300, 3))
    lattice = PermutohedralLattice(features)
    dense = rng.uniform(0, 1, (300, 5)).astype(np.float32)
    full = lattice.filter(torch.from_numpy(dense)).numpy()
    # every point lists the same 5 channels in another order
    order = np.stack([rng.permutation(5) for _ in range(300)])
    sparse_values = np.take_along_axis(dense, order, axis=1)
    got = lattice.filter(
        torch.from_numpy(sparse_values), torch.from_numpy(order), num_channels=5, out_channels=torch.from_numpy(order)
    ).numpy()
    np.testing.assert_allclose(got, np.take_along_axis(full, order, axis=1), rtol=1e-5, atol=1e-6)


def test_a_plan_filters_new_values_as_filter_does():
    # the mean field filters new values on the same kept classes at every iteration: the plan's indexing,
    # found once, must give what a fresh filter gives, call after call, with channel chunks of 2
    rng = np.random.default_rng(4)
    lattice = PermutohedralLattice(rng.uniform(0, 4, (200, 4)))
    channels = torch.from_numpy(np.stack([rng.choice(7, 3, replace=False) for _ in range(200)]))
    channels[::5, 2] = 7  # a pruned entry: channel C, outside [0, C), filters to 0
    plan = lattice.plan(channels, num_channels=7, channel_chunk=2)
    for seed in range(3):
        values = torch.from_numpy(np.random.default_rng(seed).uniform(0, 1, (200, 3)).astype(np.float32))
        want = lattice.filter(values, channels, num_channels=7, channel_chunk=2)
        torch.testing.assert_close(plan(values), want, rtol=0, atol=0)
        assert (want[::5, 2] == 0).all() and want[1:5].min() > 0
    other = torch.from_numpy(np.stack([rng.choice(7, 2, replace=False) for _ in range(200)]))
    values = torch.ones(200, 3)
    torch.testing.assert_close(
        lattice.plan(channels, num_channels=7, out_channels=other)(values),
        lattice.filter(values, channels, num_channels=7, out_channels=other),
    )
    with pytest.raises(ValueError, match="expected values of shape"):
        plan(torch.ones(200, 2))
    with pytest.raises(ValueError, match="expected channels of shape"):
        lattice.plan(channels[:10])


def test_a_channel_nobody_holds_filters_to_zero():
    features = np.random.default_rng(3).uniform(0, 3, (50, 2))
    lattice = PermutohedralLattice(features)
    channels = torch.zeros((50, 1), dtype=torch.int64)
    out = lattice.filter(
        torch.ones(50, 1), channels, num_channels=2, out_channels=torch.ones((50, 1), dtype=torch.int64)
    )
    assert (out == 0).all()


def test_far_apart_points_do_not_mix():
    # two clusters 20 standard deviations apart: each point's sum only counts its own cluster
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 0.3, (40, 3)), rng.normal(20, 0.3, (40, 3))
    lattice = PermutohedralLattice(np.concatenate([a, b]))
    values = np.concatenate([np.ones(40), np.zeros(40)])[:, None].astype(np.float32)
    out = lattice.filter(torch.from_numpy(values)).numpy()[:, 0]
    assert (out[40:] == 0).all() and (out[:40] > 5).all()


@pytest.mark.parametrize("dimension", [2, 3, 4])
def test_gain_makes_the_lattice_estimate_the_sum(dimension):
    rng = np.random.default_rng(10 + dimension)
    side = (4000 / 8.0) ** (1 / dimension)
    features = rng.uniform(0, side, (4000, dimension))
    out = PermutohedralLattice(features).filter(torch.ones(4000, 1)).numpy()[:, 0]
    inner = np.all(np.abs(features - side / 2) < side / 4, axis=1)
    # explicit sums over all points, at the points away from the cloud's faces (another cloud than the gain's)
    full = np.exp(-0.5 * ((features[inner][:, None] - features[None]) ** 2).sum(-1)).sum(1)
    assert abs(np.median(out[inner] / full) - 1) < 0.05
    assert lattice_gain(dimension) > 0


@pytest.mark.parametrize("dimension", sorted(GAINS))
def test_stored_gains_are_the_measured_ones(dimension):
    assert lattice_gain.__wrapped__(dimension) == pytest.approx(GAINS[dimension], rel=1e-6)  # float32 sums
    features = np.random.default_rng(0).uniform(0, 5, (50, dimension))
    assert PermutohedralLattice(features)._gain == GAINS[dimension]


@pytest.mark.parametrize("dimension", [1, 2, 3, 4, 5])
def test_blur_neighbours_are_the_lattice_neighbours(dimension):
    # White box: the neighbours found through packed keys equal those found by looking up the keys
    # themselves, for a cloud whose extreme points put neighbour keys at the edges of the packed range.
    rng = np.random.default_rng(dimension)
    features = np.concatenate([rng.uniform(-6, 6, (400, dimension)), np.eye(dimension) * 6, -np.eye(dimension) * 6])
    lattice = PermutohedralLattice(features)
    keys = lattice._unpack(lattice._keys)
    where = {tuple(k): i for i, k in enumerate(keys)}
    assert len(lattice._neighbours) == dimension + 1
    for j, (forward, backward) in enumerate(lattice._neighbours):
        step = -np.ones(dimension, np.int64)
        if j < dimension:
            step[j] = dimension
        for m in range(lattice.vertices):
            for got, t in ((int(forward[m]), tuple(keys[m] + step)), (int(backward[m]), tuple(keys[m] - step))):
                assert got == where.get(t, lattice.vertices)  # absent: the zero row M


def test_blur_is_half_of_each_neighbour_along_every_direction():
    # one direction at a time by hand: v + (v[forward] + v[backward]) / 2, absent neighbours reading 0
    features = np.random.default_rng(7).uniform(0, 3, (60, 3))
    lattice = PermutohedralLattice(features)
    m = lattice.vertices
    grid = torch.cat([torch.rand(m, 2), torch.zeros(1, 2)])
    want = grid.numpy().copy()
    for forward, backward in lattice._neighbours:
        padded = want
        want = padded.copy()
        want[:m] = padded[:m] + 0.5 * (padded[forward.numpy()] + padded[backward.numpy()])
        want[m] = 0
    before = grid.clone()
    np.testing.assert_allclose(lattice._blur(grid).numpy(), want, rtol=1e-6)  # grid: scratch, overwritten
    assert (want[:m] > before[:m].numpy()).any()  # some vertex has a neighbour


def test_bad_features():
    with pytest.raises(ValueError, match="shape"):
        PermutohedralLattice(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        PermutohedralLattice(np.array([[0.0, np.nan]]))
    lattice = PermutohedralLattice(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="values"):
        lattice.filter(torch.ones(3, 1))
