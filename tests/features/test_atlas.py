"""Probabilistic atlas: sums to 1, floor, hand-checked frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.atlas import ProbabilisticAtlas


def _dense(atlas: ProbabilisticAtlas) -> np.ndarray:
    """Every voxel's probabilities as one (C, D, H, W) array."""
    voxels = np.argwhere(np.ones(atlas.shape, bool))
    return atlas.lookup(voxels).T.reshape((atlas.num_classes,) + atlas.shape)


def test_frequencies_by_hand_and_floor():
    a = np.zeros((2, 3, 4), np.uint8)
    b = a.copy()
    a[0, 0, 0] = 1
    b[0, 0, 0] = 2
    a[1, 2, 3] = b[1, 2, 3] = 1
    atlas = _dense(ProbabilisticAtlas.build([a, b], 3, sigma_mm=0, floor=0.01))
    # voxel (0,0,0): frequencies (0, .5, .5) -> (0.01, 0.51, 0.51) / 1.03 (uint8 storage: 0.5 is 128/255)
    np.testing.assert_allclose(atlas[:, 0, 0, 0], np.array([0.01, 0.51, 0.51]) / 1.03, atol=1 / 255)
    np.testing.assert_allclose(atlas[:, 1, 2, 3], np.array([0.01, 1.01, 0.01]) / 1.03, rtol=1e-6)
    assert atlas.min() >= 0.01 / 1.03 - 1e-3  # no class impossible


def test_sums_to_one_with_smoothing_and_anisotropic_spacing(label_volume):
    from brainseg.labels import LabelTable

    table = LabelTable((0, 4, 11, 23, 30), ("bg", "a", "b", "c", "d"))
    classes = table.to_classes(label_volume)
    rolled = np.roll(classes, 3, axis=2)
    atlas = _dense(ProbabilisticAtlas.build([classes, rolled], 5, spacing=(1.0, 1.0, 2.0), sigma_mm=1.5))
    assert atlas.shape == (5, 10, 20, 30) and atlas.dtype == np.float32
    np.testing.assert_allclose(atlas.sum(axis=0), 1.0, atol=1e-5)
    assert (atlas > 0).all()


def test_smoothing_is_in_mm():
    """Neighbour / centre ratio of a smoothed point is exp(-d**2 / (2 sigma**2)) with d in mm."""
    m = np.zeros((9, 9, 9), np.uint8)
    m[4, 4, 4] = 1
    atlas = ProbabilisticAtlas.build([m], 2, spacing=(1.0, 1.0, 2.0), sigma_mm=1.0, floor=0)
    q = atlas.quantised(np.array([[4, 4, 4], [4, 5, 4], [4, 4, 5]]))[:, 1].astype(float)
    assert q[0] > 25  # enough uint8 steps for the ratios below (within 2 steps)
    assert q[1] / q[0] == pytest.approx(np.exp(-0.5), abs=2 / q[0])  # 1 mm away
    assert q[2] / q[0] == pytest.approx(np.exp(-2.0), abs=2 / q[0])  # 2 mm away


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
        ProbabilisticAtlas.build(maps, 3)


# --- the compact atlas stored in model folders ---------------------------------------------------


def _maps(rng, shape=(9, 12, 7), classes=5, n=3):
    maps = []
    for _ in range(n):
        m = np.zeros(shape, np.int64)
        m[2:7, 3:9, 1:6] = rng.integers(1, classes, (5, 6, 5))
        maps.append(m)
    return maps


def test_compact_atlas_matches_a_dense_computation(rng):
    """Frequencies, Gaussian smoothing (zero outside the grid), floor and renormalisation, computed densely here."""
    from scipy import ndimage

    maps = _maps(rng)
    frequencies = np.stack([np.mean([m == c for m in maps], axis=0) for c in range(5)]).astype(np.float32)
    smoothed = np.stack([ndimage.gaussian_filter(f, 1.0, mode="constant") for f in frequencies]) + 1e-3
    dense = smoothed / smoothed.sum(axis=0)
    compact = ProbabilisticAtlas.build(maps, 5, sigma_mm=1.0, floor=1e-3)
    looked_up = _dense(compact)
    np.testing.assert_allclose(looked_up.sum(axis=0), 1.0, atol=1e-6)  # sums to 1 per voxel
    assert looked_up.min() > 0  # the floor keeps every class possible
    # Equal up to the uint8 quantisation: 1/510 per class, plus up to 5/510 moved by renormalisation.
    np.testing.assert_allclose(looked_up, dense, atol=6 / 510)


def test_compact_atlas_hand_values():
    # Two one-voxel subjects labelled 1 and 2, no smoothing, floor 0: [0, 0.5, 0.5].
    atlas = ProbabilisticAtlas.build([np.array([[[1]]]), np.array([[[2]]])], 3, sigma_mm=0, floor=0)
    np.testing.assert_allclose(atlas.lookup(np.array([[0, 0, 0]])), [[0.0, 0.5, 0.5]], atol=1 / 255)
    assert atlas.boxes[0].tolist() == [0, 0, 0, 0, 0, 0]  # class 0 absent: empty box


def test_compact_atlas_outside_grid_is_background(rng):
    atlas = ProbabilisticAtlas.build(_maps(rng), 5)
    probs = atlas.lookup(np.array([[-1, 0, 0], [0, 99, 0]]))
    assert (probs.argmax(axis=1) == 0).all() and probs[:, 0].min() > 0.99


def test_compact_atlas_round_trip(rng, tmp_path):
    atlas = ProbabilisticAtlas.build(_maps(rng), 5, sigma_mm=0.5, floor=1e-4)
    atlas.save(tmp_path / "atlas.npz")
    loaded = ProbabilisticAtlas.load(tmp_path / "atlas.npz")
    voxels = np.argwhere(np.ones(atlas.shape, bool))
    np.testing.assert_array_equal(loaded.lookup(voxels), atlas.lookup(voxels))
    assert loaded.floor == atlas.floor and loaded.shape == atlas.shape
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a brainseg atlas"):
        ProbabilisticAtlas.load(tmp_path / "other.npz")


def test_compact_atlas_bulk_lookup_equals_small_lookups(rng):
    # More than 4096 voxels take the box-walking path; duplicates and out-of-grid voxels included.
    atlas = ProbabilisticAtlas.build(_maps(rng, shape=(20, 24, 16)), 5, sigma_mm=1.0)
    voxels = np.concatenate([np.argwhere(np.ones(atlas.shape, bool)), [[3, 4, 5], [-1, 2, 2], [3, 4, 5]]])
    bulk = atlas.quantised(voxels)
    small = np.concatenate([atlas.quantised(voxels[i : i + 1000]) for i in range(0, len(voxels), 1000)])
    assert len(voxels) > 4096
    np.testing.assert_array_equal(bulk, small)
    assert not bulk[-2].any() and (atlas.lookup(voxels[-2:-1])[0, 0] > 0.99)
