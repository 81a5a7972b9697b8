"""Chen and Merhof (2018) as a family: config, cropped inputs, slice sampler, per-plane loss, multi-view inference.

Training, segmenting, evaluating and describing a tiny MixNet through the CLI at the end of this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainseg.config import Config, MixNetConfig, TrainingConfig, _build, config_to_dict, load_config, save_config
from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.families.chen2018 import CHEN2018, MARGIN, PLANE_AXIS, MixNetInputs, MixNetViews, SliceSampler
from brainseg.inference.dense_mixnet import predict_mixnet, view_probabilities
from brainseg.models import count_parameters
from brainseg.models.chen2018 import MixNet
from brainseg.sampling.orthogonal import ORTHOGONAL_PLANES

SHAPE = (19, 23, 17)  # non-cubic
BACKGROUND = -1.0
PLANES = ("sagittal", "coronal", "axial")


def _case():
    """An image whose value names its voxel (1 + flat index), an off-centre ellipsoid mask, 3 classes."""
    image = (1 + np.arange(np.prod(SHAPE))).reshape(SHAPE).astype(np.float32)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    centre, radii = (8, 12, 9), (6, 8, 5)
    mask = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) < 1
    classes = np.where(mask, np.where(grids[0] < 8, 1, 2), 0).astype(np.uint8)
    return image, mask, classes


def _voxel(value: float) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(value) - 1, SHAPE))


def _views(shared=False, weights=(), planes=PLANES, seed=0) -> MixNetViews:
    torch.manual_seed(seed)
    return MixNetViews(planes, version=2, num_classes=3, filters=4, shared=shared, weights=weights)


# -- configuration ------------------------------------------------------------------------------


def test_config_parses_by_model_name_and_round_trips(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "model:\n  name: mixnet\n  planes: [axial, coronal]\n  view_weights: [4, 1]\n  filters: 4\n  crop: 16\n"
    )
    config = load_config(path)
    cfg = config.model
    assert isinstance(cfg, MixNetConfig) and family_of(cfg) is CHEN2018
    assert cfg.planes == ("axial", "coronal") and cfg.view_weights == (4, 1) and cfg.fusion_weights == (0.8, 0.2)
    assert (cfg.version, cfg.filters, cfg.pool, cfg.shared_views, cfg.crop) == (2, 4, True, False, 16)
    assert not cfg.needs_reference and cfg.batch_norm and cfg.dropout == 0.0
    assert MixNetConfig().planes == PLANES and MixNetConfig().fusion_weights == (1 / 3,) * 3
    again = config_to_dict(config)["model"]
    assert again["planes"] == ["axial", "coronal"] and "dropout" not in again and "batch_norm" not in again
    save_config(config, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"version": 4}, "version must be 1, 2 or 3"),
        ({"filters": -1}, "filters must be an integer >= 1, or 0"),
        ({"pool": "yes"}, "pool must be true or false"),
        ({"shared_views": 1}, "shared_views must be true or false"),
        ({"planes": ["axial", "axial"]}, "planes must be distinct names"),
        ({"planes": ["transverse"]}, "planes must be distinct names"),
        ({"planes": []}, "planes must be distinct names"),
        ({"view_weights": [1, 4]}, "view_weights needs one number >= 0 per plane"),
        ({"view_weights": [0, 0, 0]}, "view_weights needs one number >= 0 per plane"),
        ({"view_weights": [1, -1, 4]}, "view_weights needs one number >= 0 per plane"),
        ({"crop": 4}, "crop must be a number of pixels >= 8"),
        ({"num_classes": 1}, "num_classes must be 0"),
        ({"reference_space": "no"}, "reference_space must be true or false"),
    ],
)
def test_config_refuses_bad_values_naming_the_setting(values, message):
    with pytest.raises(InputError, match=message):
        _build(MixNetConfig, {"name": "mixnet", **values}, "x.yaml: model")


# -- inputs and sampler ---------------------------------------------------------------------------


def test_inputs_are_the_brain_box_plus_the_margin_padded_with_background():
    image, mask, _ = _case()
    inputs = MixNetInputs.of(image, mask, BACKGROUND)
    low = np.argwhere(mask).min(axis=0)
    high = np.argwhere(mask).max(axis=0) + 1
    np.testing.assert_array_equal(inputs.origin, low - MARGIN)
    assert inputs.image.shape == (1, *(high - low + 2 * MARGIN)) and inputs.shape == SHAPE
    assert inputs.image[0, MARGIN, MARGIN, MARGIN] == image[tuple(low)]
    assert inputs.image[0, 0, 0, 0] == BACKGROUND  # (low - 8) starts outside the volume
    np.testing.assert_array_equal(inputs.crop(mask, False).sum(), mask.sum())
    with pytest.raises(InputError, match="mask is empty"):
        CHEN2018.case_inputs(MixNetConfig(), image, np.zeros(SHAPE, bool), np.eye(4), BACKGROUND, None)


def test_sampler_crops_hold_the_plane_the_image_and_the_targets_where_the_conventions_say():
    image, mask, classes = _case()
    inputs = MixNetInputs.of(image, mask, BACKGROUND)
    sampler = SliceSampler(inputs, classes, mask, PLANES, 16)
    batch, targets = sampler.draw(60, np.random.default_rng(3), TrainingConfig())
    assert batch["slices"].shape == (60, 1, 16, 16) and batch["slices"].dtype == np.float32
    assert batch["plane"].dtype == np.int64 and targets.shape == (60, 16, 16)
    assert set(batch["plane"].tolist()) == {0, 1, 2}
    box_low = np.argwhere(mask).min(axis=0) - MARGIN
    box_high = np.argwhere(mask).max(axis=0) + 1 + MARGIN
    for crop, plane, target in zip(batch["slices"][:, 0], batch["plane"], targets):
        assert (target >= 0).any()  # the window holds a brain voxel
        i0, j0 = np.argwhere(crop != BACKGROUND)[0]
        anchor = np.array(_voxel(crop[i0, j0]))
        rows, cols = ORTHOGONAL_PLANES[PLANES[plane]]
        for k, line in enumerate(crop):
            for l_, value in enumerate(line):
                voxel = anchor.copy()
                voxel[rows] += k - i0  # sagittal (y, z), coronal (x, z), axial (x, y)
                voxel[cols] += l_ - j0
                in_box = ((voxel >= box_low) & (voxel < box_high)).all()
                in_image = ((voxel >= 0) & (voxel < SHAPE)).all()
                expected = image[tuple(voxel)] if in_box and in_image else BACKGROUND
                assert value == expected
                expected_target = classes[tuple(voxel)] if in_image and mask[tuple(voxel)] else -1
                assert target[k, l_] == expected_target


def test_sampler_crops_by_hand_around_a_one_voxel_brain():
    image, _, _ = _case()
    mask = np.zeros(SHAPE, bool)
    mask[5, 7, 9] = True
    classes = (2 * mask).astype(np.uint8)
    inputs = MixNetInputs.of(image, mask, BACKGROUND)
    # pixel (u + k, v + l) of a window whose (u, v) is the voxel: sagittal image[5, 7 + k, 9 + l],
    # coronal image[5 + k, 7, 9 + l], axial image[5 + k, 7 + l, 9]; here k, l = 1, 2
    by_hand = {"sagittal": image[5, 8, 11], "coronal": image[6, 7, 11], "axial": image[6, 9, 9]}
    for plane in PLANES:
        sampler = SliceSampler(inputs, classes, mask, (plane,), 8)
        batch, targets = sampler.draw(20, np.random.default_rng(0), TrainingConfig())
        assert (batch["plane"] == 0).all() and (targets >= 0).sum() == 20
        checked = 0
        for crop, target in zip(batch["slices"][:, 0], targets):
            ((u, v),) = np.argwhere(target >= 0)  # the brain voxel, at a random offset in the window
            assert target[u, v] == 2 and crop[u, v] == image[5, 7, 9]
            if u + 1 < 8 and v + 2 < 8:
                assert crop[u + 1, v + 2] == by_hand[plane]
                checked += 1
        assert checked > 0


def test_sampler_augments_refuses_other_sampling_and_gives_the_brains_frequencies():
    image, mask, classes = _case()
    sampler = SliceSampler(MixNetInputs.of(image, mask, BACKGROUND), classes, mask, PLANES, 16)
    batch, targets = sampler.draw(4, np.random.default_rng(0), TrainingConfig(augment=True))
    assert batch["slices"].shape == (4, 1, 16, 16) and targets.shape == (4, 16, 16) and targets.dtype == np.int16
    with pytest.raises(InputError, match="training.sampling must be 'uniform'"):
        sampler.draw(2, np.random.default_rng(0), TrainingConfig(sampling="balanced"))
    with pytest.raises(InputError, match="training.sampling must be 'uniform'"):
        sampler.class_frequencies(3, "mixed")
    counts = np.bincount(classes[mask], minlength=4)
    np.testing.assert_allclose(sampler.class_frequencies(4, "uniform"), counts / counts.sum())


# -- networks and loss ----------------------------------------------------------------------------


def test_networks_per_plane_or_shared():
    views = _views()
    assert sorted(views.nets) == sorted(PLANES) and views.view_weights == (1 / 3,) * 3
    assert views.for_plane("coronal") is views.nets["coronal"] and views.for_plane(2) is views.nets["axial"]
    assert views.for_plane(np.int64(0)) is views.nets["sagittal"]  # a NumPy index was taken for a name
    shared = _views(shared=True, weights=(1, 1, 4))
    assert list(shared.nets) == ["shared"] and shared.view_weights == (1 / 6, 1 / 6, 4 / 6)
    assert {id(shared.for_plane(p)) for p in PLANES} == {id(shared.nets["shared"])}
    single = MixNet(2, in_channels=1, num_classes=3, filters=4)
    assert count_parameters(shared) == count_parameters(single) and count_parameters(views) == 3 * count_parameters(
        single
    )
    cfg = MixNetConfig(num_classes=3, filters=4, planes=("axial",), shared_views=False)
    built = CHEN2018.build_network(cfg)
    assert isinstance(built, MixNetViews) and list(built.nets) == ["axial"] and built.nets["axial"].filters == 4
    with pytest.raises(ValueError, match="no network for plane"):
        built.for_plane("sagittal")


def test_loss_routes_each_planes_slices_to_its_network():
    views = _views().train()
    rng = np.random.default_rng(0)
    slices = torch.from_numpy(rng.standard_normal((3, 1, 16, 16)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(-1, 3, size=(3, 16, 16)))
    # one plane: gradients only in that plane's network
    batch = {"slices": slices, "plane": torch.tensor([1, 1, 1])}
    loss = CHEN2018.loss(views, batch, targets, TrainingConfig())
    expected = F.cross_entropy(views.nets["coronal"](slices), targets, ignore_index=-1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    for plane in PLANES:
        grads = [p.grad for p in views.nets[plane].parameters()]
        if plane == "coronal":
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)
    # mixed planes: each network sees its own slices as one batch (its batch norm's), rows stay in order
    plane = torch.tensor([2, 0, 2])
    out = views(slices, plane)
    torch.testing.assert_close(out[[0, 2]], views.nets["axial"](slices[[0, 2]]))
    torch.testing.assert_close(out[[1]], views.nets["sagittal"](slices[[1]]))
    # a shared network reads every slice
    shared = _views(shared=True).train()
    torch.testing.assert_close(shared(slices, plane), shared.nets["shared"](slices))


def test_bfloat16_loss_has_finite_gradients_close_to_float32s_at_the_papers_width():
    """Under bfloat16 autocast, channels-last CPU kernels of torch 2.13 gave NaN weight gradients for the
    dilated convolutions (dilation 4 and 8) of a 24-filter MixNet on 64² crops; the loss must not use them."""
    import copy

    torch.manual_seed(0)
    views = MixNetViews(["axial"], version=2, num_classes=3, shared=True).train()  # F = 24, the paper's width
    rng = np.random.default_rng(2)
    slices = torch.from_numpy(rng.standard_normal((2, 1, 64, 64)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 3, size=(2, 64, 64)))
    batch = {"slices": slices, "plane": "axial"}
    grads = {}
    for precision in ("float32", "bfloat16"):
        network = copy.deepcopy(views)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            CHEN2018.loss(network, batch, targets, TrainingConfig()).backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in network.parameters()])
    assert torch.isfinite(grads["bfloat16"]).all()
    error = (grads["bfloat16"] - grads["float32"]).norm() / grads["float32"].norm()
    assert error < 0.15, error  # bfloat16 keeps 8 bits of mantissa: 6 % on this small batch


# -- multi-view inference -------------------------------------------------------------------------


def _by_hand(views: MixNetViews, inputs: MixNetInputs, bias: np.ndarray) -> dict[str, np.ndarray]:
    """Each plane's softmax on the crop's grid, slice by slice, one slice per pass."""
    out = {}
    for plane in views.planes:
        axis = PLANE_AXIS[plane]
        volume = np.moveaxis(inputs.image[0], axis, 0)
        probs = []
        for s in range(volume.shape[0]):
            x = volume[s]
            a, b = x.shape
            x = np.pad(x, ((0, a % 2), (0, b % 2)), constant_values=BACKGROUND)
            with torch.no_grad():
                logits = views.for_plane(plane)(torch.from_numpy(x)[None, None])[0, :, :a, :b]
            probs.append(torch.softmax(logits + torch.from_numpy(bias)[:, None, None], 0).numpy())
        out[plane] = np.moveaxis(np.stack(probs, axis=1), 1, 1 + axis)  # (C, D', H', W')
    return out


@pytest.mark.parametrize("shared", [False, True])
def test_predict_is_the_views_slice_by_slice_fused_by_the_weights(shared, float32_mixnet):
    rng = np.random.default_rng(1)
    _, mask, _ = _case()
    image = np.where(mask, rng.standard_normal(SHAPE), BACKGROUND).astype(np.float32)
    inputs = CHEN2018.case_inputs(MixNetConfig(), image, mask, np.eye(4), BACKGROUND, None)
    assert any(n % 2 for n in inputs.image.shape[1:])  # an odd side: padded, then cropped back
    views = _views(shared=shared, weights=(1, 2, 5)).eval()
    bias = np.array([0.3, -0.2, 0.1], np.float32)
    classes, probs = CHEN2018.predict(
        views, inputs, mask, probabilities=True, probability_dtype=np.float32, logit_bias=bias
    )
    hand = _by_hand(views, inputs, bias)
    inside = inputs.crop(mask, False)
    fused = sum(w / 8 * hand[p][:, inside] for p, w in zip(PLANES, (1, 2, 5)))
    np.testing.assert_allclose(probs[:, mask], fused, atol=1e-5)
    np.testing.assert_array_equal(classes[mask], fused.argmax(axis=0))
    assert (classes[~mask] == 0).all() and (probs[0, ~mask] == 1).all() and (probs[1:, ~mask] == 0).all()
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
    one = view_probabilities(views, inputs, mask, "coronal", logit_bias=bias, slice_batch=3)
    np.testing.assert_allclose(one, hand["coronal"][:, inside], atol=1e-5)
    # other weights at call time; a zero weight leaves that view out
    classes, _ = predict_mixnet(views, inputs, mask, weights=(0, 0, 1), logit_bias=bias)
    np.testing.assert_array_equal(classes[mask], hand["axial"][:, inside].argmax(axis=0))
    with pytest.raises(ValueError, match="call network.eval"):
        predict_mixnet(views.train(), inputs, mask)


def test_labels_name_the_version_views_and_fusion():
    def config(**model):
        return Config(MixNetConfig(num_classes=3, **model), TrainingConfig())

    assert CHEN2018.row_label(config()) == "MixNetv2, 3 views (sagittal, coronal, axial) fused 1:1:1"
    assert (
        CHEN2018.row_label(config(shared_views=True, view_weights=(1, 1, 4), version=3))
        == "MixNetv3, 3 views (sagittal, coronal, axial) fused 1:1:4, one network for all views"
    )
    assert CHEN2018.row_label(config(planes=("axial",))) == "MixNetv2, 1 view (axial)"
    text = CHEN2018.describe(config(filters=4, crop=16, pool=False))
    assert text.startswith("MixNetv2, 3 views") and "F = 4" in text and "no pooling" in text
    assert "16 x 16 crops" in text and "no augmentation" in text
    augmented = Config(MixNetConfig(num_classes=3), TrainingConfig(augment=True))
    assert "one of elastic, scale, 45-degree rotation, translation or left-right flip per crop" in CHEN2018.describe(
        augmented
    )


# -- through the command line ---------------------------------------------------------------------


def test_mixnet_trains_segments_evaluates_and_is_described(tmp_path, tiny_manifest, train_tiny_mixnet, capsys):
    import csv

    import nibabel as nib

    from brainseg.cli.main import main
    from brainseg.model_folder import load_model_folder

    model_dir = train_tiny_mixnet()
    model = load_model_folder(model_dir)
    assert isinstance(model.config.model, MixNetConfig) and model.config.model.num_classes == 3
    assert isinstance(model.network, MixNetViews) and sorted(model.network.nets) == sorted(PLANES)
    card = (model_dir / "model_card.md").read_text()
    assert "Chen and Merhof (2018) MixNetv2, 3 views (sagittal, coronal, axial) fused 1:1:1" in card
    assert " slice crops, batch " in card and " patches, batch " not in card  # what an epoch counts

    image = tmp_path / "data" / "c_SS.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(model_dir), "--no-progress"]) == 0
    written = nib.load(tmp_path / "seg" / "c_SS_seg.nii.gz")
    assert written.shape == nib.load(image).shape and set(np.unique(np.asarray(written.dataobj))) <= {0, 4, 11}
    scores = tmp_path / "scores.csv"
    argv = ["evaluate", str(tmp_path / "seg" / "c_SS_seg.nii.gz"), str(tmp_path / "data" / "c_glm.nii.gz")]
    assert main([*argv, "--model", str(model_dir), "--no-distances", "-o", str(scores)]) == 0
    with open(scores) as f:
        mean = next(r for r in csv.DictReader(f) if r["case_id"] == "mean")
    assert float(mean["dice"]) > 0.75  # the two structures differ in intensity and position
    capsys.readouterr()
    assert main(["info", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "network: mixnet: MixNetv2, 3 views (sagittal, coronal, axial) fused 1:1:1" in out
    assert f"parameters: {count_parameters(model.network):,} (the paper gives none" in out
    # the sampling prior's strength, through the shared predictor (the logit bias reaches every view)
    assert main(["calibrate", str(model_dir), "--strengths", "0,1", "--no-progress", "--no-card"]) == 0


def test_channels_last_inference_equals_the_default_memory_format(monkeypatch, float32_mixnet):
    from brainseg.inference import dense_mixnet

    _, mask, _ = _case()
    image = np.where(mask, np.random.default_rng(2).standard_normal(SHAPE), BACKGROUND).astype(np.float32)
    inputs = CHEN2018.case_inputs(MixNetConfig(), image, mask, np.eye(4), BACKGROUND, None)
    views = _views(weights=(1, 1, 2)).eval()
    fast = predict_mixnet(views, inputs, mask, probabilities=True, probability_dtype=np.float32)[1]
    monkeypatch.setattr(dense_mixnet, "CHANNELS_LAST", False)
    plain = predict_mixnet(views, inputs, mask, probabilities=True, probability_dtype=np.float32)[1]
    assert np.abs(fast - plain).max() <= 1e-5 and fast[:, mask].std() > 0.01
    assert all(p.is_contiguous() for p in views.parameters())  # the caller's network keeps its format


def test_bfloat16_inference_is_float32_to_bfloat16_precision(monkeypatch):
    from brainseg.inference import dense_mixnet

    _, mask, _ = _case()
    image = np.where(mask, np.random.default_rng(3).standard_normal(SHAPE), BACKGROUND).astype(np.float32)
    inputs = CHEN2018.case_inputs(MixNetConfig(), image, mask, np.eye(4), BACKGROUND, None)
    views = _views(weights=(1, 1, 2)).eval()
    monkeypatch.setattr(dense_mixnet, "BFLOAT16", False)
    exact = predict_mixnet(views, inputs, mask, probabilities=True, probability_dtype=np.float32)[1][:, mask]
    monkeypatch.setattr(dense_mixnet, "BFLOAT16", True)
    classes, approx = predict_mixnet(views, inputs, mask, probabilities=True, probability_dtype=np.float32)
    error = np.abs(approx[:, mask] - exact)
    assert 1e-4 < error.max() < 0.06  # it ran in bfloat16 (not float32), to bfloat16's precision
    top = np.sort(exact, axis=0)
    clear = top[-1] - top[-2] > 0.12  # twice the error bound: these labels cannot change
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(classes[mask][clear], exact.argmax(axis=0)[clear])
    assert all(p.dtype == torch.float32 for p in views.parameters())  # the caller's network is untouched


def test_bfloat16_copy_keeps_the_image_and_the_init_unit_in_float32():
    from brainseg.inference import dense_mixnet

    net = _views().for_plane("axial").eval()
    fast = dense_mixnet._inference_copy(net, True)
    assert (
        fast.levels[0][0][0].dilated.weight.dtype == torch.bfloat16 and fast.output.conv.weight.dtype == torch.bfloat16
    )
    x = 100 + 3 * torch.randn(2, 1, 10, 12, generator=torch.Generator().manual_seed(0))  # bfloat16 steps: 0.5
    seen = []
    fast.inits[0].unit.conv.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, m.weight.dtype)))
    with torch.no_grad():
        out = fast.inits[0](x)
        assert seen == [(torch.float32, torch.float32)] and out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), net.inits[0](x), rtol=2**-8, atol=1e-4)
    assert dense_mixnet._use_bfloat16(torch.device("meta")) is False  # CPU only


def test_bfloat16_is_used_where_torch_reports_native_products(monkeypatch):
    from brainseg.inference.bfloat16 import bfloat16_available

    probe = bfloat16_available.__wrapped__
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert probe() is False  # probes missing: float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert probe() is True

    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    assert probe() is False
