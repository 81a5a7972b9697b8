"""MixNet's slice augmentation (Chen and Merhof 2018, section 3.2): the left-right permutation from a label
table's names, each transform on hand-checkable slices, one transform per crop, and the sampler using them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from brainseg.config import MixNetConfig, TrainingConfig
from brainseg.errors import InputError
from brainseg.families.chen2018 import CHEN2018, MixNetInputs
from brainseg.labels import LabelTable
from brainseg.sampling import slice_augmentation as sa
from brainseg.sampling import slices
from brainseg.sampling.slice_augmentation import AUGMENTATIONS, augment_crop, choose_transform, left_right_permutation
from brainseg.sampling.slices import SliceSampler

REPO = Path(__file__).resolve().parents[2]
BACKGROUND = -5.0


def _force(monkeypatch, kind: str) -> None:
    monkeypatch.setattr(sa, "choose_transform", lambda rng, can_flip: kind)


# -- the left-right permutation ------------------------------------------------------------------


def test_left_right_permutation_of_the_miccai_table():
    table = LabelTable.miccai2012()
    perm = left_right_permutation(table)
    index = {name: c for c, name in enumerate(table.names)}
    assert perm.dtype == np.int64 and perm.shape == (135,)
    assert perm[index["Left Hippocampus"]] == index["Right Hippocampus"]
    assert perm[index["Right Hippocampus"]] == index["Left Hippocampus"]
    assert perm[index["Right ACgG anterior cingulate gyrus"]] == index["Left ACgG anterior cingulate gyrus"]
    np.testing.assert_array_equal(perm[perm], np.arange(135))  # an involution
    unpaired = [table.names[c] for c in np.flatnonzero(perm == np.arange(135))]
    assert unpaired == [
        "Background",
        "3rd Ventricle",
        "4th Ventricle",
        "Brain Stem",
        "CSF",
        "Optic Chiasm",
        "Cerebellar Vermal Lobules I-V",
        "Cerebellar Vermal Lobules VI-VII",
        "Cerebellar Vermal Lobules VIII-X",
    ]
    for c in range(135):  # every swap keeps the structure, changes the side
        a, b = table.names[c], table.names[perm[c]]
        assert a.replace("Left", "Right") == b or a.replace("Right", "Left") == b or a == b


def test_left_right_permutation_of_the_deepnat25_table():
    perm = left_right_permutation(LabelTable.from_tsv(REPO / "configs" / "deepnat25_labels.tsv"))
    # Left-* are classes 1-9 and 13-14, their Right-* counterparts 15-25; 3rd/4th ventricles and brain stem 10-12
    expected = [0, 15, 16, 17, 18, 19, 20, 21, 22, 23, 10, 11, 12, 24, 25]
    expected += [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14]
    assert perm.tolist() == expected


def test_left_right_permutation_reads_the_usual_spellings_and_refuses_nothing():
    names = [
        "Background",
        "Hippocampus_L",  # AAL
        "Hippocampus_R",
        "ctx-lh-insula",  # FreeSurfer
        "ctx-rh-insula",
        "left putamen",  # case differs from its pair
        "Right-Putamen",
        "Left-Amygdala",  # no counterpart
        "Left-Caudate",  # ambiguous: two right caudates
        "Right-Caudate",
        "Right Caudate",
        "Leftover",  # 'Left' inside a word is no side
        "Rightover",
        "Left-Right-Commissure",  # two sides
    ]
    perm = left_right_permutation(names)
    assert perm.tolist() == [0, 2, 1, 4, 3, 6, 5, 7, 8, 9, 10, 11, 12, 13]
    assert left_right_permutation([]).tolist() == []


# -- the transforms on one slice -----------------------------------------------------------------


def test_flip_mirrors_the_crop_and_swaps_left_and_right_classes_by_hand(monkeypatch):
    _force(monkeypatch, "flip")
    image = np.arange(1, 13, dtype=np.float32).reshape(3, 4)  # x (left -> right) along axis 0
    targets = np.array([[0, 1, 2, -1], [1, 1, 2, 2], [0, 2, 1, 0]], np.int16)
    perm = left_right_permutation(["Background", "Left-X", "Right-X"])  # [0, 2, 1]
    crop, crop_targets, kind = augment_crop(
        image, targets, (0, 0), 4, BACKGROUND, np.random.default_rng(0), left_right_axis=0, permutation=perm
    )
    assert kind == "flip"
    # the 4 x 4 window's row 3 lies beyond the slice; mirrored, it comes first
    np.testing.assert_array_equal(crop, [[-5, -5, -5, -5], [9, 10, 11, 12], [5, 6, 7, 8], [1, 2, 3, 4]])
    np.testing.assert_array_equal(crop_targets, [[-1, -1, -1, -1], [0, 1, 2, 0], [2, 2, 1, 1], [0, 2, 1, -1]])
    assert crop.dtype == np.float32 and crop_targets.dtype == np.int16


def _blocky_slice(seed=0, shape=(40, 44), block=5):
    """Classes constant on ``block``-pixel squares, image = 10 x class (so the target is a function of the image)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=(-(-shape[0] // block), -(-shape[1] // block)))
    classes = np.kron(coarse, np.ones((block, block), np.int64))[: shape[0], : shape[1]].astype(np.int16)
    return (10.0 * classes).astype(np.float32), classes


def _plain(image, targets, low, size):
    return slices.box(image, low, (size, size), np.float32(BACKGROUND)), slices.box(targets, low, (size, size), -1)


@pytest.mark.parametrize("kind", ["none", "elastic", "scale", "rotate", "translate", "flip"])
def test_every_transform_keeps_image_and_targets_aligned(monkeypatch, kind):
    """Target = image / 10 wherever interpolation does not mix classes (pixels whose 3 x 3 target neighbourhood
    is one class), and beyond the slice target -1 with the background intensity."""
    _force(monkeypatch, kind)
    image, targets = _blocky_slice()
    perm = np.arange(4)  # a flip mirrors positions; classes 0-3 have no side here
    rng = np.random.default_rng(1)
    checked = 0
    for low in [(8, 10), (-6, 20), (25, -3)]:  # inside, and partly beyond the slice on each axis
        for _ in range(6):
            crop, crop_targets, got = augment_crop(
                image, targets, low, 24, BACKGROUND, rng, left_right_axis=0, permutation=perm
            )
            assert got == kind
            padded = np.pad(crop_targets, 1, constant_values=-2)
            windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
            uniform = (windows == crop_targets[:, :, None, None]).all(axis=(2, 3))
            inside = uniform & (crop_targets >= 0)
            outside = uniform & (crop_targets == -1)
            np.testing.assert_allclose(crop[inside], 10.0 * crop_targets[inside], atol=1e-4)
            np.testing.assert_allclose(crop[outside], BACKGROUND, atol=1e-4)
            checked += int(inside.sum())
            if low != (8, 10):
                assert (crop_targets == -1).any()
    assert checked > 0.2 * 18 * 24 * 24  # the check is not vacuous


@pytest.mark.parametrize("angle, k", [(90, 1), (180, 2), (270, 3)])
def test_rotation_by_multiples_of_90_degrees_is_rot90(monkeypatch, angle, k):
    _force(monkeypatch, "rotate")
    monkeypatch.setattr(sa, "ROTATIONS_DEG", (angle,))
    image = np.random.default_rng(2).standard_normal((30, 31)).astype(np.float32)
    targets = np.random.default_rng(3).integers(-1, 5, (30, 31)).astype(np.int16)
    for low, size in [((3, 4), 16), ((-2, 20), 9)]:  # even and odd sides, partly beyond the slice
        crop, crop_targets, _ = augment_crop(image, targets, low, size, BACKGROUND, np.random.default_rng(0))
        plain, plain_targets = _plain(image, targets, low, size)
        np.testing.assert_allclose(crop, np.rot90(plain, k), atol=1e-5)
        np.testing.assert_array_equal(crop_targets, np.rot90(plain_targets, k))


def test_no_transform_is_the_plain_crop_and_scale_and_translation_by_hand(monkeypatch):
    image, targets = _blocky_slice(seed=4)
    image = image + np.arange(image.size, dtype=np.float32).reshape(image.shape) / 1000  # distinct values
    _force(monkeypatch, "none")
    crop, crop_targets, _ = augment_crop(image, targets, (5, -3), 12, BACKGROUND, np.random.default_rng(0))
    plain, plain_targets = _plain(image, targets, (5, -3), 12)
    np.testing.assert_array_equal(crop, plain)
    np.testing.assert_array_equal(crop_targets, plain_targets)

    # scale 1.1 about the centre 5.5 of a 12-pixel crop: pixel p reads 5.5 + (p - 5.5) / 1.1
    _force(monkeypatch, "scale")
    monkeypatch.setattr(sa, "SCALES", (1.1,))
    crop, _, _ = augment_crop(image, targets, (10, 12), 12, BACKGROUND, np.random.default_rng(0))
    source = 5.5 + (np.arange(12) - 5.5) / 1.1
    rows, cols = 10 + source, 12 + source
    i, j = 0, 11  # reads (10.5, 22.5): the mean of the four pixels around it
    expected = image[10:12, 22:24].mean()
    assert rows[i] == pytest.approx(10.5) and cols[j] == pytest.approx(22.5)
    assert crop[i, j] == pytest.approx(expected, abs=1e-4)

    # translation: whole pixels, at most round(0.15 x side) per axis; the content moves by the shift
    shifts = np.array([sa._affine("translate", 128, np.random.default_rng(s))[1] for s in range(300)])
    assert np.abs(shifts).max() == 19 and (shifts == np.round(shifts)).all()
    _force(monkeypatch, "translate")
    crop, crop_targets, _ = augment_crop(image, targets, (10, 12), 20, BACKGROUND, np.random.default_rng(7))
    shift = -sa._affine("translate", 20, np.random.default_rng(7))[1].astype(int)
    plain, plain_targets = _plain(image, targets, (10 - shift[0], 12 - shift[1]), 20)
    np.testing.assert_allclose(crop, plain, atol=1e-5)
    np.testing.assert_array_equal(crop_targets, plain_targets)


# -- one transform per crop ----------------------------------------------------------------------


def test_choices_are_uniform_and_flip_only_where_allowed():
    rng = np.random.default_rng(0)
    with_flip = Counter(choose_transform(rng, True) for _ in range(3000))
    without = Counter(choose_transform(rng, False) for _ in range(2500))
    assert set(with_flip) == set(AUGMENTATIONS) and "flip" not in without and len(without) == 5
    assert all(abs(n / 3000 - 1 / 6) < 0.03 for n in with_flip.values())
    assert all(abs(n / 2500 - 1 / 5) < 0.03 for n in without.values())


def test_never_two_transforms_at_once(monkeypatch):
    calls: list[str] = []
    affine, elastic, flip = sa._affine, sa._elastic, sa._flip
    monkeypatch.setattr(sa, "_affine", lambda kind, *a: calls.append(kind) or affine(kind, *a))
    monkeypatch.setattr(sa, "_elastic", lambda *a: calls.append("elastic") or elastic(*a))
    monkeypatch.setattr(sa, "_flip", lambda *a: calls.append("flip") or flip(*a))
    image, targets = _blocky_slice()
    rng = np.random.default_rng(5)
    seen = Counter()
    for _ in range(120):
        calls.clear()
        *_, kind = augment_crop(
            image, targets, (8, 8), 16, BACKGROUND, rng, left_right_axis=0, permutation=np.arange(4)
        )
        seen[kind] += 1
        assert calls == ([] if kind == "none" else [kind])  # one transform, or none
    assert set(seen) == set(AUGMENTATIONS)


# -- the sampler ---------------------------------------------------------------------------------


def _case():
    """A 14 x 12 x 10 volume: a box of brain, left half (low x) class 1, right half class 2."""
    shape = (14, 12, 10)
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:12, 2:10, 2:8] = True
    classes = np.where(mask, np.where(np.arange(14)[:, None, None] < 7, 1, 2), 0).astype(np.uint8)
    return image, mask, classes


def test_the_sampler_applies_one_transform_per_crop_and_flips_with_swapped_classes(monkeypatch):
    image, mask, classes = _case()
    inputs = MixNetInputs.of(image, mask, BACKGROUND)
    table = LabelTable((0, 4, 5), ("Background", "Left-Thing", "Right-Thing"))
    sampler = CHEN2018.case_sampler_with_labels(_cfg(FLIPPABLE), inputs, classes, mask, table)
    assert sampler.left_right.tolist() == [0, 2, 1]
    assert CHEN2018.case_sampler(_cfg(FLIPPABLE), inputs, classes, mask).left_right is None

    plain, plain_targets = sampler.draw(8, np.random.default_rng(3), TrainingConfig())
    _force(monkeypatch, "flip")
    flipped, flipped_targets = sampler.draw(8, np.random.default_rng(3), TrainingConfig(augment=True))
    np.testing.assert_array_equal(flipped["plane"], plain["plane"])
    for i in range(8):
        np.testing.assert_array_equal(flipped["slices"][i, 0], np.flip(plain["slices"][i, 0], 0))
        mirrored = np.flip(plain_targets[i], 0)
        np.testing.assert_array_equal(flipped_targets[i], np.where(mirrored > 0, 3 - mirrored, mirrored))
    assert (flipped_targets == 1).any() and (flipped_targets == 2).any()

    # every crop goes through augment_crop once, which draws its transform itself (sagittal crops: no flip)
    monkeypatch.undo()
    sampler = CHEN2018.case_sampler_with_labels(_cfg(), inputs, classes, mask, table)
    kinds = []
    real = slices.augment_crop
    monkeypatch.setattr(slices, "augment_crop", lambda *a, **k: kinds.append(k["left_right_axis"]) or real(*a, **k))
    batch, targets = sampler.draw(30, np.random.default_rng(4), TrainingConfig(augment=True))
    assert len(kinds) == 30 and batch["slices"].shape == (30, 1, 16, 16) and targets.dtype == np.int16
    planes = np.array(sampler.planes)[batch["plane"]]
    assert [k for k, p in zip(kinds, planes)] == [None if p == "sagittal" else 0 for p in planes]
    again, _ = sampler.draw(30, np.random.default_rng(4), TrainingConfig(augment=True))
    np.testing.assert_array_equal(again["slices"], batch["slices"])  # reproducible from the seed


def test_the_sampler_refuses_basenets_augmentation_settings():
    image, mask, classes = _case()
    sampler = SliceSampler(MixNetInputs.of(image, mask, BACKGROUND), classes, mask, ("axial",), 16)
    sampler.draw(2, np.random.default_rng(0), TrainingConfig(augment=True))
    for key, value in (("augment_scale", (0.8, 1.2)), ("augment_rotation_deg", 20.0)):
        with pytest.raises(InputError, match=f"training.{key}"):
            sampler.draw(2, np.random.default_rng(0), TrainingConfig(augment=True, **{key: value}))
        sampler.draw(2, np.random.default_rng(0), TrainingConfig(augment=False, **{key: value}))


FLIPPABLE = ("coronal", "axial")  # the planes with a left-right axis


def _cfg(planes=("sagittal", "coronal", "axial")):
    return MixNetConfig(filters=4, crop=16, planes=planes)


def test_training_cases_get_their_label_tables_left_right_permutation(tiny_manifest):
    from brainseg.io.manifest import read_manifest
    from brainseg.preprocessing.intensity import IntensityNormalization
    from brainseg.training.data import load_training_case

    table = LabelTable((0, 4, 11), ("Background", "Left-Thing", "Right-Thing"))
    case = load_training_case(read_manifest(tiny_manifest)[0], table, _cfg(), IntensityNormalization())
    assert isinstance(case.sampler, SliceSampler) and case.sampler.left_right.tolist() == [0, 2, 1]
