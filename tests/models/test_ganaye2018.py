"""Tests of BaseNet (Ganaye et al. 2018): shapes, parameter count, one-batch training."""

from __future__ import annotations

import pytest
import torch

from brainseg.models import count_parameters
from brainseg.models.ganaye2018 import PATCH_SIZE, BaseNet, ConvBranch


def test_forward_shape():
    torch.manual_seed(0)
    model = BaseNet().eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, PATCH_SIZE, PATCH_SIZE))
    assert out.shape == (4, 135)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_branch_shapes():
    branch = ConvBranch((32, 64))
    assert branch(torch.randn(2, 1, 25, 25)).shape == (2, 64, 3, 3)
    # Dense mode: (H - 13 s, W - 13 s) for dilation s.
    assert branch(torch.randn(1, 1, 40, 50), dilation=2).shape == (1, 64, 40 - 26, 50 - 26)


@pytest.mark.parametrize("shape", [(4, 2, 25, 25), (4, 4, 25, 25), (3, 25, 25), (4, 3, 25, 25, 1)])
def test_wrong_input_shape(shape):
    with pytest.raises(ValueError, match="expected patches"):
        BaseNet()(torch.randn(*shape))


def test_too_few_classes():
    with pytest.raises(ValueError, match="num_classes"):
        BaseNet(num_classes=1)


def test_parameter_count_by_hand():
    # One branch (3 x 3 kernels, weights + biases):
    conv1 = 1 * 32 * 9 + 32  # 320
    conv2 = 32 * 64 * 9 + 64  # 18,496
    conv3 = 64 * 64 * 9 + 64  # 36,928
    branch = conv1 + conv2 + conv3  # 55,744
    mix = (3 * 64) * 64 + 64  # 1 x 1 convolution over the 3 concatenated branches: 12,352
    fc1 = (64 * 3 * 3) * 512 + 512  # 295,424
    fc2 = 512 * 256 + 256  # 131,328
    fc3 = 256 * 135 + 135  # 34,695
    expected = 3 * branch + mix + fc1 + fc2 + fc3
    assert expected == 641_031
    assert count_parameters(BaseNet()) == expected


def test_parameter_count_with_batch_norm():
    # Each BatchNorm2d adds a scale and a shift per channel: (32 + 64 + 64) * 2 per branch.
    assert count_parameters(BaseNet(batch_norm=True)) == 641_031 + 3 * (32 + 64 + 64) * 2


def test_training_loss_falls():
    torch.manual_seed(0)
    # Narrow widths keep it fast; batch normalisation as in configs/basenet_miccai2012.yaml.
    model = BaseNet(
        num_classes=5, branch_widths=(8, 16), mix_channels=16, fc_widths=(64, 32), dropout=0.0, batch_norm=True
    )
    patches = torch.randn(32, 3, PATCH_SIZE, PATCH_SIZE)
    targets = torch.randint(0, 5, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_fn(model(patches), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]
