"""Dense inference of de Brébisson and Montana's network must equal the patch-by-patch network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.config import BrebissonConfig
from brainseg.families.brebisson2015 import BREBISSON2015, pathway_inputs
from brainseg.features.centroids import RegionCentroids
from brainseg.inference.dense_brebisson import brebisson_probabilities, predict_brebisson
from brainseg.models.brebisson2015 import PATHWAYS, BrebissonNet, BrebissonTwoStage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (21, 17, 19)  # non-cubic
C, K = 4, 3  # classes, regions
WIDTHS = dict(widths_2d=(3, 4), fc_3d=(5,), fc=(6, 5))
FULL = ("orthogonal", "compressed", "patch_3d", "centroids")
#: Voxel -> mm: axes permuted, anisotropic (0.9, 1.2, 2 mm), sheared, translated.
AFFINE = np.array([[0.0, 1.2, 0.1, 5.0], [-0.9, 0.0, 0.0, 3.0], [0.0, 0.2, 2.0, -7.0], [0.0, 0.0, 0.0, 1.0]])
TOL = 1e-5


@pytest.fixture(scope="module")
def case():
    """Image, mask, inputs and every pathway's patch-by-patch inputs at every brain voxel (computed once)."""
    rng = np.random.default_rng(7)
    image = rng.normal(0.5, 1.0, SHAPE).astype(np.float32)
    mask = rng.random(SHAPE) > 0.3  # holes; off the low face of axis 0 and the high faces of axes 1, 2
    mask[:3], mask[:, :, 15:], mask[:, 14:] = False, False, False
    cfg = BrebissonConfig(num_classes=C, pathways=PATHWAYS, **WIDTHS)
    inputs = BREBISSON2015.case_inputs(cfg, image, mask, AFFINE, -0.7, None)
    assert tuple(inputs.patches.origin) == (3, 0, 0) and inputs.patches.padded.shape != SHAPE
    voxels = np.argwhere(mask)
    patches = pathway_inputs(inputs, voxels, tuple(p for p in PATHWAYS if p != "centroids"), None)
    return image, mask, inputs, voxels, patches


def _net(pathways, seed=0) -> BrebissonNet:
    """A narrow random network in eval mode: random biases too, and logits spread out."""
    torch.manual_seed(seed)
    net = BrebissonNet(C, pathways, K, **WIDTHS)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        net.out.weight.mul_(4.0)
    return net.eval()


def _reference(net, case, centroids=None, logit_bias=None) -> np.ndarray:
    """Softmax of the patch-by-patch network ``(N, C)`` at every brain voxel."""
    _, _, inputs, voxels, patches = case
    batch = {k: torch.from_numpy(v) for k, v in patches.items() if k in net.pathways}
    if centroids is not None:
        batch["centroids"] = torch.from_numpy(centroids.distances(inputs.points_mm(voxels)))
    with torch.no_grad():
        logits = net(**batch)
    if logit_bias is not None:
        logits = logits + torch.as_tensor(logit_bias, dtype=torch.float32)
    return torch.softmax(logits, dim=1).numpy()


def _centroids(seed=3) -> RegionCentroids:
    return RegionCentroids.of(np.random.default_rng(seed).integers(0, C, SHAPE), AFFINE, K)


def _same_classes(classes: np.ndarray, probs: np.ndarray) -> None:
    """``classes`` are the arg-max of ``probs`` ``(N, C)`` wherever the two best are not within rounding."""
    top = np.sort(probs, axis=1)
    clear = top[:, -1] - top[:, -2] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(classes[clear], probs.argmax(axis=1)[clear])


@pytest.mark.parametrize("pathway", PATHWAYS)
def test_each_pathway_equals_patch_by_patch(case, pathway):
    net = _net((pathway,), seed=3)
    if pathway == "coordinates":  # a real brain's span: this one is 0.2 across, divided by COORDINATE_SCALE_MM
        with torch.no_grad():
            net.merge[0].weight.mul_(10.0)
    centroids = _centroids() if pathway == "centroids" else None
    dense = brebisson_probabilities(net, case[2], case[1], centroids, tile=1000)  # several tiles
    ref = _reference(net, case, centroids)
    assert np.abs(dense - ref).max() <= TOL
    assert ref.std(axis=0).max() > 0.05  # the probabilities vary across voxels: a misplaced input would show


def test_all_pathways_equal_patch_by_patch_with_a_logit_bias(case):
    net, centroids, bias = _net(PATHWAYS, seed=1), _centroids(), np.array([0.3, -1.0, 0.0, 2.0])
    dense = brebisson_probabilities(net, case[2], case[1], centroids, logit_bias=bias, tile=777)
    assert np.abs(dense - _reference(net, case, centroids, bias)).max() <= TOL


def test_a_compressed_patch_read_one_voxel_off_would_be_caught(case):
    # The comparison is sensitive: the reference of the neighbouring voxels differs by far more than TOL.
    net = _net(("compressed",), seed=3)
    _, _, inputs, voxels, _ = case
    inside = voxels[:, 1] < voxels[:, 1].max()  # the shifted voxel stays in the bounding box
    shifted = voxels[inside] + [0, 1, 0]
    batch = {"compressed": torch.from_numpy(inputs.patches.planar(shifted, 14, 3))}
    with torch.no_grad():
        moved = torch.softmax(net(**batch), dim=1).numpy()
    assert np.abs(moved - _reference(net, case)[inside]).max() > 100 * TOL


def test_a_smaller_mask_gives_the_same_rows(case):
    # Slices' bounding boxes change with the mask: the rows of the voxels kept must not.
    _, mask, inputs, voxels, _ = case
    net = _net(("patch_2d", "compressed", "coordinates"), seed=2)
    full = brebisson_probabilities(net, inputs, mask)
    keep = np.random.default_rng(0).random(len(voxels)) < 0.3
    sub = np.zeros(SHAPE, bool)
    sub[tuple(voxels[keep].T)] = True
    assert np.abs(brebisson_probabilities(net, inputs, sub) - full[keep]).max() <= 1e-6


def test_single_network_maps(case):
    _, mask, inputs, voxels, _ = case
    net = _net(("orthogonal", "patch_3d", "coordinates"), seed=4)
    classes, probs, result = predict_brebisson(net, inputs, mask, probabilities=True, probability_dtype=np.float32)
    ref = _reference(net, case)
    assert result is None and classes.dtype == np.uint8 and probs.shape == (C,) + SHAPE
    assert np.abs(probs[:, mask].T - ref).max() <= TOL
    np.testing.assert_array_equal(probs[:, ~mask], np.eye(C, 1).repeat((~mask).sum(), axis=1))  # background 1
    assert (classes[~mask] == 0).all()
    _same_classes(classes[mask], ref)
    again, none, _ = predict_brebisson(net, inputs, mask)  # no probabilities asked: same classes
    assert none is None
    np.testing.assert_array_equal(again, classes)


def _two_stage(seed=5) -> BrebissonTwoStage:
    return BrebissonTwoStage(_net(FULL + ("coordinates",), seed), _net(FULL[:3] + ("coordinates",), seed + 1)).eval()


def test_two_stage_passes_equal_patch_by_patch_with_the_previous_centroids(case):
    _, mask, inputs, _, _ = case
    network = _two_stage()
    first, _, none = predict_brebisson(network.first, inputs, mask)
    assert none is None
    _same_classes(first[mask], _reference(network.first, case))
    previous = first
    for passes in (1, 2):
        classes, probs, result = predict_brebisson(
            network, inputs, mask, probabilities=True, probability_dtype=np.float32, max_iterations=passes, tolerance=0
        )
        assert result.iterations == passes and not result.converged  # the random networks disagree
        np.testing.assert_array_equal(result.classes, classes)
        # the returned probabilities are the last pass's: the full network with the previous pass's centroids
        ref = _reference(network.full, case, RegionCentroids.of(previous, AFFINE, K))
        assert np.abs(probs[:, mask].T - ref).max() <= TOL
        _same_classes(classes[mask], ref)
        assert result.changed[-1] == pytest.approx(np.count_nonzero(classes[mask] != previous[mask]) / mask.sum())
        previous = classes


def test_two_stage_with_a_first_stage_of_its_own(case):
    # Table 1's centroid-only row: the full network reads nothing but the distances, the first stage other inputs.
    _, mask, inputs, _, _ = case
    network = BrebissonTwoStage(_net(("centroids",), seed=3), _net(("patch_3d",), seed=2)).eval()
    first, _, _ = predict_brebisson(network.first, inputs, mask)
    assert len(np.unique(first[mask & (first > 0)])) >= 2  # regions to measure from
    classes, probs, result = predict_brebisson(
        network, inputs, mask, probabilities=True, probability_dtype=np.float32, max_iterations=1, tolerance=0
    )
    assert result.iterations == 1
    ref = _reference(network.full, case, RegionCentroids.of(first, AFFINE, K))
    assert np.abs(probs[:, mask].T - ref).max() <= TOL
    _same_classes(classes[mask], ref)


def test_given_centroids_skip_the_first_stage(case):
    # Table 1's centroid row scored as the paper did, with the true centroids: one pass of the full network.
    _, mask, inputs, _, _ = case
    network = BrebissonTwoStage(_net(("centroids",), seed=3), _net(("patch_3d",), seed=2)).eval()
    truth = _centroids(seed=11)
    called = []
    network.first.register_forward_hook(lambda *_: called.append(1))
    classes, probs, result = predict_brebisson(
        network, inputs, mask, probabilities=True, probability_dtype=np.float32, centroids=truth, keep_passes=True
    )
    assert not called and result.iterations == 1 and result.changed == [] and len(result.passes) == 1
    ref = _reference(network.full, case, truth)
    assert np.abs(probs[:, mask].T - ref).max() <= TOL
    _same_classes(classes[mask], ref)
    assert (classes[~mask] == 0).all()
    other, _, _ = predict_brebisson(network, inputs, mask, centroids=_centroids(seed=12))
    assert not np.array_equal(other, classes)  # the distances are what this network reads
    with pytest.raises(ValueError, match="single network"):
        predict_brebisson(network.first, inputs, mask, centroids=truth)


def test_two_stage_computes_the_image_pathways_once(case):
    _, mask, inputs, voxels, _ = case
    network, calls = _two_stage(), {"first": 0, "full": 0}
    for name in calls:
        getattr(network, name).volume.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    _, _, result = predict_brebisson(network, inputs, mask, max_iterations=3, tolerance=0, tile=1000)
    tiles = -(-len(voxels) // 1000)
    assert result.iterations == 3 and calls == {"first": tiles, "full": tiles}


def test_two_stage_stops_within_tolerance(case):
    _, mask, inputs, _, _ = case
    classes, _, result = predict_brebisson(_two_stage(), inputs, mask, max_iterations=3, tolerance=1.0)
    assert result.iterations == 1 and result.converged and len(result.changed) == 1
    np.testing.assert_array_equal(classes, result.classes)


def test_two_stage_keeps_a_first_stage_with_one_region(case):
    # Nothing to measure distances from: no pass of the full network; classes and probabilities are the first's.
    _, mask, inputs, _, _ = case
    network = _two_stage()
    with torch.no_grad():
        network.first.out.bias[1] = 100.0
    classes, probs, result = predict_brebisson(network, inputs, mask, probabilities=True, probability_dtype=np.float32)
    assert result.iterations == 0 and (classes[mask] == 1).all()
    assert np.abs(probs[:, mask].T - _reference(network.first, case)).max() <= TOL


def test_refusals(case):
    _, mask, inputs, _, _ = case
    net = _net(("patch_2d", "centroids"))
    with pytest.raises(ValueError, match="first stage"):
        predict_brebisson(net, inputs, mask)
    with pytest.raises(ValueError, match="centroids"):
        brebisson_probabilities(net, inputs, mask)
    with pytest.raises(ValueError, match="eval"):
        predict_brebisson(_two_stage().train(), inputs, mask)
    with pytest.raises(ValueError, match="shape"):
        predict_brebisson(_net(("patch_2d",)), inputs, mask[:, :, :-1])
    outside = np.zeros(SHAPE, bool)
    outside[0, 0, 0] = True  # above the bounding box the inputs were cropped to
    with pytest.raises(ValueError, match="bounding box"):
        predict_brebisson(_net(("patch_2d",)), inputs, outside)
    with pytest.raises(ValueError, match="logit_bias"):
        predict_brebisson(_net(("patch_2d",)), inputs, mask, logit_bias=np.zeros(C + 1))
    with pytest.raises(ValueError, match="max_iterations"):
        predict_brebisson(_two_stage(), inputs, mask, max_iterations=0)
