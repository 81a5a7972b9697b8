"""The reference space: moving scans onto the template grid and their labels back."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.inference.probability_map import ProbabilityMap
from brainseg.io.nifti import Grid, Volume
from brainseg.preprocessing.pipeline import prepare_image
from brainseg.preprocessing.reference import Reference, load_reference, register_to_reference


def _prepared(rng, shape=(24, 30, 20)):
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (zz**2 + yy**2 + xx**2) < 0.6
    data = np.where(brain, 100 + 40 * (xx > 0) + rng.standard_normal(shape), 0).astype(np.float32)
    classes = np.where(brain, 1 + (xx > 0) + 2 * (zz > 0), 0).astype(np.uint8)
    volume = Volume(data, np.eye(4), Grid(shape, np.eye(4)))
    return prepare_image(volume), classes


def _translation(t):
    m = np.eye(4)
    m[:3, 3] = t
    return m


def test_known_translation_round_trip(rng):
    prepared, classes = _prepared(rng)
    # Template grid: 30 x 36 x 26 voxels whose voxel (0, 0, 0) sits at (-3, -3, -3) mm; the scan sits
    # 2 mm further along the first axis: template mm x -> scan mm x + (2, 0, 0).
    affine = _translation((-3.0, -3.0, -3.0))
    reference = Reference(np.zeros((30, 36, 26), np.float32), affine)
    registered = register_to_reference(prepared, reference, _translation((2.0, 0.0, 0.0)))
    assert registered.image.shape == (30, 36, 26) and registered.mask.shape == (30, 36, 26)
    # Scan voxel v is template voxel v - (2, 0, 0) + (3, 3, 3) = v + (1, 3, 3).
    v = np.argwhere(prepared.mask)[::50]
    np.testing.assert_allclose(registered.image[tuple((v + [1, 3, 3]).T)], prepared.image[tuple(v.T)], atol=1e-5)
    assert registered.mask.sum() == prepared.mask.sum()
    assert np.all(registered.image[~registered.mask] == pytest.approx(prepared.background))
    # Labels on the template grid come back exactly onto the scan's grid, confined to its brain mask.
    on_template = np.zeros((30, 36, 26), np.uint8)
    on_template[tuple((np.argwhere(prepared.mask) + [1, 3, 3]).T)] = classes[prepared.mask]
    np.testing.assert_array_equal(registered.to_native(on_template), classes)
    np.testing.assert_array_equal(registered.to_source_grid(on_template), classes)
    probs = np.stack([on_template == c for c in range(5)]).astype(np.float32)
    back = np.asarray(ProbabilityMap(probs, registered.source_index()))
    np.testing.assert_allclose(back.argmax(axis=0)[prepared.mask], classes[prepared.mask])
    # the index maps are built once per image (labels and probabilities share them) and cannot be altered
    assert registered.native_index() is registered.native_index() and not registered.native_index().flags.writeable


def test_registration_recovers_a_shift_of_the_template(rng):
    # The template is the scan itself placed (3, -2, 1) mm further: template mm x shows scan mm
    # x - (3, -2, 1), so the transform (template mm -> scan mm) is that translation.
    prepared, _ = _prepared(rng, shape=(40, 44, 36))
    moving = np.where(prepared.mask, prepared.image - prepared.background, 0).astype(np.float32)
    reference = Reference(moving, _translation((3.0, -2.0, 1.0)))
    registered = register_to_reference(prepared, reference)
    np.testing.assert_allclose(registered.matrix[:3, 3], [-3.0, 2.0, -1.0], atol=0.5)
    np.testing.assert_allclose(registered.matrix[:3, :3], np.eye(3), atol=0.03)


def test_save_load_round_trip(rng, tmp_path):
    template = rng.random((6, 7, 8)).astype(np.float32) * 3
    atlas = ProbabilisticAtlas.build([rng.integers(0, 3, (6, 7, 8))], 3)
    reference = Reference(template, _translation((1.0, 2.0, 3.0)), atlas, {"x": _translation((0.5, 0, 0))}, {"k": 1})
    reference.save(tmp_path / "ref")
    loaded = load_reference(tmp_path / "ref")
    np.testing.assert_allclose(loaded.template, template, atol=3 / 30000)  # int16 storage
    np.testing.assert_allclose(loaded.affine, reference.affine)
    np.testing.assert_allclose(loaded.transforms["x"], reference.transforms["x"])
    assert loaded.info == {"k": 1} and loaded.atlas is not None and loaded.atlas.shape == (6, 7, 8)


def test_missing_reference_is_an_input_error(tmp_path):
    from brainseg.errors import InputError

    with pytest.raises(InputError, match="brainseg atlas build"):
        load_reference(tmp_path)
