"""Tests of MixNet (Chen & Merhof 2018): unit shapes, pyramid bins, receptive field, stream wiring, counts, a step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.models import count_parameters
from brainseg.models.chen2018 import (
    PARAMETER_COUNTS,
    DilateResUnit,
    InitUnit,
    MixNet,
    OutputUnit,
    PyramidPooling,
    receptive_field,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(filters=2, units_per_level=(1, 1, 1, 1, 1))  # Table 1's levels and dilations, narrow and shallow


def tiny(version: int, modalities: int, **kwargs) -> MixNet:
    torch.manual_seed(0)
    return MixNet(version, in_channels=modalities, num_classes=3, **{**TINY, **kwargs})


# --- units --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "pooled"), [((37, 45), (19, 23)), ((36, 44), (18, 22)), ((1, 3), (1, 2))])
def test_init_unit_shapes(size, pooled):
    x = torch.randn(2, 3, *size)
    assert InitUnit(3, 5, pool=True)(x).shape == (2, 5, *pooled)  # rounds up: an odd last row is pooled alone
    assert InitUnit(3, 5, pool=False)(x).shape == (2, 5, *size)


@pytest.mark.parametrize("dilation", [1, 2, 8])
def test_dilate_res_unit_shapes_and_shortcut(dilation):
    x = torch.randn(2, 6, 37, 45)
    projected = DilateResUnit(6, 10, 4, dilation)
    assert projected(x).shape == (2, 10, 37, 45)
    identity = DilateResUnit(6, 6, 4, dilation)
    assert identity.project is None and projected.project is not None
    nn.init.zeros_(identity.expand.weight)  # residual branch off: the unit is the identity
    assert torch.equal(identity(x), x)
    assert count_parameters(DilateResUnit(24, 48, 24, dilation)) == 8_208  # U(24, 24, 48) of the docstring


@pytest.mark.parametrize("kwargs", [dict(dilation=0), dict(dilation=1, kernel_size=4)])
def test_dilate_res_unit_rejects(kwargs):
    with pytest.raises(ValueError):
        DilateResUnit(4, 4, 2, **kwargs)


def test_output_unit_upscales_only_when_needed():
    unit = OutputUnit(6, 4, bins=(2, 4, 6, 12), pyramid_filters=3)
    assert unit(torch.randn(2, 6, 19, 23), (37, 45)).shape == (2, 4, 37, 45)
    assert unit(torch.randn(2, 6, 37, 45), (37, 45)).shape == (2, 4, 37, 45)
    assert OutputUnit(6, 4, bins=())(torch.randn(1, 6, 5, 7), (5, 7)).shape == (1, 4, 5, 7)
    with pytest.raises(ValueError, match="half"):
        unit(torch.randn(2, 6, 18, 23), (37, 45))


def test_output_unit_upscaling_keeps_pixels_on_their_cells():
    unit = OutputUnit(1, 2, bins=())  # no pyramid; the 3 x 3 convolution passes the map to class 0
    nn.init.zeros_(unit.conv.weight)
    nn.init.zeros_(unit.conv.bias)
    with torch.no_grad():
        unit.conv.weight[0, 0, 1, 1] = 1.0  # class 0 = the upscaled map itself
    cells = torch.tensor([[1.0, 2.0, 3.0]]).reshape(1, 1, 1, 3)  # 5 pixels pooled into 3 cells (ceil)
    row = unit(cells, (1, 5))[0, 0, 0]
    # x2 then crop: pixel 2i samples cell i - 1/4, pixel 2i + 1 cell i + 1/4 (edges clamp)
    assert row.tolist() == pytest.approx([1.0, 1.25, 1.75, 2.25, 2.75])


# --- pyramid pooling ------------------------------------------------------------------------------------


def identity_pyramid(bins):
    pp = PyramidPooling(1, bins, filters=1)
    for conv in pp.convs:
        nn.init.ones_(conv.weight)  # 1 x 1 conv = identity; positive maps pass the ReLU
    return pp


def test_pyramid_two_by_two_bins_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    assert F.adaptive_avg_pool2d(x, 2)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    out = identity_pyramid((2,))(x)
    assert out.shape == (1, 2, 4, 4)
    assert torch.equal(out[:, :1], x)  # the input comes first
    # bilinear, half-pixel centres: pixel 1 of 4 samples cell coordinate 0.25 -> 0.75 a + 0.25 b
    assert out[0, 1, 0].tolist() == [2.5, 3.0, 4.0, 4.5]
    assert out[0, 1, :, 0].tolist() == [2.5, 4.5, 8.5, 10.5]
    assert out[0, 1, 1, 1].item() == pytest.approx(
        0.75 * (0.75 * 2.5 + 0.25 * 4.5) + 0.25 * (0.75 * 10.5 + 0.25 * 12.5)
    )


def test_pyramid_one_pixel_bins_and_global_bin():
    x = torch.rand(1, 1, 4, 4) + 0.1
    out = identity_pyramid((4, 1))(x)
    assert torch.allclose(out[:, 1:2], x)  # 4 x 4 bins of a 4 x 4 map: the map itself
    assert torch.allclose(out[:, 2:3], x.mean().expand(1, 1, 4, 4))  # one bin: the mean everywhere


@pytest.mark.parametrize("size", [(5, 5), (3, 7), (1, 1), (13, 11)])
def test_pyramid_bins_larger_than_map(size):
    pp = PyramidPooling(3, (2, 4, 6, 12), filters=2)
    assert pp(torch.randn(2, 3, *size)).shape == (2, 3 + 4 * 2, *size)


def test_pyramid_rejects_empty_bin():
    with pytest.raises(ValueError, match="bins"):
        PyramidPooling(3, (2, 0), filters=2)


# --- MixNet shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("modalities", [1, 3])
@pytest.mark.parametrize("pool", [True, False])
def test_forward_shape(version, modalities, pool):
    net = tiny(version, modalities, pool=pool).eval()
    with torch.no_grad():
        for size in [(37, 45), (16, 20), (5, 3)]:
            out = net(torch.randn(2, modalities, *size))
            assert out.shape == (2, 3, *size)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_feature_names_and_merged_channels():
    x = torch.randn(1, 3, 9, 11)
    expected = {
        1: ["init"] + [f"level{k}" for k in range(1, 6)],
        2: [f"{n}/{s}" for s in range(3) for n in ("init", "level2", "level4")] + ["level1", "level3", "level5"],
        3: [f"{n}/{s}" for s in range(3) for n in ["init"] + [f"level{k}" for k in range(1, 6)]],
    }
    for version, names in expected.items():
        net = tiny(version, 3).eval()
        with torch.no_grad():
            feats = net.features(x)
        assert list(feats) == names
        assert all(f.shape[-2:] == (5, 6) for f in feats.values())
        assert sum(f.shape[1] for f in feats.values()) == net.merged_channels
    # v2, filters 2: streams 3 x (2 + 4 + 4), summaries 3 x 4
    assert tiny(2, 3).merged_channels == 42


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(version=4),
        dict(in_channels=0),
        dict(num_classes=1),
        dict(filters=0),
        dict(dilations=(2, 1)),
        dict(dilations=(), units_per_level=()),
        dict(units_per_level=(3, 0, 3, 2, 3)),
    ],
)
def test_mixnet_rejects(kwargs):
    with pytest.raises(ValueError):
        MixNet(**kwargs)


def test_forward_rejects_wrong_modalities():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(3, 3)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError):
        tiny(1, 1)(torch.randn(1, 8, 8))


# --- receptive field -----------------------------------------------------------------------------------


def test_receptive_field_by_hand():
    # no pooling: conv 5 (5) + units 2 x (2*3 + 1*2 + 4*3 + 1*2 + 8*3) = 92 + output conv 2
    assert receptive_field(pool=False) == 5 + 92 + 2
    # pooling: 5 + 1, units on a 2-pixel grid 2 x 92, upscaling 2, output conv 2
    assert receptive_field() == 6 + 184 + 2 + 2
    assert receptive_field((1,), (1,), pool=False, kernel_size=5) == 5 + 4 + 2
    with pytest.raises(ValueError):
        receptive_field((1, 2), (1,))


def positive_weights(net: MixNet) -> MixNet:
    """Constant positive weights (mean-preserving), zero biases: every path carries a nonzero gradient."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net.double().eval()


def gradient_extent(net: MixNet, size: int) -> tuple[int, int]:
    """Rows and columns spanned by the nonzero gradient of the central output pixel w.r.t. the input."""
    c = size // 2
    i = torch.arange(size, dtype=torch.float64)
    # a V-shaped ramp: each max-pool window's maximum lies on its side away from the centre,
    # so the gradient reaches the far pixel of the outermost windows
    ramp = 1.0 + (i[:, None] - c).abs() + (i[None, :] - c).abs()
    x = ramp.expand(1, net.in_channels, size, size).clone().requires_grad_(True)
    net(x)[0, 0, c, c].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize(
    ("version", "modalities", "pool", "units", "size"),
    [
        (1, 1, False, (3, 2, 3, 2, 3), 120),  # 99
        (3, 2, False, (3, 2, 3, 2, 3), 120),  # 99
        (2, 2, True, (3, 2, 3, 2, 3), 220),  # 194, the paper's setting
        (2, 3, True, (1, 1, 1, 1, 1), 120),  # 74
    ],
)
def test_receptive_field_matches_gradient_support(version, modalities, pool, units, size):
    net = positive_weights(MixNet(version, modalities, 2, pool=pool, filters=2, units_per_level=units, pyramid_bins=()))
    expected = receptive_field(units_per_level=units, pool=pool)
    assert expected < size - 8  # the field stays inside the slice: the support is not clipped
    assert gradient_extent(net, size) == (expected, expected)


def test_pyramid_pooling_extends_the_field():
    # no pooling, 1 unit per level: the convolutions see receptive_field(...) = 39 pixels of the 80 x 80 slice
    net = positive_weights(MixNet(1, 1, 2, pool=False, filters=2, units_per_level=(1, 1, 1, 1, 1), pyramid_bins=(2,)))
    assert receptive_field(units_per_level=(1, 1, 1, 1, 1), pool=False) == 39
    x = torch.rand(1, 1, 80, 80, dtype=torch.float64, requires_grad=True)
    net(x)[0, 0, 40, 40].backward()
    assert (x.grad != 0).all()  # a central pixel interpolates all four 2 x 2 bins: the whole slice
    x.grad = None
    net(x)[0, 0, 2, 2].backward()
    # a corner pixel reads only the top-left bin: merged rows and columns 0-39, each seeing 18 input pixels
    # further (the 37-pixel field of the convolutions before the 3 x 3 output convolution)
    support = x.grad[0, 0] != 0
    assert support[:58, :58].all()
    assert not support[58:].any() and not support[:, 58:].any()


# --- stream wiring ---------------------------------------------------------------------------------------


def changed_features(version: int, modality: int) -> set[str]:
    net = tiny(version, 3).eval()
    x = torch.randn(2, 3, 12, 14)
    y = x.clone()
    y[:, modality] = 0.0  # zero one modality's slice
    with torch.no_grad():
        a, b = net.features(x), net.features(y)
    return {name for name in a if not torch.equal(a[name], b[name])}


def test_v3_streams_independent_until_output_unit():
    assert changed_features(3, 2) == {f"{n}/2" for n in ["init"] + [f"level{k}" for k in range(1, 6)]}
    assert changed_features(3, 0) == {f"{n}/0" for n in ["init"] + [f"level{k}" for k in range(1, 6)]}


def test_v3_gradient_of_a_stream_ignores_other_modalities():
    net = tiny(3, 3).eval()
    x = torch.randn(1, 3, 12, 14, requires_grad=True)
    net.features(x)["level5/0"].sum().backward()
    assert x.grad[:, 0].abs().sum() > 0
    assert torch.equal(x.grad[:, 1:], torch.zeros_like(x.grad[:, 1:]))


def test_v2_summaries_feed_back_into_streams():
    changed = changed_features(2, 2)
    assert {"level1", "level3", "level5"} <= changed  # the summaries read every stream
    assert {"level2/0", "level4/0", "level2/1", "level4/1"} <= changed  # other streams change after a summary
    assert "init/0" not in changed and "init/1" not in changed  # InitUnits are per modality


def test_v1_mixes_modalities_from_the_start():
    assert "init" in changed_features(1, 2)


# --- parameter counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "modalities"), sorted(PARAMETER_COUNTS))
def test_parameter_counts_of_paper_settings(version, modalities):
    net = MixNet(version, in_channels=modalities, num_classes=11)
    assert count_parameters(net) == PARAMETER_COUNTS[(version, modalities)]


def test_parameter_counts_by_hand():
    assert PARAMETER_COUNTS[(1, 3)] == 5_472 + 73_008 + 12 * 67_968 + 4 * 792 * 72 + 9_721 * 11
    assert PARAMETER_COUNTS[(2, 3)] == 1_872 + 208_944 + 2 * 203_904 + 3 * 19_440 + 3 * 21_216 + 48_384 + 5_401 * 11
    assert PARAMETER_COUNTS[(3, 3)] == 3 * (624 + 8_208 + 12 * 7_680) + 76_032 + 7_993 * 11
    # the authors' released v3 checkpoint (3 modalities, 9 classes) holds 450,945 trainable variables
    assert count_parameters(MixNet(3, in_channels=3, num_classes=9)) == 450_945


# --- training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_one_sgd_step_lowers_cross_entropy(version):
    torch.manual_seed(1)
    net = tiny(version, 2).train()
    x = torch.randn(2, 2, 16, 18)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()  # classes 0..2
    opt = torch.optim.SGD(net.parameters(), lr=0.003)
    before = F.cross_entropy(net(x), target)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(net(x), target)
    assert after < before


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("pool", [True, False])
def test_logits_at_pixels_equal_the_whole_slices_logits(version, pool):
    # dense inference runs the last 3 x 3 convolution around brain pixels only: the corners, edges (where the
    # convolution's zero padding enters) and a pixel in every slice must all agree
    torch.manual_seed(version)
    net = MixNet(version, in_channels=2, num_classes=5, pool=pool, filters=4).eval()
    x = torch.randn(3, 2, 15, 12)
    with torch.no_grad():
        whole = net(x).permute(0, 2, 3, 1).reshape(-1, 5)
        corners = torch.tensor([0, 11, 14 * 12, 15 * 12 - 1, 15 * 12, 2 * 15 * 12 + 7, 3 * 15 * 12 - 1])
        pixels = torch.cat([corners, torch.randperm(3 * 15 * 12, generator=torch.Generator().manual_seed(0))[:200]])
        at = net.logits_at(x, pixels)
        assert at.shape == (len(pixels), 5)
        torch.testing.assert_close(at, whole[pixels], atol=1e-4, rtol=1e-5)
        # channels-last, and every pixel once
        merged = torch.cat(list(net.features(x).values()), dim=1).contiguous(memory_format=torch.channels_last)
        every = net.output.logits_at(merged, (15, 12), torch.arange(3 * 15 * 12))
        torch.testing.assert_close(every, whole, atol=1e-4, rtol=1e-5)
        # pixels away from every edge: the box is cropped, the convolution must still see their neighbours
        inner = torch.tensor([15 * 12 + 5 * 12 + 4, 15 * 12 + 9 * 12 + 7, 2 * 15 * 12 + 6 * 12 + 6])
        torch.testing.assert_close(net.logits_at(x, inner), whole[inner], atol=1e-4, rtol=1e-5)
        assert net.logits_at(x, torch.zeros(0, dtype=torch.int64)).shape == (0, 5)
    assert whole.abs().max() > 1  # logits large enough for the tolerance to mean something
