"""Affine registration recovers known transforms (issue B: within 1 mm and 1 degree)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from brainseg.io import load_volume
from brainseg.model_folder import default_model_dir
from brainseg.preprocessing.registration import register_affine, resample_to_reference, rotation_angle_deg

DEMO = default_model_dir().parent / "demo" / "1000_SS.nii.gz"


def _apply(matrix, points):
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _known_transform(affine, shape, angles_deg, scale, shift_mm):
    centre = _apply(affine, np.array(shape) / 2.0)
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() * scale
    t[:3, 3] = np.asarray(shift_mm) + centre - t[:3, :3] @ centre
    return t


@pytest.fixture(scope="module")
def demo():
    volume = load_volume(DEMO)
    return volume.data, volume.affine


def test_recovers_known_affine_on_real_brain(demo):
    image, affine = demo
    truth = _known_transform(affine, image.shape, (6, -4, 5), 1.05, (4, -3, 2))
    moving = resample_to_reference(image, affine, np.linalg.inv(truth), image.shape, affine)
    result = register_affine(moving, affine, image, affine)
    brain = _apply(affine, np.argwhere(image > 0)[::200].astype(float))
    error_mm = np.linalg.norm(_apply(result.matrix, brain) - _apply(truth, brain), axis=1)
    assert error_mm.max() < 1.0
    assert rotation_angle_deg(result.matrix @ np.linalg.inv(truth)) < 1.0
    # the known transform is far from identity, so the test is not vacuous
    assert rotation_angle_deg(truth) > 5


def test_translation_sign_in_ras(demo):
    """A brain shifted 5 mm to the Right registers with +5 mm along R (no LPS sign slip)."""
    image, affine = demo
    shifted = affine.copy()
    shifted[0, 3] += 5.0  # same voxels, 5 mm further right in world space
    result = register_affine(image, shifted, image, affine)
    np.testing.assert_allclose(result.matrix[:3, 3], [5.0, 0.0, 0.0], atol=0.5)
    np.testing.assert_allclose(result.matrix[:3, :3], np.eye(3), atol=0.01)


def test_resample_identity_and_labels_stay_integer():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(10, 20, 30)).astype(np.int16)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    out = resample_to_reference(labels, affine, np.eye(4), labels.shape, affine, order=0)
    np.testing.assert_array_equal(out, labels)
    assert out.dtype == np.int16


def test_rotation_angle():
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("z", 30, degrees=True).as_matrix() * 2.0
    assert rotation_angle_deg(m) == pytest.approx(30.0)


def test_rejects_empty_image():
    with pytest.raises(ValueError, match="non-empty 3-D"):
        register_affine(np.zeros((4, 4, 4)), np.eye(4), np.ones((4, 4, 4)), np.eye(4))
