"""Dense (fully convolutional) inference must equal patch-by-patch classification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from network_helpers import randomise_batch_norm

from brainseg.inference.dense import predict_dense, predict_patches
from brainseg.models.ganaye2018 import BaseNet
from brainseg.sampling.patches import PLANE_AXIS, build_stack, to_plane

PLANES = ("axial", "coronal", "sagittal")
SMALL = dict(branch_widths=(4, 8), mix_channels=8, fc_widths=(16, 16))  # fast on CPU, same layer layout


def _model(batch_norm: bool = False, gain: float = 2.0, **widths) -> BaseNet:
    torch.manual_seed(0)
    model = BaseNet(num_classes=7, batch_norm=batch_norm, **widths)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(gain)  # keep the narrow test widths' activations from shrinking
        model.out.weight.mul_(30.0)  # spread the logits so probabilities vary
    if batch_norm:
        randomise_batch_norm(model, torch.Generator().manual_seed(1), affine=True)
    return model.eval()


@pytest.fixture
def image(rng) -> np.ndarray:
    return rng.standard_normal((10, 20, 30)).astype(np.float32)


def _compare(model, image, mask, plane, scales=(1, 2, 3)):
    stack = build_stack(image, plane, scales, background=-0.7)
    classes, probs = predict_dense(model, stack, mask, probabilities=True, probability_dtype=np.float32)
    assert classes.shape == mask.shape and classes.dtype == np.uint8
    assert probs.shape == (7,) + mask.shape and probs.dtype == np.float32
    idx = np.argwhere(to_plane(mask, plane))  # (N, 3) in plane order
    reference = predict_patches(model, stack, idx, batch_size=300)
    probs_p = np.moveaxis(probs, 1 + PLANE_AXIS[plane], 1)
    dense = probs_p[:, idx[:, 0], idx[:, 1], idx[:, 2]].T
    return stack, classes, probs, idx, reference, dense


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_dense_equals_patches(image, mask, plane, batch_norm):
    model = _model(batch_norm, **SMALL)
    stack, classes, probs, idx, reference, dense = _compare(model, image, mask, plane)
    assert np.abs(dense - reference).max() <= 1e-5
    assert reference.max() > 0.5 and reference.min() < 0.01  # the check is not vacuous
    assert len(np.unique(reference.argmax(1))) > 1
    # Class map = arg-max; outside the mask: background with probability 1.
    classes_p = np.moveaxis(classes, PLANE_AXIS[plane], 0)
    np.testing.assert_array_equal(classes_p[tuple(idx.T)], dense.argmax(1))
    assert not classes[~mask].any()
    assert (probs[0][~mask] == 1).all() and not probs[1:, ~mask].any()


def test_dense_equals_patches_default_widths(image):
    # The real layer widths, on a small irregular mask touching the volume's edges.
    mask = np.zeros((10, 20, 30), bool)
    mask[0, 0, 0] = mask[9, 19, 29] = mask[4, 7, 12] = mask[4, 8, 12] = mask[5, 15, 2] = True
    model = _model(False, gain=1.3)
    for plane in PLANES:
        *_, reference, dense = _compare(model, image, mask, plane)
        assert np.abs(dense - reference).max() <= 1e-5
        assert (reference.max(0) - reference.min(0)).max() > 0.05  # outputs differ between voxels


def test_shifted_index_differs(image, mask):
    model = _model(False, **SMALL)
    stack, _, _, idx, reference, dense = _compare(model, image, mask, "axial")
    shifted = predict_patches(model, stack, idx + np.array([0, 0, 1]))
    assert np.abs(dense - shifted).max() > 1e-2


def test_scales_subset(image, mask):
    model = _model(False, scales=(1, 2), **SMALL)
    *_, reference, dense = _compare(model, image, mask, "coronal", scales=(1, 2))
    assert np.abs(dense - reference).max() <= 1e-5


def test_errors(image, mask):
    model = _model(False, **SMALL)
    stack = build_stack(image, "axial", (1, 2, 3), 0.0)
    with pytest.raises(ValueError, match="mask shape"):
        predict_dense(model, stack, mask[:, :, :-1])
    model.train()
    with pytest.raises(ValueError, match="eval"):
        predict_dense(model, stack, mask)
    model.eval()
    torch.manual_seed(0)
    wide = BaseNet(num_classes=257, **SMALL).eval()  # class 256 would wrap to 0 in the uint8 class map
    with pytest.raises(ValueError, match="at most 256 classes, the network has 257"):
        predict_dense(wide, stack, mask)


def test_empty_inputs(image):
    model = _model(False, **SMALL)
    stack = build_stack(image, "sagittal", (1, 2, 3), 0.0)
    assert predict_patches(model, stack, np.zeros((0, 3), int)).shape == (0, 7)
    classes, probs = predict_dense(model, stack, np.zeros((10, 20, 30), bool))
    assert not classes.any() and probs is None


@pytest.mark.parametrize("plane", PLANES)
def test_dense_at_voxels_equals_patches_and_full_dense(image, mask, plane):
    from brainseg.inference.dense import predict_dense_at

    model = _model(True, **SMALL)
    stack, _, _, idx, reference, dense = _compare(model, image, mask, plane)
    rng = np.random.default_rng(3)
    pick = idx[rng.choice(len(idx), 40, replace=False)]  # scattered voxels, unsorted
    at = predict_dense_at(model, stack, pick)
    np.testing.assert_allclose(at, predict_patches(model, stack, pick), atol=1e-5)
    rows = [np.flatnonzero((idx == p).all(axis=1))[0] for p in pick]
    np.testing.assert_allclose(at, dense[rows], atol=1e-6)


def _full_model(representation: str = "images") -> torch.nn.Module:
    from brainseg.models.ganaye2018 import DistBranch, GanayeNet

    torch.manual_seed(0)
    model = GanayeNet(
        num_classes=7,
        batch_norm=True,
        dist_branch=DistBranch(3, representation, conv=True, rbf=False, filters=2, width=8),
        prob_branch=True,
        branch_3d_widths=(2, 4),
        auxiliary=True,
        **SMALL,
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
                m.weight.mul_(2.0)
        model.out.weight.mul_(30.0)
    randomise_batch_norm(model, torch.Generator().manual_seed(1))
    return model.eval()


def _spatial(image, affine, rng):
    from brainseg.features.atlas import ProbabilisticAtlas
    from brainseg.features.spatial import make_spatial_inputs

    maps = [rng.integers(0, 7, image.shape) for _ in range(3)]
    atlas = ProbabilisticAtlas.build(maps, 7, sigma_mm=1.0)
    return make_spatial_inputs(image, affine, -0.7, landmarks=3, atlas=atlas, patches_3d=True)


@pytest.fixture
def oblique_affine(affine) -> np.ndarray:
    """The conftest affine (LAS, anisotropic spacing) turned 20 degrees about z and 10 about x: truly oblique."""
    from scipy.spatial.transform import Rotation

    turned = affine.copy()
    turned[:3, :3] = Rotation.from_euler("zx", (20, 10), degrees=True).as_matrix() @ affine[:3, :3]
    return turned


def test_oblique_affine_is_oblique(oblique_affine):
    off_diagonal = oblique_affine[:3, :3] - np.diag(np.diag(oblique_affine[:3, :3]))
    assert np.abs(off_diagonal).max() > 0.3


@pytest.mark.parametrize("plane", PLANES)
def test_full_model_dense_equals_patches(image, mask, oblique_affine, rng, plane):
    # Every branch (2-D, DistBranch, ProbBranch, 3dBranch) on a non-cubic volume with an oblique affine
    # (the landmark distances are taken in its rotated mm frame).
    model = _full_model()
    spatial = _spatial(image, oblique_affine, rng)
    stack = build_stack(image, plane, (1, 2, 3), background=-0.7)
    classes, probs = predict_dense(
        model, stack, mask, spatial=spatial, probabilities=True, probability_dtype=np.float32
    )
    idx = np.argwhere(to_plane(mask, plane))
    reference = predict_patches(model, stack, idx, spatial=spatial, batch_size=100)
    dense = np.moveaxis(probs, 1 + PLANE_AXIS[plane], 1)[:, idx[:, 0], idx[:, 1], idx[:, 2]].T
    assert np.abs(dense - reference).max() <= 1e-5
    assert len(np.unique(reference.argmax(1))) > 1
    assert (reference.max(0) - reference.min(0)).max() > 0.05


def test_full_model_priors_matter(image, mask, affine, rng):
    # Changing one prior changes the output: the branches are wired in, not ignored.
    model = _full_model()
    spatial = _spatial(image, affine, rng)
    stack = build_stack(image, "axial", (1, 2, 3), background=-0.7)
    idx = np.argwhere(to_plane(mask, "axial"))[:50]
    base = predict_patches(model, stack, idx, spatial=spatial)
    from dataclasses import replace

    for change in (
        replace(spatial, landmarks=spatial.landmarks + 5.0),
        replace(spatial, atlas=_spatial(image, affine, np.random.default_rng(9)).atlas),
        replace(spatial, padded_image=spatial.padded_image[::-1].copy()),
    ):
        assert np.abs(predict_patches(model, stack, idx, spatial=change) - base).max() > 1e-3


def test_spatial_inputs_required(image, mask):
    stack = build_stack(image, "axial", (1, 2, 3), 0.0)
    with pytest.raises(ValueError, match="spatial inputs"):
        predict_dense(_full_model(), stack, mask)
