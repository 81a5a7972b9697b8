"""Skull stripping: the auto rule (hand-checkable, with a fake extractor) and deepbet on the shipped demo scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from brainseg.errors import InputError
from brainseg.io.nifti import load_volume
from brainseg.preprocessing.skull_strip import detect_skull_stripped, skull_strip

DEMO = Path(__file__).resolve().parents[2] / "src" / "brainseg" / "data" / "demo" / "1000_SS.nii.gz"


class FakeExtractor:
    """Returns a fixed mask and counts its calls."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask, self.calls = mask, 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.mask.copy()


def _box_image(shape=(20, 30, 25)):
    image = np.zeros(shape, np.float32)
    image[2:12, 3:23, 4:14] = 50.0  # 10 x 20 x 10 = 2000 non-zero voxels
    return image


@pytest.mark.parametrize("outside_voxels, stripped", [(0, True), (200, True), (201, False), (1000, False)])
def test_auto_rule_counts_the_foreground_outside_the_brain_mask(outside_voxels, stripped):
    image = _box_image()
    mask = image > 0
    flat = np.flatnonzero(mask)[:outside_voxels]  # take these voxels out of the 'brain'
    mask.flat[flat] = False
    extractor = FakeExtractor(mask)
    got, foreground, deepbet_mask, reason = detect_skull_stripped(image, 0.001, extractor)
    assert got is stripped and extractor.calls == 1
    assert foreground.sum() == 2000 and deepbet_mask.sum() == 2000 - outside_voxels
    assert f"{100 * outside_voxels / 2000:.1f} % of the 2 ml non-zero volume" in reason


def test_no_zero_background_means_not_stripped_without_running_deepbet():
    image = _box_image() + 1.0  # noise-like background: no voxel is zero
    extractor = FakeExtractor(np.zeros(image.shape, bool))
    stripped, _, deepbet_mask, reason = detect_skull_stripped(image, 0.001, extractor)
    assert not stripped and deepbet_mask is None and extractor.calls == 0 and "0.0 % of voxels are zero" in reason


def test_modes_never_always_auto():
    image = _box_image()
    brain = np.zeros(image.shape, bool)
    brain[4:10, 8:18, 6:12] = True  # deepbet sees a 6 x 10 x 6 brain inside the box: 82 % of the box is "head"
    never = skull_strip(image, 0.001, "never", FakeExtractor(brain))
    assert not never.extracted and never.mask.sum() == 2000 and never.brain_ml == pytest.approx(2.0)
    always = skull_strip(image, 0.001, "always", FakeExtractor(brain))
    assert always.extracted and np.array_equal(always.mask, brain) and always.brain_ml == pytest.approx(0.36)
    auto = skull_strip(image, 0.001, "auto", FakeExtractor(brain))
    assert auto.extracted and np.array_equal(auto.mask, brain) and "82.0 %" in auto.describe()
    with pytest.raises(InputError, match="deepbet found no brain"):
        skull_strip(image, 0.001, "always", FakeExtractor(np.zeros(image.shape, bool)))
    with pytest.raises(ValueError):
        skull_strip(image, 0.001, "sometimes")


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_deepbet_on_the_demo_scan_and_on_the_demo_given_a_synthetic_head():
    """The shipped demo (skull-stripped) is kept as is; wrapped in a bright scalp and noisy air it is re-stripped."""
    volume = load_volume(DEMO)
    voxel_ml = 0.001
    kept = skull_strip(volume.data, voxel_ml, "auto")
    assert not kept.extracted and "input used as skull-stripped" in kept.describe()
    assert kept.mask.sum() * voxel_ml == pytest.approx(kept.brain_ml) and 1200 < kept.brain_ml < 2000

    brain = kept.mask
    padded = np.pad(volume.data, 20)
    brain_p = np.pad(brain, 20)
    distance = ndimage.distance_transform_edt(~brain_p)  # mm outside the brain (1 mm voxels)
    rng = np.random.default_rng(0)
    head = padded.copy()
    head[(distance > 3) & (distance <= 8)] = 1.3 * np.percentile(volume.data[brain], 90)  # scalp and fat: bright
    head[(distance > 8) & (distance <= 12)] = 0.5 * np.percentile(volume.data[brain], 50)  # muscle
    air = distance > 12
    head[air] = np.abs(rng.normal(0, 8, air.sum()))  # scanner noise in the air
    stripped = skull_strip(head.astype(np.float32), voxel_ml, "auto")
    assert stripped.extracted and "brain extracted with deepbet" in stripped.describe()
    assert _dice(stripped.mask, brain_p) > 0.9
    assert not stripped.mask[distance > 8].any()  # none of the 'scalp' beyond 8 mm is called brain
