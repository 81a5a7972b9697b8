"""Tests of brainseg.preprocessing: normalisation, masks, 1 mm resampling, the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainseg.inference.probability_map import ProbabilityMap
from brainseg.io.nifti import Grid, Volume
from brainseg.preprocessing import (
    IntensityNormalization,
    brain_bounding_box,
    brain_mask,
    needs_resampling,
    resample_image,
    resample_label_map,
    zscore_in_mask,
)
from brainseg.preprocessing.pipeline import prepare_image
from brainseg.preprocessing.resampling import isotropic_shape

# --- intensity -----------------------------------------------------------------------------------


def test_zscore_in_mask(volume, mask):
    image = volume.copy()
    image[0, 0, 0] = 0.0  # an empty voxel outside the mask
    out, background = zscore_in_mask(image, mask)
    assert out.dtype == np.float32
    assert out.shape == image.shape
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[mask].std() == pytest.approx(1.0, abs=1e-5)
    mean, std = image[mask].mean(), image[mask].std()
    assert background == pytest.approx(-mean / std, rel=1e-6)
    assert out[0, 0, 0] == pytest.approx(background, rel=1e-6)
    np.testing.assert_allclose(out[~mask], (image[~mask] - mean) / std, rtol=1e-5, atol=1e-5)


def test_zscore_hand_values():
    image = np.array([[[0.0, 1.0, 3.0, 100.0]]])
    mask = np.array([[[False, True, True, False]]])
    out, background = zscore_in_mask(image, mask)  # mean 2, std 1
    np.testing.assert_allclose(out, [[[-2.0, -1.0, 1.0, 98.0]]])
    assert background == pytest.approx(-2.0)


@pytest.mark.parametrize(
    ("image", "mask", "match"),
    [
        (np.ones((2, 2, 2)), np.ones((2, 2, 3), bool), "shape"),
        (np.arange(8.0).reshape(2, 2, 2), np.zeros((2, 2, 2), bool), "empty"),
        (np.arange(8.0).reshape(2, 2, 2), np.arange(8).reshape(2, 2, 2) == 3, "empty"),  # one voxel
        (np.full((2, 2, 2), 5.0), np.ones((2, 2, 2), bool), "constant"),
    ],
)
def test_zscore_errors(image, mask, match):
    with pytest.raises(ValueError, match=match):
        zscore_in_mask(image, mask)


def test_intensity_normalization_save_load(tmp_path, volume, mask):
    norm = IntensityNormalization()
    norm.save(tmp_path / "normalization.json")
    assert json.loads((tmp_path / "normalization.json").read_text()) == {"method": "zscore_in_mask"}
    loaded = IntensityNormalization.load(tmp_path / "normalization.json")
    assert loaded == norm
    np.testing.assert_array_equal(loaded(volume, mask)[0], zscore_in_mask(volume, mask)[0])
    with pytest.raises(ValueError, match="unknown"):
        IntensityNormalization("minmax")(volume, mask)


# --- masking -------------------------------------------------------------------------------------


def test_brain_bounding_box_hand_checked():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 2, 5] = True
    assert brain_bounding_box(mask) == (slice(1, 4), slice(2, 3), slice(3, 6))


def test_brain_bounding_box_margin_clipped():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 2, 5] = True
    # Grown by 2: (-1..6) -> (0..5), (0..5), (1..8) -> (1..7).
    assert brain_bounding_box(mask, margin=2) == (slice(0, 5), slice(0, 5), slice(1, 7))
    mask[:] = True
    assert brain_bounding_box(mask, margin=3) == (slice(0, 5), slice(0, 6), slice(0, 7))


def test_brain_bounding_box_of_fixture(mask):
    box = brain_bounding_box(mask)
    assert box == (slice(2, 8), slice(3, 15), slice(5, 24))
    assert mask[box].all() and mask[box].sum() == mask.sum()


def test_brain_bounding_box_empty():
    with pytest.raises(ValueError, match="empty"):
        brain_bounding_box(np.zeros((3, 3, 3), bool))


def test_brain_mask_fills_holes_and_uses_given_mask():
    image = np.zeros((5, 5, 5))
    image[1:4, 1:4, 1:4] = 1.0
    image[2, 2, 2] = 0.0  # a hole inside the brain
    m = brain_mask(image)
    assert m.dtype == bool and m[2, 2, 2] and m.sum() == 27
    given = np.zeros((5, 5, 5), np.uint8)
    given[0, 0, 0] = 7
    np.testing.assert_array_equal(brain_mask(image, given), given != 0)
    with pytest.raises(ValueError, match="shape"):
        brain_mask(image, np.zeros((5, 5, 4)))


# --- resampling ----------------------------------------------------------------------------------


def test_needs_resampling_and_shape():
    assert not needs_resampling((1.0, 1.0, 1.0005))
    assert needs_resampling((1.0, 1.0, 2.0))
    assert isotropic_shape((10, 20, 30), (1.0, 1.0, 2.0)) == (10, 20, 60)
    assert isotropic_shape((10, 20, 30), (0.5, 1.5, 1.0)) == (5, 30, 30)


def test_resample_image_doubles_last_axis_and_keeps_ramp(shape, spacing):
    # Value = world position (mm) of the voxel centre along each axis, from the field-of-view corner.
    k = (np.arange(shape[2]) + 0.5) * spacing[2]
    ramp = np.broadcast_to(k, shape).astype(np.float32)
    out = resample_image(ramp, spacing)
    assert out.dtype == np.float32
    assert out.shape == (10, 20, 60)
    expected = np.arange(60) + 0.5  # centres of the 1 mm voxels
    np.testing.assert_allclose(out[3, 4, 1:-1], expected[1:-1], atol=1e-4)  # exact away from the edges
    np.testing.assert_allclose(out[3, 4], expected, atol=0.5 + 1e-4)  # edges clamp to the edge voxel
    np.testing.assert_allclose(out, np.broadcast_to(out[0, 0], out.shape))  # unchanged along 1 mm axes


def test_resample_image_keeps_1mm_axes(volume, spacing):
    out = resample_image(volume, spacing)
    # 1 mm voxel 2k + 1 lies a quarter of a 2 mm voxel after the centre of voxel k.
    expected = 0.75 * volume[:, :, :-1] + 0.25 * volume[:, :, 1:]
    np.testing.assert_allclose(out[:, :, 1::2][:, :, :-1], expected, rtol=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (2.0, 1.0, 3.0)])
def test_label_map_round_trip(shape, spacing):
    # Blocky labels: the source grid -> 1 mm (nearest) -> back to the source grid is lossless.
    blocks = np.random.default_rng(0).integers(0, 200, size=(5, 5, 5)).astype(np.int16)
    labels = np.kron(blocks, np.ones((2, 4, 6), np.int16))[: shape[0], : shape[1], : shape[2]]
    assert labels.shape == shape
    iso = resample_image(labels, spacing, order=0).astype(labels.dtype)
    assert iso.shape == isotropic_shape(shape, spacing)
    back = resample_label_map(iso, spacing, shape)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, labels)


def test_label_map_round_trip_any_labels_factor_two(label_volume, spacing):
    iso = resample_image(label_volume, spacing, order=0).astype(label_volume.dtype)
    np.testing.assert_array_equal(iso[:, :, ::2], label_volume)
    np.testing.assert_array_equal(iso[:, :, 1::2], label_volume)
    np.testing.assert_array_equal(resample_label_map(iso, spacing, label_volume.shape), label_volume)


# --- pipeline ------------------------------------------------------------------------------------


def _volume(data: np.ndarray, spacing) -> Volume:
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = (-5.0, 3.0, 1.0)
    return Volume(data, affine, Grid(data.shape, affine))


def test_prepare_image_1mm_does_not_resample(volume, mask):
    image = np.where(mask, volume, 0.0).astype(np.float32)
    prepared = prepare_image(_volume(image, (1.0, 1.0, 1.0)))
    assert not prepared.resampled
    assert prepared.image.shape == image.shape
    np.testing.assert_array_equal(prepared.mask, mask)
    expected, background = zscore_in_mask(image, mask)
    np.testing.assert_array_equal(prepared.image, expected)
    assert prepared.background == background
    assert prepared.source_shape == image.shape
    labels = np.ones(image.shape, np.uint8)
    assert prepared.to_source_grid(labels) is labels
    assert prepared.from_source_grid(labels) is labels


def test_prepare_image_anisotropic_resamples(volume, mask, spacing):
    image = np.where(mask, volume, 0.0).astype(np.float32)
    prepared = prepare_image(_volume(image, spacing), mask=mask)
    assert prepared.resampled
    assert prepared.source_spacing == spacing
    assert prepared.image.shape == prepared.mask.shape == (10, 20, 60)
    assert prepared.image[prepared.mask].mean() == pytest.approx(0.0, abs=1e-5)
    labels = mask.astype(np.uint8) * 3
    iso = prepared.from_source_grid(labels)
    assert iso.shape == (10, 20, 60) and iso.dtype == np.uint8
    np.testing.assert_array_equal(prepared.to_source_grid(iso), labels)


def test_to_source_grid_confines_labels_to_the_input_brain(volume, mask, spacing):
    image = np.where(mask, volume, 0.0).astype(np.float32)
    prepared = prepare_image(_volume(image, spacing), mask=mask)
    everywhere = np.full(prepared.image.shape, 3, np.uint8)  # labels spilling past the brain
    back = prepared.to_source_grid(everywhere)
    assert back.shape == mask.shape
    assert (back[mask] == 3).all() and not back[~mask].any()


def test_probabilities_to_source_grid_agree_with_the_label_map(volume, mask, spacing, rng):
    """Random (not constant) probabilities: on the input grid their argmax is the label map, nothing outside
    the brain, and each input voxel carries the probabilities of one 1 mm voxel."""
    image = np.where(mask, volume, 0.0).astype(np.float32)
    prepared = prepare_image(_volume(image, spacing), mask=mask)
    logits = rng.standard_normal((4,) + prepared.image.shape)
    probs = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float16)
    classes = probs.argmax(axis=0).astype(np.uint8)
    back = np.asarray(ProbabilityMap(probs, prepared.source_index()))
    labels = prepared.to_source_grid(classes)
    assert back.shape == (4,) + mask.shape and back.dtype == np.float16
    np.testing.assert_array_equal(back.argmax(axis=0), labels)
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=4e-3)
    assert np.all(back[0][~mask] == 1) and not back[1:][:, ~mask].any()
    assert prepared.resampled  # anisotropic: built once, shared by the labels and the probabilities, read-only
    assert prepared.source_index() is prepared.source_index() and not prepared.source_index().flags.writeable
    # Probabilities are carried, not blended: every brain voxel's vector is one of the 1 mm grid's.
    vectors = {tuple(v) for v in probs.reshape(4, -1).T.tolist()}
    assert all(tuple(v) in vectors for v in back[:, mask].T.tolist())
    assert len({tuple(v) for v in back[:, mask].T.tolist()}) > 50  # and varied, so the test can fail


def test_downsampling_sub_millimetre_images_is_anti_aliased():
    """0.4 mm stripes one voxel wide (+-1) are finer than a 1 mm grid can hold: downsampled without smoothing
    they alias into +-0.5 bands; smoothed first they average out."""
    from scipy import ndimage

    from brainseg.preprocessing.resampling import _zoom_matrix, resample_image

    stripes = np.where(np.arange(100) % 2 == 0, 1.0, -1.0).astype(np.float32)
    image = np.broadcast_to(stripes[:, None, None], (100, 6, 5)).copy()
    out = resample_image(image, (0.4, 1.0, 1.0))
    assert out.shape == (40, 6, 5)
    scale, offset = _zoom_matrix(image.shape, (0.4, 1.0, 1.0), out.shape, (1.0, 1.0, 1.0))
    aliased = ndimage.affine_transform(image, scale, offset, output_shape=out.shape, order=1, mode="nearest")
    assert np.abs(aliased[2:-2]).max() > 0.4  # what plain linear interpolation gives
    assert np.abs(out[2:-2]).max() < 0.1
    # A smooth image is barely changed, and label maps (order 0) are never smoothed.
    ramp = np.broadcast_to(np.linspace(0, 10, 100, dtype=np.float32)[:, None, None], (100, 6, 5)).copy()
    np.testing.assert_allclose(
        resample_image(ramp, (0.4, 1.0, 1.0))[2:-2], _plain_linear_ramp(ramp, scale, offset), atol=1e-3
    )
    labels = np.broadcast_to((np.arange(100) % 3).astype(np.float32)[:, None, None], (100, 6, 5)).copy()
    assert set(np.unique(resample_image(labels, (0.4, 1.0, 1.0), order=0))) <= {0.0, 1.0, 2.0}


def _plain_linear_ramp(ramp, scale, offset):
    from scipy import ndimage

    out = ndimage.affine_transform(ramp, scale, offset, output_shape=(40, 6, 5), order=1, mode="nearest")
    return out[2:-2]
