"""Tests of DeepNAT (Wachinger et al. 2018): shapes, task offsets, parameter counts, initialisation, Eq. 3."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainseg.models.wachinger2018 import (
    PAPER_PARAMETER_COUNTS,
    PATCH_CENTRE,
    PATCH_PADDING,
    PATCH_SIZE,
    DeepNAT,
    DeepNATCascade,
    average_task_probabilities,
    paper_parameter_count,
    task_offsets,
)

SMALL = dict(widths=(4, 8, 8), fc_widths=(16, 16))  # same layer layout, fast on CPU


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- task offsets ---------------------------------------------------------------------------------


def test_task_offsets():
    assert task_offsets(1).tolist() == [[0, 0, 0]]
    seven = task_offsets(7)
    assert seven.dtype == np.int64
    assert seven.tolist() == [[0, 0, 0], [-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]]
    full = task_offsets(27)
    assert full[0].tolist() == [0, 0, 0]
    assert sorted(map(tuple, full.tolist())) == sorted(itertools.product((-1, 0, 1), repeat=3))
    assert full[1:].tolist() == sorted(full[1:].tolist())  # lexicographic after the centre


@pytest.mark.parametrize("tasks", [0, 2, 6, 26])
def test_task_offsets_rejects_other_counts(tasks):
    with pytest.raises(ValueError, match="tasks"):
        task_offsets(tasks)


# --- shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [1, 7, 27])
@pytest.mark.parametrize("coordinates", [0, 3, 6])
def test_forward_shape(tasks, coordinates):
    torch.manual_seed(0)
    model = DeepNAT(5, tasks=tasks, coordinates=coordinates, **SMALL).eval()
    coords = torch.randn(4, coordinates) if coordinates else None
    with torch.no_grad():
        out = model(torch.randn(4, 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), coords)
    assert out.shape == (4, tasks, 5)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.offsets.shape == (tasks, 3)


def test_forward_shape_paper_widths():
    model = DeepNAT(25).eval()  # 7 tasks, 6 coordinates
    with torch.no_grad():
        out = model(torch.randn(2, 1, 24, 24, 24), torch.randn(2, 6))
    assert out.shape == (2, 7, 25)


def test_layer_shapes():
    # Paper Table 1 with a 24^3 patch: 24 -> 18 (conv 7) -> 9 (pool 2, full windows) -> 5 (conv 5) -> 3 (conv 3).
    model = DeepNAT(25).eval()
    x = torch.randn(2, 1, 24, 24, 24)
    with torch.no_grad():
        x = F.relu(model.conv1(x))
        assert x.shape == (2, 32, 18, 18, 18)
        x = F.max_pool3d(x, 2, stride=2)
        assert x.shape == (2, 32, 9, 9, 9)
        x = F.relu(model.norm2(model.conv2(x)))
        assert x.shape == (2, 64, 5, 5, 5)
        x = F.relu(model.norm3(model.conv3(x)))
        assert x.shape == (2, 64, 3, 3, 3)
        assert model.features(torch.randn(2, 1, 24, 24, 24)).shape == (2, 64 * 27) == (2, 1728)
    assert (PATCH_SIZE, PATCH_CENTRE, PATCH_PADDING) == (24, 11, (11, 12))


def test_receptive_field_is_the_whole_patch():
    # Every pooling window holds two conv1 outputs, so the last input index (23) along each axis is read:
    # changing a far-corner voxel changes the features.
    torch.manual_seed(0)
    model = DeepNAT(5, **SMALL).eval()
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        base = model.features(x)
        for index in [(23, 11, 11), (11, 23, 11), (11, 11, 23), (23, 23, 23), (0, 0, 0)]:
            y = x.clone()
            y[(0, 0) + index] += 100.0
            assert not torch.allclose(model.features(y), base), index


# --- parameter counts -------------------------------------------------------------------------------


def _paper_arithmetic(num_classes: int, tasks: int, coordinates: int) -> int:
    conv1 = 7**3 * 1 * 32  # 10,976
    conv2 = 5**3 * 32 * 64  # 256,000
    conv3 = 3**3 * 64 * 64  # 110,592
    fc1 = (3**3 * 64) * 1024  # 1,728 x 1,024 = 1,769,472
    fc2 = (1024 + coordinates) * 512  # 527,360 with the 6 coordinates
    heads = 512 * num_classes * tasks  # 12,800 per task for 25 classes
    return conv1 + conv2 + conv3 + fc1 + fc2 + heads


@pytest.mark.parametrize("tasks", [1, 7])
def test_paper_parameter_count(tasks):
    # Paper Table 2: 2,687,200 weights for one task with 25 outputs, 2,764,000 with 7 heads,
    # biases and batch normalisation excluded. They match only if the 6 coordinates enter fc2.
    assert _paper_arithmetic(25, tasks, 6) == PAPER_PARAMETER_COUNTS[tasks]
    assert paper_parameter_count(DeepNAT(25, tasks=tasks, coordinates=6)) == PAPER_PARAMETER_COUNTS[tasks]
    assert PAPER_PARAMETER_COUNTS == {1: 2_687_200, 7: 2_764_000}


def test_paper_parameter_count_of_the_cascade_counts_both_networks():
    # network 2 is the paper's 25-output network; network 1 the same with 2 outputs (512 x 2 per head)
    cascade = DeepNATCascade(26, tasks=7, coordinates=6)
    assert paper_parameter_count(cascade.structures) == PAPER_PARAMETER_COUNTS[7]
    assert paper_parameter_count(cascade) == PAPER_PARAMETER_COUNTS[7] + _paper_arithmetic(2, 7, 6) == 5_445_568


def test_paper_parameter_count_without_coordinates_does_not_match():
    assert _paper_arithmetic(25, 1, 0) == 2_684_128 == paper_parameter_count(DeepNAT(25, tasks=1, coordinates=0))
    assert _paper_arithmetic(25, 1, 0) != PAPER_PARAMETER_COUNTS[1]


def test_full_parameter_count():
    model = DeepNAT(25, tasks=7, coordinates=6)
    biases = 32 + 1024 + 7 * 25  # conv1, fc1, heads (conv2, conv3, fc2 feed batch norm: no bias)
    batch_norm = 2 * (64 + 64 + 512)  # scale and shift
    expected = 2_764_000 + biases + batch_norm
    assert expected == 2_766_511
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


# --- initialisation ---------------------------------------------------------------------------------


def test_xavier_initialisation():
    torch.manual_seed(0)
    model = DeepNAT(25)
    for layer, fan_in, fan_out in [
        (model.conv2, 32 * 125, 64 * 125),
        (model.conv3, 64 * 27, 64 * 27),
        (model.fc1, 1728, 1024),
        (model.fc2, 1030, 512),
    ]:
        expected = (2.0 / (fan_in + fan_out)) ** 0.5  # Glorot uniform: std = sqrt(2 / (fan_in + fan_out))
        std = layer.weight.std().item()
        assert abs(std / expected - 1) < 0.03, (layer, std, expected)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max().item() <= bound
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm3d)):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1, 24, 24), (2, 2, 24, 24, 24), (2, 1, 23, 23, 23), (2, 1, 24, 24, 23)])
def test_wrong_patch_shape(shape):
    with pytest.raises(ValueError, match="expected patches"):
        DeepNAT(5, coordinates=0, **SMALL)(torch.randn(*shape))


def test_coordinate_errors():
    model = DeepNAT(5, coordinates=3, **SMALL).eval()
    x = torch.randn(2, 1, 24, 24, 24)
    with pytest.raises(ValueError, match="needs coordinates"):
        model(x)
    with pytest.raises(ValueError, match="coordinates of shape"):
        model(x, torch.randn(2, 6))
    plain = DeepNAT(5, coordinates=0, **SMALL).eval()
    with pytest.raises(ValueError, match="takes no coordinates"):
        plain(x, torch.randn(2, 3))
    with torch.no_grad():
        assert torch.equal(plain(x, torch.zeros(2, 0)), plain(x))  # K = 0 channels are no coordinates


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=5, tasks=6), "tasks"),
        (dict(num_classes=5, coordinates=-1), "coordinates"),
        (dict(num_classes=5, widths=(4, 8)), "widths"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepNAT(**kwargs)


# --- training ---------------------------------------------------------------------------------------


def test_one_batch_training_lowers_the_summed_task_loss():
    # Section 2.3: the training loss is the sum of the per-task cross entropies, equal weights.
    torch.manual_seed(0)
    model = DeepNAT(4, tasks=7, coordinates=3, **SMALL, dropout=0.0)
    patches, coords = torch.randn(8, 1, 24, 24, 24), torch.randn(8, 3)
    labels = torch.randint(0, 4, (8, 7))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        logits = model(patches, coords)  # (N, T, C)
        loss = F.cross_entropy(logits.permute(0, 2, 1), labels, reduction="none").mean(0).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- Eq. 3 ------------------------------------------------------------------------------------------


def _constant_heads(shape, values):
    # (T, 1, D, H, W): head t outputs the constant values[t] everywhere (a single "class").
    return np.stack([np.full((1,) + shape, v, np.float32) for v in values])


def test_average_task_probabilities_by_hand_along_w():
    # 1 x 1 x 5 volume, 7 heads. The +-D and +-H heads point outside the volume from every voxel.
    # Centre 0.1; the -W head (offset (0, 0, -1)) 0.4; the +W head 1.0.
    offsets = task_offsets(7)
    probs = _constant_heads((1, 1, 5), [0.1, 0.7, 0.7, 0.7, 0.7, 0.4, 1.0])
    out = average_task_probabilities(probs, offsets, np.ones((1, 1, 5), bool))
    # x = 0: centre and -W (from x = 1); x = 1..3: all three; x = 4: centre and +W (from x = 3).
    np.testing.assert_allclose(out.ravel(), [0.25, 0.5, 0.5, 0.5, 0.55], rtol=1e-6)
    assert out.shape == (1, 1, 1, 5) and out.dtype == np.float32

    # Voxel x = 2 invalid: its three predictions (for x = 1, 2, 3) are dropped.
    valid = np.ones((1, 1, 5), bool)
    valid[0, 0, 2] = False
    out = average_task_probabilities(probs, offsets, valid)
    # x = 0: (0.1 + 0.4) / 2; x = 1: (0.1 + 1.0) / 2; x = 2: (0.4 + 1.0) / 2; x = 3: (0.1 + 0.4) / 2; x = 4: (0.1 + 1.0) / 2.
    np.testing.assert_allclose(out.ravel(), [0.25, 0.55, 0.7, 0.25, 0.55], rtol=1e-6)


def test_average_task_probabilities_shift_direction_along_d():
    # 4 x 1 x 1 volume: head +D (offset (1, 0, 0)) at source z outputs 10 z, so it predicts 10 z for z + 1;
    # head -D at source z outputs z, a prediction for z - 1; the centre outputs 0; the other heads fall outside.
    offsets = task_offsets(7)
    z = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    probs = np.stack([0 * z, z, 10 * z, 0 * z, 0 * z, 0 * z, 0 * z])  # (7, 1, 4, 1, 1)
    out = average_task_probabilities(probs, offsets, np.ones((4, 1, 1), bool)).ravel()
    # z = 0: centre 0, -D from z = 1 -> 1; z = 1: 0, 2, +D from z = 0 -> 0; z = 2: 0, 3, 10; z = 3: 0, +D from 2 -> 20.
    np.testing.assert_allclose(out, [1 / 2, 2 / 3, 13 / 3, 20 / 2], rtol=1e-6)


def test_average_task_probabilities_torch_and_identity():
    rng = np.random.default_rng(0)
    probs = rng.random((27, 3, 4, 5, 6)).astype(np.float32)
    valid = rng.random((4, 5, 6)) > 0.3
    out_np = average_task_probabilities(probs, task_offsets(27), valid)
    out_t = average_task_probabilities(torch.from_numpy(probs), task_offsets(27), torch.from_numpy(valid))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-6)
    # Every head equal to the same map of probabilities that is constant in space: averaging changes nothing
    # wherever a head points.
    same = np.broadcast_to(np.array([0.2, 0.3, 0.5], np.float32)[None, :, None, None, None], probs.shape)
    out = average_task_probabilities(np.ascontiguousarray(same), task_offsets(27), valid)
    reached = out.sum(axis=0) > 0
    np.testing.assert_allclose(out[:, reached], np.array([[0.2], [0.3], [0.5]]) * np.ones(reached.sum()), rtol=1e-6)
    assert (out[:, ~reached] == 0).all()


def test_average_task_probabilities_shape_errors():
    with pytest.raises(ValueError, match="expected per_task_probs"):
        average_task_probabilities(np.zeros((7, 2, 3, 3, 3)), task_offsets(1), np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="expected per_task_probs"):
        average_task_probabilities(np.zeros((1, 2, 3, 3, 3)), task_offsets(1), np.ones((3, 3), bool))
