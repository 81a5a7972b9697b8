"""The network of de Brébisson and Montana (2015): sizes, shared first layers, the noise layer, pathway subsets."""

from __future__ import annotations

import pytest
import torch

from brainseg.models.brebisson2015 import (
    PAPER_PARAMETER_COUNT,
    PATHWAYS,
    BrebissonNet,
    GaussianNoise,
    paper_parameter_count,
)

SMALL = dict(widths_2d=(4, 6), fc_3d=(16, 8), fc=(32, 16), num_classes=7, num_centroids=5)


def _inputs(net: BrebissonNet, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p, q = net.patch_2d, net.patch_3d
    shapes = {
        "patch_2d": (1, p, p),
        "orthogonal": (3, p, p),
        "compressed": (3, p, p),
        "patch_3d": (1, q, q, q),
        "coordinates": (3,),
        "centroids": (net.num_centroids,),
    }
    return {name: torch.randn((batch, *shapes[name]), generator=g) for name in net.pathways}


def test_the_papers_network_has_the_papers_parameter_count():
    net = BrebissonNet()
    assert paper_parameter_count(net) == PAPER_PARAMETER_COUNT == 30_565_555
    # the module holds the four repeated first layers (5 x 5 x 20 + 20 each) once
    assert sum(p.numel() for p in net.parameters()) == PAPER_PARAMETER_COUNT - 4 * 520
    assert net.num_merged == 6 * 800 + 1000 + 134 == 5934
    with torch.no_grad():
        assert net.eval()(**_inputs(net, batch=2)).shape == (2, 135)


def test_first_layers_are_shared_within_a_kind_only():
    net = BrebissonNet(**SMALL)
    orthogonal, compressed = net.orthogonal, net.compressed
    assert orthogonal[0].first is orthogonal[1].first is orthogonal[2].first
    assert compressed[0].first is compressed[2].first and compressed[0].first is not orthogonal[0].first
    assert orthogonal[0].second is not orthogonal[1].second
    # the state dict holds each shared layer once (safetensors refuses tensors that share memory)
    keys = set(net.state_dict())
    assert {"orthogonal_first.weight", "compressed_first.bias"} <= keys
    assert not any(".first." in k for k in keys if k.startswith(("orthogonal.", "compressed.")))
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save as save_bytes

    again = BrebissonNet(**SMALL)
    again.load_state_dict(load_bytes(save_bytes(net.state_dict())))
    assert torch.equal(again.orthogonal[2].first.weight, net.orthogonal_first.weight)
    # every patch of a kind trains its shared first layer
    for k in range(3):
        net.zero_grad()
        inputs = _inputs(net)
        inputs["orthogonal"] = torch.zeros_like(inputs["orthogonal"])
        inputs["orthogonal"][:, k] = torch.randn(4, 29, 29)
        net.train()(**inputs).sum().backward()
        assert orthogonal[0].first.weight.grad.abs().sum() > 0


def test_pooling_drops_the_patch_s_last_row_and_column():
    net = BrebissonNet(pathways=("patch_2d",), **SMALL).eval()
    x = _inputs(net)["patch_2d"]
    changed = x.clone()
    changed[..., 28, :] += 5.0
    changed[..., :, 28] -= 5.0
    with torch.no_grad():
        assert torch.equal(net.single(x), net.single(changed))
        changed[..., 27, 3] += 5.0
        assert not torch.equal(net.single(x), net.single(changed))


def test_noise_only_in_training():
    noise = GaussianNoise(0.2)
    x = torch.zeros(10000)
    assert torch.equal(noise.eval()(x), x)
    noisy = noise.train()(x)
    assert abs(float(noisy.std()) - 0.2) < 0.01 and abs(float(noisy.mean())) < 0.01
    assert torch.equal(GaussianNoise(0.0).train()(x), x)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-1.0)
    net = BrebissonNet(pathways=("centroids",), **SMALL)
    inputs = _inputs(net)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(**inputs), net(**inputs))
        net.train()
        assert not torch.equal(net(**inputs), net(**inputs))


@pytest.mark.parametrize(
    "pathways",
    [(p,) for p in PATHWAYS] + [("orthogonal", "compressed"), ("orthogonal", "compressed", "patch_3d", "centroids")],
)
def test_every_pathway_subset_of_table_1(pathways):
    net = BrebissonNet(pathways=pathways, **SMALL).eval()
    assert net.pathways == tuple(p for p in PATHWAYS if p in pathways)
    inputs = _inputs(net, batch=3)
    with torch.no_grad():
        logits = net(**inputs)
        assert logits.shape == (3, 7)
        for name in pathways:  # every input is read
            other = dict(inputs, **{name: inputs[name] + 1.0})
            assert not torch.allclose(net(**other), logits), name


def test_input_errors():
    net = BrebissonNet(pathways=("orthogonal", "centroids"), **SMALL)
    inputs = _inputs(net)
    with pytest.raises(ValueError, match="'centroids' is missing"):
        net(orthogonal=inputs["orthogonal"])
    with pytest.raises(ValueError, match=r"expected orthogonal of shape \(B, 3, 29, 29\)"):
        net(orthogonal=inputs["orthogonal"][:, :2], centroids=inputs["centroids"])
    with pytest.raises(ValueError, match="pathways must be"):
        BrebissonNet(pathways=("segnet",))
    with pytest.raises(ValueError, match="pathways must be"):
        BrebissonNet(pathways=())
    with pytest.raises(ValueError, match="leaves no features"):
        BrebissonNet(patch_2d=13)
