"""Tests of BaseNet (Ganaye et al. 2018): shapes, parameter count, one-batch training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.models import count_parameters
from brainseg.models.ganaye2018 import PATCH_SIZE, BaseNet, ConvBranch


def test_forward_shape():
    torch.manual_seed(0)
    model = BaseNet(135).eval()
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
        BaseNet(135)(torch.randn(*shape))


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
    assert count_parameters(BaseNet(135)) == expected


def test_parameter_count_with_batch_norm():
    # Each BatchNorm2d adds a scale and a shift per channel: (32 + 64 + 64) * 2 per branch.
    assert count_parameters(BaseNet(135, batch_norm=True)) == 641_031 + 3 * (32 + 64 + 64) * 2


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


# --- spatial priors (paper sections 2.2-2.4, 3.3.1) ---------------------------------------------

from brainseg.models.ganaye2018 import ConvBranch3d, DistBranch, GanayeNet, ProbBranch  # noqa: E402


@pytest.mark.parametrize("representation", ["vector", "images", "volume"])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("rbf", [False, True])
def test_dist_branch_shapes(representation, conv, rbf):
    branch = DistBranch(7, representation, conv=conv, rbf=rbf, filters=4, width=32)
    out = branch(torch.rand(5, 343) * 150)
    assert out.shape == (5, 32) and (out >= 0).all()


def test_dist_branch_parameter_count_by_hand():
    # n images of n x n (channels = n = 7), kernels 1, 3, 5 with 4 filters each, then 3 * 4 * 49 -> 32.
    branch = DistBranch(7, "images", conv=True, filters=4, width=32)
    convs = sum(7 * 4 * k * k + 4 for k in (1, 3, 5))
    assert count_parameters(branch) == convs + (3 * 4 * 49) * 32 + 32
    assert count_parameters(DistBranch(7, conv=False, width=32)) == 343 * 32 + 32


def test_dist_branch_rbf_and_scaling():
    # With conv off the first layer sees exp(-0.01 d^2) (rbf) or d / 100 mm: check through a linear probe.
    d = torch.tensor([[10.0] * 8])
    for rbf, expected in ((True, float(np.exp(-1.0))), (False, 0.1)):
        branch = DistBranch(2, conv=False, rbf=rbf, width=1)
        with torch.no_grad():
            branch.fc.weight.fill_(1.0)
            branch.fc.bias.zero_()
        assert branch(d).item() == pytest.approx(8 * expected, rel=1e-6)


def test_dist_branch_errors():
    with pytest.raises(ValueError, match="representation"):
        DistBranch(7, "graph")
    with pytest.raises(ValueError, match="distances of shape"):
        DistBranch(3)(torch.rand(2, 26))


def test_prob_branch_three_layers_of_size_l():
    branch = ProbBranch(135)
    assert count_parameters(branch) == 3 * (135 * 135 + 135)
    assert branch(torch.softmax(torch.randn(4, 135), 1)).shape == (4, 135)


def test_branch_3d_patch_and_dense():
    torch.manual_seed(0)
    branch = ConvBranch3d((4, 8)).eval()
    assert branch(torch.randn(3, 1, 15, 15, 15)).shape == (3, 8)
    x = torch.randn(1, 1, 17, 19, 16)
    dense = branch(x, dense=True)
    assert dense.shape == (1, 8, 17 - 13, 19 - 13, 16 - 13)
    for q in [(0, 0, 0), (2, 4, 1), (1, 3, 0)]:
        patch = x[:, :, q[0] : q[0] + 15, q[1] : q[1] + 15, q[2] : q[2] + 15]
        torch.testing.assert_close(dense[0, :, q[0], q[1], q[2]], branch(patch)[0], atol=1e-5, rtol=0)


def _inputs(b=4, n=3, c=11):
    return dict(
        patches=torch.randn(b, 3, 25, 25),
        distances=torch.rand(b, n**3) * 100,
        atlas=torch.softmax(torch.randn(b, c), 1),
        patches_3d=torch.randn(b, 1, 15, 15, 15),
    )


def test_full_network_outputs_and_auxiliary():
    torch.manual_seed(0)
    model = GanayeNet(
        num_classes=11,
        branch_widths=(4, 8),
        mix_channels=8,
        fc_widths=(32, 16),
        dist_branch=DistBranch(3, filters=2, width=8),
        prob_branch=True,
        branch_3d_widths=(2, 4),
        auxiliary=True,
    )
    assert model.inputs == ("distances", "atlas", "patches_3d")
    logits, aux = model.forward_with_auxiliary(**_inputs())
    assert logits.shape == (4, 11) and set(aux) == {"base", "dist"}
    assert aux["base"].shape == (4, 11) and aux["dist"].shape == (4, 11)
    # The DistBranch enters the second fully connected layer; the 3dBranch the first.
    assert model.fc[0].in_features == 8 * 9 + 4 and model.fc[1].in_features == 32 + 8
    with pytest.raises(ValueError, match="needs the input 'atlas'"):
        model(**{**_inputs(), "atlas": None})


def test_prob_branch_is_added_to_logits():
    torch.manual_seed(0)
    with_prob = GanayeNet(
        num_classes=11, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), prob_branch=True
    ).eval()
    inputs = _inputs()
    base = with_prob.out(
        torch.relu(with_prob.fc[0](with_prob.mixed_features(with_prob.branch_features(inputs["patches"]))))
    )
    torch.testing.assert_close(
        with_prob(inputs["patches"], atlas=inputs["atlas"]), base + with_prob.prob_branch(inputs["atlas"])
    )
