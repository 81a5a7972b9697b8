"""Tests of brainseg.metrics.overlap with hand-checkable values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainseg.metrics.overlap import dice, dice_per_class, volumetric_similarity


def _masks_4_6_4() -> tuple[np.ndarray, np.ndarray]:
    # |P| = 4, |R| = 6, |P & R| = 4 (P inside R), on a non-cubic grid.
    p = np.zeros((2, 3, 4), bool)
    r = np.zeros((2, 3, 4), bool)
    p[0, 0, :] = True
    r[0, 0, :] = True
    r[1, 2, 1:3] = True
    return p, r


def test_dice_hand_value():
    p, r = _masks_4_6_4()
    assert (p.sum(), r.sum(), (p & r).sum()) == (4, 6, 4)
    assert dice(p, r) == pytest.approx(0.8)
    assert dice(r, p) == pytest.approx(0.8)


def test_dice_properties(rng):
    x = rng.random((10, 20, 30)) < 0.3
    y = rng.random((10, 20, 30)) < 0.3
    assert dice(x, x) == 1.0
    assert dice(x, ~x) == 0.0
    assert dice(x, y) == pytest.approx(dice(y, x))
    assert 0.0 < dice(x, y) < 1.0
    assert math.isnan(dice(np.zeros(5, bool), np.zeros(5, bool)))
    assert dice(np.zeros(5, bool), np.ones(5, bool)) == 0.0


def test_dice_accepts_integer_masks():
    assert dice(np.array([0, 2, 2, 0]), np.array([0, 1, 0, 0])) == pytest.approx(2 / 3)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        volumetric_similarity(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros(3, int), np.zeros(4, int), 2)


def test_volumetric_similarity_hand_values():
    p, r = _masks_4_6_4()
    assert volumetric_similarity(p, r) == pytest.approx(1 - 2 / 10)
    a = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)  # |A| = 2
    b = np.array([0, 0, 1, 1, 1, 1, 1, 1], bool)  # |B| = 6, disjoint
    assert volumetric_similarity(a, b) == pytest.approx(0.5)  # 1 - 4 / 8: no overlap needed
    assert volumetric_similarity(a, a) == 1.0
    assert volumetric_similarity(a, np.zeros(8, bool)) == 0.0
    assert math.isnan(volumetric_similarity(np.zeros(8, bool), np.zeros(8, bool)))


def test_dice_per_class_hand_values():
    pred = np.array([0, 1, 1, 1, 1, 2, 0, 0, 0, 0])
    ref = np.array([0, 1, 1, 1, 1, 1, 1, 0, 0, 2])
    out = dice_per_class(pred, ref, num_classes=4)
    assert out.dtype == np.float64 and out.shape == (4,)
    assert out[0] == pytest.approx(2 * 3 / (5 + 3))  # background: pred 5, ref 3, both 3
    assert out[1] == pytest.approx(0.8)  # |P| = 4, |R| = 6, |P & R| = 4
    assert out[2] == 0.0  # in both maps, no overlap
    assert math.isnan(out[3])  # absent from both


def test_dice_per_class_matches_dice(rng):
    num_classes = 6
    pred = rng.integers(0, num_classes - 1, size=(10, 20, 30))  # class 5 never drawn
    ref = rng.integers(0, num_classes - 1, size=(10, 20, 30))
    ref[ref == 4] = 3  # class 4 only in the prediction
    out = dice_per_class(pred, ref, num_classes)
    for c in range(num_classes - 1):
        assert out[c] == pytest.approx(dice(pred == c, ref == c))
    assert out[4] == 0.0
    assert math.isnan(out[5])
