"""Tests of brainseg.sampling.samplers.VoxelSampler."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.errors import InputError
from brainseg.sampling.samplers import VoxelSampler


@pytest.fixture
def classes(mask) -> np.ndarray:
    # Very unequal classes inside the mask: 1 is large, 2 medium, 3 a single voxel; one labelled voxel outside.
    c = np.zeros(mask.shape, np.uint8)
    c[2:8, 3:15, 5:20] = 1
    c[2:4, 3:5, 20:24] = 2
    c[5, 10, 22] = 3
    c[0, 0, 0] = 2  # labelled voxel outside the mask: still drawable
    return c


def test_len_and_region(classes, mask):
    sampler = VoxelSampler(classes, mask)
    assert len(sampler) == mask.sum() + 1
    np.testing.assert_array_equal(sampler.present, [0, 1, 2, 3])


def test_uniform_in_mask(classes, mask, rng):
    sampler = VoxelSampler(classes, mask)
    idx = sampler.sample(5000, rng, "uniform")
    assert idx.shape == (5000, 3) and idx.dtype == np.int32
    region = mask | (classes > 0)
    assert region[tuple(idx.T)].all()
    # Uniform: class frequencies follow the class sizes.
    share = np.mean(classes[tuple(idx.T)] == 1)
    assert share == pytest.approx((classes[region] == 1).mean(), abs=0.03)


def test_balanced_frequencies(classes, mask, rng):
    sampler = VoxelSampler(classes, mask)
    idx = sampler.sample(8000, rng, "balanced")
    drawn = classes[tuple(idx.T)]
    freq = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(freq, 0.25, atol=0.03)
    assert (mask | (classes > 0))[tuple(idx.T)].all()
    # The single class-3 voxel is the only one drawn for class 3.
    assert {tuple(v) for v in idx[drawn == 3]} == {(5, 10, 22)}


def test_mixed_half_each(classes, mask, rng):
    sampler = VoxelSampler(classes, mask)
    assert sampler.sample(7, rng, "mixed").shape == (7, 3)  # odd sizes: 3 uniform + 4 balanced
    idx = sampler.sample(8000, rng, "mixed")
    drawn = classes[tuple(idx.T)]
    region = mask | (classes > 0)
    uniform_share = np.bincount(classes[region], minlength=4) / region.sum()
    # Half uniform, half balanced: class c is drawn with frequency (uniform share + 1/4) / 2. The single
    # class-3 voxel is drawn ~12.5 % of the time (never in uniform, 1/4 of the balanced half).
    freq = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(freq, (uniform_share + 0.25) / 2, atol=0.03)
    assert freq[3] == pytest.approx(0.125, abs=0.02)
    # The first half is the uniform draw, the second the balanced one.
    first, second = np.bincount(drawn[:4000], minlength=4) / 4000, np.bincount(drawn[4000:], minlength=4) / 4000
    np.testing.assert_allclose(first, uniform_share, atol=0.03)
    np.testing.assert_allclose(second, 0.25, atol=0.03)


def test_seeded_draws_repeat(classes, mask):
    sampler = VoxelSampler(classes, mask)
    a = sampler.sample(50, np.random.default_rng(3), "balanced")
    b = sampler.sample(50, np.random.default_rng(3), "balanced")
    np.testing.assert_array_equal(a, b)


def test_errors(classes, mask, rng):
    sampler = VoxelSampler(classes, mask)
    with pytest.raises(
        InputError, match=r"training.sampling must be one of \('uniform', 'balanced', 'mixed'\), got 'x'"
    ):
        sampler.sample(10, rng, "x")  # an InputError: `brainseg train` prints one line, no traceback
    with pytest.raises(InputError, match="training.sampling"):
        sampler.class_frequencies(len(sampler.counts), "stratified")
    with pytest.raises(ValueError, match="shape"):
        VoxelSampler(classes, mask[:, :, :-1])


def test_sample_pool_draws_the_pool_proportions(classes, mask, rng):
    sampler = VoxelSampler(classes, mask)
    # a pool of 10 background, 20 class-1 and 10 class-2 voxels (of 3 present), none of class 3
    drawn = classes[tuple(sampler.sample_pool(8000, rng, np.array([10, 20, 10, 0])).T)]
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / 8000, [0.25, 0.5, 0.25, 0], atol=0.02)
    with pytest.raises(ValueError, match="within the class counts"):
        sampler.sample_pool(5, rng, np.array([0, 0, 0, 2]))  # class 3 has a single voxel
    with pytest.raises(ValueError, match="not all 0"):
        sampler.sample_pool(5, rng, np.zeros(4, int))
    with pytest.raises(ValueError, match="absent from the sampled region"):
        sampler.sample_pool(5, rng, np.array([1, 1, 1, 1, 1]))
