"""DeepNAT's int8 labels: float32's labels wherever the check says so, Eq. 3 tile by tile, the int8 head's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from network_helpers import randomise_batch_norm

from brainseg.config import DeepNATConfig
from brainseg.families.wachinger2018 import WACHINGER2018
from brainseg.inference.dense3d import segment_dense3d
from brainseg.inference.dense3d_int8 import INT8_MARGIN, segment_dense3d_int8
from brainseg.inference.dense3d_network import DenseHead
from brainseg.inference.int8 import Int8Report
from brainseg.models.wachinger2018 import DeepNAT, DeepNATCascade
from brainseg.sampling.patches3d import DeepNATInputs

SMALL = dict(widths=(4, 8, 8), fc_widths=(32, 16), dropout=0.0)
SHAPE = (17, 14, 19)  # non-cubic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spread(network: DeepNAT, g: torch.Generator) -> None:
    # non-trivial batch-norm statistics and spread-out logits, so that labels vary and some are doubtful
    randomise_batch_norm(network, g, affine=True)
    with torch.no_grad():
        for head in network.heads:
            head.weight.mul_(8.0)


def _model(cascade: bool, tasks: int, coordinates: int = 6, num_classes: int = 5):
    torch.manual_seed(tasks)
    model = (DeepNATCascade if cascade else DeepNAT)(num_classes, tasks=tasks, coordinates=coordinates, **SMALL)
    g = torch.Generator().manual_seed(1)
    for member in [model.foreground, model.structures] if cascade else [model]:
        _spread(member, g)
    return model.eval()


@pytest.fixture
def volume(rng):
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    mask = sum(g**2 for g in grids) < 0.85
    mask[0, 0, 0] = mask[-1, -1, -1] = True  # corner voxels: heads pointing out of the volume
    image = rng.standard_normal(SHAPE).astype(np.float32)
    coordinates = rng.uniform(-1, 1, (6,) + SHAPE).astype(np.float32)
    return image, mask, coordinates


@pytest.mark.parametrize("cascade", [False, True])
@pytest.mark.parametrize("tasks", [1, 7, 27])
def test_checking_every_voxel_gives_float32_labels(volume, cascade, tasks):
    image, mask, coordinates = volume
    model = _model(cascade, tasks)
    bias = np.linspace(-0.5, 0.5, model.num_classes)
    reference, _ = segment_dense3d(model, image, mask, coordinates, tile_size=4, background=-0.3, logit_bias=bias)
    assert len(np.unique(reference[mask])) >= 3  # labels vary: not a vacuous comparison
    for tile_size in (2, 5, None):  # tiles whose grown boxes overlap, and the budget's choice
        report = Int8Report()
        labels = segment_dense3d_int8(
            model,
            image,
            mask,
            coordinates,
            margin=float("inf"),
            tile_size=tile_size,
            background=-0.3,
            logit_bias=bias,
            report=report,
        )
        np.testing.assert_array_equal(labels, reference)
        assert report == Int8Report(voxels=int(mask.sum()), recomputed=int(mask.sum()))


@pytest.mark.parametrize("cascade", [False, True])
def test_the_margin_checks_only_doubtful_voxels_and_keeps_float32_labels(volume, cascade):
    image, mask, coordinates = volume
    model = _model(cascade, 7)
    reference, probabilities = segment_dense3d(model, image, mask, coordinates, tile_size=4, probabilities=True)
    report = Int8Report()
    labels = segment_dense3d_int8(model, image, mask, coordinates, tile_size=6, report=report)
    np.testing.assert_array_equal(labels, reference)
    assert not labels[~mask].any()
    top = np.sort(probabilities[:, mask].astype(np.float64), axis=0)[-2:]
    close = int((np.log(top[1]) - np.log(top[0]) < INT8_MARGIN).sum())  # float32 gap under the margin
    assert report.voxels == mask.sum() and 0 < report.recomputed < report.voxels
    assert abs(report.recomputed - close) <= 0.02 * mask.sum()  # int8's gaps are float32's, nearly


def test_without_the_check_int8_can_relabel(volume):
    # margin 0 takes int8's labels as they come: a mutation test that the check matters at all
    image, mask, coordinates = volume
    model = _model(False, 7, num_classes=40)
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(0.05)  # near-ties everywhere
    reference, _ = segment_dense3d(model, image, mask, coordinates)
    report = Int8Report()
    unchecked = segment_dense3d_int8(model, image, mask, coordinates, margin=0.0, report=report)
    assert report.recomputed == 0 and (unchecked != reference).any()
    np.testing.assert_array_equal(segment_dense3d_int8(model, image, mask, coordinates, margin=1.0), reference)


@pytest.mark.parametrize("coordinates", [0, 6])
def test_dense_heads_are_the_network_head(rng, coordinates):
    model = _model(False, 7, coordinates=coordinates)
    features = torch.from_numpy(rng.uniform(0, 2, (300, model.num_features)).astype(np.float32))
    coords = torch.from_numpy(rng.uniform(-1, 1, (300, 6)).astype(np.float32)) if coordinates else None
    with torch.no_grad():
        exact = model.head(features, coords)
        folded = DenseHead(model)(features, coords)
        fast = DenseHead(model, int8=True)(features, coords)
    torch.testing.assert_close(folded, exact, rtol=1e-5, atol=1e-4)  # batch norm folded, heads stacked
    assert fast.shape == exact.shape == (300, 7, 5)
    error = (fast - exact).abs()
    assert error.max() < 0.02 * exact.abs().max()  # per-row int8 scales: about 1 % of the logits' range
    assert error.max() > 0  # it is int8 (a float32 head would be exact)


def test_no_coordinates_and_a_mask_of_one_voxel(rng):
    model = _model(False, 7, coordinates=0)
    image = rng.standard_normal((5, 6, 7)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[2, 3, 4] = True
    reference, _ = segment_dense3d(model, image, mask)
    np.testing.assert_array_equal(segment_dense3d_int8(model, image, mask, margin=float("inf")), reference)
    empty = np.zeros(image.shape, bool)
    report = Int8Report(5, 5)
    assert not segment_dense3d_int8(model, image, empty, report=report).any() and report == Int8Report()


def test_the_family_labels_in_int8_and_gives_float32_probabilities(volume, monkeypatch):
    import brainseg.families.wachinger2018 as family

    image, mask, coordinates = volume
    cfg = DeepNATConfig(num_classes=5, tasks=7, coordinates="both", widths=(4, 8, 8), fc_widths=(32, 16))
    network = WACHINGER2018.build_network(cfg).eval()
    inputs = DeepNATInputs(np.pad(image, ((11, 12),) * 3, constant_values=-0.3), coordinates, -0.3)
    calls = []
    monkeypatch.setattr(
        family, "segment_dense3d_int8", lambda *a, **k: calls.append(k) or segment_dense3d_int8(*a, **k)
    )
    labels, none = WACHINGER2018.predict(network, inputs, mask)
    assert none is None and len(calls) == 1 and calls[0]["background"] == -0.3
    exact, probabilities = WACHINGER2018.predict(network, inputs, mask, probabilities=True)
    assert len(calls) == 1 and probabilities is not None  # probabilities: the float32 pass
    assert (labels[mask] == exact[mask]).mean() > 0.99
