"""The int8 head of dense inference: its arithmetic, and labels equal to float32's where it is sure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.inference.dense import predict_dense
from brainseg.inference.dense_network import DenseBaseNet
from brainseg.inference.int8 import Int8Linear, Int8Report
from brainseg.models.ganaye2018 import BaseNet
from brainseg.sampling.patches import build_stack


def test_int8_linear_is_exact_on_its_grid():
    # x rows whose values are whole multiples of max/127, weights whose rows likewise: nothing to round
    x = torch.tensor([[127.0, 0.0, 63.0, 1.0], [0.0, 0.0, 0.0, 0.0], [5.0, 127.0, 127.0, 0.0]]) * 0.25
    w = torch.tensor([[127.0, -127.0, 3.0, 0.0], [-2.0, 64.0, -127.0, 100.0]]) * 0.01
    b = torch.tensor([0.5, -1.0])
    layer = Int8Linear(w, b)
    torch.testing.assert_close(layer(x), x @ w.T + b, rtol=0, atol=1e-5)
    assert layer.weight_t.dtype == torch.int8 and layer.weight_t.shape == (4, 2)


def test_int8_linear_error_is_within_the_rounding_bound(rng):
    x = torch.from_numpy(np.maximum(rng.standard_normal((300, 96)), 0).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((40, 96)).astype(np.float32) * 0.1)
    b = torch.from_numpy(rng.standard_normal(40).astype(np.float32))
    error = (Int8Linear(w, b)(x) - (x @ w.T + b)).abs()
    # |x w - x' w'| <= |x| dw + |w| dx + dx dw, with dx <= s_x / 2 and dw <= s_w / 2 (one scale per row)
    dx = (x.amax(1) / 127 / 2)[:, None, None]
    dw = (w.abs().amax(1) / 127 / 2)[None, :, None]
    bound = (x[:, None, :] * dw + w.abs()[None] * dx + dx * dw).sum(-1)
    assert (error <= bound + 1e-5).all()
    assert error.max() > 1e-4  # it does round: the check is not vacuous
    assert error.max() < 0.05 * (x @ w.T).abs().max()


@pytest.fixture
def net() -> DenseBaseNet:
    torch.manual_seed(0)
    model = BaseNet(num_classes=9, branch_widths=(4, 8), mix_channels=8, fc_widths=(32, 16)).eval()
    with torch.no_grad():
        model.out.weight.mul_(20.0)  # logits a few units apart, so that margins vary
    return DenseBaseNet(model)


def _inputs(rng, n: int = 400) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal((n, 9, 8)).astype(np.float32))


def test_classes_recompute_exactly_the_doubtful_voxels(net, rng):
    mixed = _inputs(rng)
    bias = torch.from_numpy(rng.standard_normal(9).astype(np.float32))
    exact = (net.head(mixed.clone(), {}) + bias).argmax(1)
    everything, recomputed = net.classes(mixed.clone(), {}, bias, margin=float("inf"))
    assert recomputed == len(mixed)
    torch.testing.assert_close(everything, exact, rtol=0, atol=0)
    int8_logits = net._fully_connected(net._cells(mixed.clone()), {}, int8=True) + bias
    top = int8_logits.topk(2, dim=1).values
    for margin in (0.0, 0.5, 2.0):
        labels, recomputed = net.classes(mixed.clone(), {}, bias, margin)
        doubt = (top[:, 0] - top[:, 1]) < margin
        assert recomputed == int(doubt.sum())
        torch.testing.assert_close(labels[doubt], exact[doubt], rtol=0, atol=0)
        torch.testing.assert_close(labels[~doubt], int8_logits.argmax(1)[~doubt], rtol=0, atol=0)
    assert 0 < int(((top[:, 0] - top[:, 1]) < 2.0).sum()) < len(mixed)  # margins vary: not vacuous


def test_sure_voxels_keep_the_float32_label(net, rng):
    # A voxel the int8 head keeps (margin >= m) has float32's label whenever int8 moved no logit by m / 2.
    mixed = _inputs(rng, 2000)
    exact_logits = net.head(mixed.clone(), {})
    int8_logits = net._fully_connected(net._cells(mixed.clone()), {}, int8=True)
    moved = (int8_logits - exact_logits).abs().amax(1)
    margin = 0.5
    labels, _ = net.classes(mixed.clone(), {}, torch.zeros(9), margin)
    safe = moved < margin / 2
    assert safe.float().mean() > 0.9
    torch.testing.assert_close(labels[safe], exact_logits.argmax(1)[safe], rtol=0, atol=0)


@pytest.mark.parametrize("fc_widths", [(16, 16), (16,)])  # with one hidden layer the output layer is int8's second
def test_predict_dense_labels_int8_and_float32(rng, fc_widths):
    torch.manual_seed(1)
    model = BaseNet(num_classes=7, branch_widths=(4, 8), mix_channels=8, fc_widths=fc_widths).eval()
    with torch.no_grad():
        model.out.weight.mul_(30.0)
    image = rng.standard_normal((6, 13, 17)).astype(np.float32)
    mask = rng.random(image.shape) < 0.6
    stack = build_stack(image, "coronal", (1, 2, 3), background=-0.7)
    float32, probs = predict_dense(model, stack, mask, probabilities=True, probability_dtype=np.float32)
    exact, _ = predict_dense(model, stack, mask, int8_margin=None)
    np.testing.assert_array_equal(exact, float32)
    np.testing.assert_array_equal(exact[mask], probs[:, mask].argmax(0))
    report = Int8Report(voxels=-1, recomputed=-1)
    always, _ = predict_dense(model, stack, mask, int8_margin=float("inf"), int8_report=report)
    np.testing.assert_array_equal(always, exact)
    assert report == Int8Report(voxels=int(mask.sum()), recomputed=int(mask.sum()))  # every voxel recomputed
    fast, _ = predict_dense(model, stack, mask, int8_report=report)  # the default margin
    assert (fast[mask] == exact[mask]).mean() > 0.99
    assert report.voxels == mask.sum() and 0 <= report.recomputed < report.voxels
    predict_dense(model, stack, mask, int8_margin=None, int8_report=report)
    assert report == Int8Report()  # float32 throughout: nothing labelled by the int8 head
    predict_dense(model, stack, mask, probabilities=True, int8_report=report)
    assert report == Int8Report() and DenseBaseNet(model, int8=False).int8 is None  # probabilities: float32
    assert not fast[~mask].any()


def test_without_an_int8_product_labels_stay_float32(rng, monkeypatch):
    import brainseg.inference.dense_network as dense_network

    assert dense_network.int8_available()  # torch 2.13 on x86-64 has it: the fast path is what the other tests test
    monkeypatch.setattr(dense_network, "int8_available", lambda: False)
    torch.manual_seed(2)
    model = BaseNet(num_classes=5, branch_widths=(4, 8), mix_channels=8, fc_widths=(16, 16)).eval()
    with torch.no_grad():
        model.out.weight.mul_(30.0)
    assert dense_network.DenseBaseNet(model).int8 is None
    image = rng.standard_normal((5, 11, 9)).astype(np.float32)
    mask = rng.random(image.shape) < 0.7
    stack = build_stack(image, "axial", (1, 2, 3), background=-0.7)
    labels, _ = predict_dense(model, stack, mask)
    _, probs = predict_dense(model, stack, mask, probabilities=True, probability_dtype=np.float32)
    np.testing.assert_array_equal(labels[mask], probs[:, mask].argmax(0))
