"""Augmentation of the largest patch (Ganaye et al. 2018, section 3.3.2)."""

from __future__ import annotations

import numpy as np

from brainseg.sampling.augmentation import augment_largest_patch, resample_patches
from brainseg.sampling.patches import build_stack, extract_patches


def _setup(rng):
    image = rng.standard_normal((10, 20, 30)).astype(np.float32)
    stack = build_stack(image, "coronal", (1, 2, 3), background=-1.0)
    indices = np.array([[3, 4, 5], [0, 0, 0], [19, 9, 29], [10, 5, 15]])  # (S, A, B) of the coronal plane
    return image, stack, indices


def test_identity_equals_plain_patches(rng):
    _, stack, indices = _setup(rng)
    plain = extract_patches(stack, indices)
    for j in range(3):
        same = resample_patches(stack, indices, j, np.ones(4), np.zeros(4))
        np.testing.assert_allclose(same, plain[:, j], atol=1e-5)


def test_rotation_by_90_degrees_rotates_the_patch(rng):
    _, stack, indices = _setup(rng)
    plain = extract_patches(stack, indices)[:, 2]
    rotated = resample_patches(stack, indices, 2, np.ones(4), np.full(4, 90.0))
    # Sample (k, l) now reads offset R(90) (k, l) = (-l, k): the patch rotated by 90 degrees.
    np.testing.assert_allclose(rotated, np.rot90(plain, k=-1, axes=(1, 2)), atol=1e-4)


def test_scale_two_reads_every_other_sample(rng):
    _, stack, indices = _setup(rng)
    # Scale 1 patch zoomed out by 2: sample (k, l) is the image at 2 (k - 12, l - 12) from the centre,
    # i.e. the scale-1 samples of a 49 x 49 window, every other one.
    zoomed = resample_patches(stack, indices[:1], 0, np.array([2.0]), np.array([0.0]))
    i, a, b = indices[0]
    padded = stack.stacks[0][i]
    m = stack.margin
    rows = a + m + 2 * (np.arange(25) - 12)
    cols = b + m + 2 * (np.arange(25) - 12)
    np.testing.assert_allclose(zoomed[0], padded[np.ix_(rows, cols)], atol=1e-5)


def test_augment_changes_only_the_largest_scale(rng):
    _, stack, indices = _setup(rng)
    patches = extract_patches(stack, indices)
    before = patches.copy()
    augment_largest_patch(stack, indices, patches, np.random.default_rng(1), (0.9, 1.1), 10.0)
    np.testing.assert_array_equal(patches[:, :2], before[:, :2])
    assert np.abs(patches[:, 2] - before[:, 2]).max() > 1e-3
    # Same generator state -> same augmentation (training is reproducible).
    again = extract_patches(stack, indices)
    augment_largest_patch(stack, indices, again, np.random.default_rng(1), (0.9, 1.1), 10.0)
    np.testing.assert_array_equal(again, patches)
