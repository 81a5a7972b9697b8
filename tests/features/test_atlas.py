"""Probabilistic atlas: sums to 1, floor, hand-checked frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.atlas import build_probabilistic_atlas


def test_frequencies_by_hand_and_floor():
    a = np.zeros((2, 3, 4), np.uint8)
    b = a.copy()
    a[0, 0, 0] = 1
    b[0, 0, 0] = 2
    a[1, 2, 3] = b[1, 2, 3] = 1
    atlas = build_probabilistic_atlas([a, b], 3, sigma_mm=0, floor=0.01)
    # voxel (0,0,0): frequencies (0, .5, .5) -> (0.01, 0.51, 0.51) / 1.03
    np.testing.assert_allclose(atlas[:, 0, 0, 0], np.array([0.01, 0.51, 0.51]) / 1.03, rtol=1e-6)
    np.testing.assert_allclose(atlas[:, 1, 2, 3], np.array([0.01, 1.01, 0.01]) / 1.03, rtol=1e-6)
    assert atlas.min() >= 0.01 / 1.03 - 1e-7  # no class impossible


def test_sums_to_one_with_smoothing_and_anisotropic_spacing(label_volume):
    from brainseg.labels import LabelTable

    table = LabelTable((0, 4, 11, 23, 30), ("bg", "a", "b", "c", "d"))
    classes = table.to_classes(label_volume)
    rolled = np.roll(classes, 3, axis=2)
    atlas = build_probabilistic_atlas([classes, rolled], 5, spacing=(1.0, 1.0, 2.0), sigma_mm=1.5)
    assert atlas.shape == (5, 10, 20, 30) and atlas.dtype == np.float32
    np.testing.assert_allclose(atlas.sum(axis=0), 1.0, atol=1e-5)
    assert (atlas > 0).all()


def test_smoothing_is_in_mm():
    """Neighbour / centre ratio of a smoothed point is exp(-d**2 / (2 sigma**2)) with d in mm."""
    m = np.zeros((9, 9, 9), np.uint8)
    m[4, 4, 4] = 1
    atlas = build_probabilistic_atlas([m], 2, spacing=(1.0, 1.0, 2.0), sigma_mm=1.0, floor=0)[1]
    centre = atlas[4, 4, 4]
    assert atlas[4, 5, 4] / centre == pytest.approx(np.exp(-0.5), rel=0.01)  # 1 mm away
    assert atlas[4, 4, 5] / centre == pytest.approx(np.exp(-2.0), rel=0.01)  # 2 mm away


@pytest.mark.parametrize(
    "maps, match",
    [
        ([], "no label maps"),
        ([np.zeros((2, 2, 2), int), np.zeros((3, 2, 2), int)], "shape"),
        ([np.full((2, 2, 2), 5)], "class indices"),
    ],
)
def test_errors(maps, match):
    with pytest.raises(ValueError, match=match):
        build_probabilistic_atlas(maps, 3)
