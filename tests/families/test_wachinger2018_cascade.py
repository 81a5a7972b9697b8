"""DeepNAT's hierarchy (section 2.2), the paper's capped pools and the jitter (section 3), down to the CLI."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from network_helpers import randomise_batch_norm

from brainseg.cli.main import main
from brainseg.config import DeepNATConfig, TrainingConfig
from brainseg.families.wachinger2018 import WACHINGER2018, cascade_loss
from brainseg.inference.dense3d import extract_patches3d, predict_patches3d
from brainseg.model_folder import load_model_folder
from brainseg.models import build_model
from brainseg.models.wachinger2018 import DeepNATCascade, average_task_probabilities, cascade_log_probabilities
from brainseg.sampling.patches3d import (
    IGNORE,
    DeepNATCascadeSampler,
    DeepNATSampler,
    jitter_centres,
    structure_targets,
    task_targets,
)
from brainseg.training.batches import draw_batch

TINY = dict(widths=(4, 4, 4), fc_widths=(16, 8), dropout=0.0)


def _ellipsoid(shape=(14, 16, 12)) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g**2 for g in grids) < 0.8


# -- combination and loss -----------------------------------------------------------------------


def test_cascade_combination_by_hand():
    # P1(bg) = 0.2: the structures share 0.8 in network 2's proportions 0.5 / 0.3 / 0.2 -> 0.4 / 0.24 / 0.16
    foreground = torch.log(torch.tensor([[[0.2, 0.8], [0.9, 0.1]]]))  # (N=1, T=2, 2)
    structures = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])) + 3.0  # logits: any shift
    combined = cascade_log_probabilities(foreground, structures).exp()
    assert combined.shape == (1, 2, 4)
    np.testing.assert_allclose(combined[0, 0].numpy(), [0.2, 0.4, 0.24, 0.16], atol=1e-6)
    np.testing.assert_allclose(combined[0, 1].numpy(), [0.9, 0.01, 0.01, 0.08], atol=1e-6)
    np.testing.assert_allclose(combined.sum(dim=2).numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="structure logits"):
        cascade_log_probabilities(foreground, structures[:, :1])


def test_cascade_network_holds_both_networks_and_combines_them():
    network = DeepNATCascade(5, tasks=7, coordinates=3, **TINY).eval()
    assert network.foreground.num_classes == 2 and network.structures.num_classes == 4
    patches, coordinates = torch.randn(3, 1, 24, 24, 24), torch.randn(3, 3)
    with torch.no_grad():
        out = network(patches, coordinates)
        expected = cascade_log_probabilities(
            network.foreground(patches, coordinates), network.structures(patches, coordinates)
        )
    assert out.shape == (3, 7, 5)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.exp().sum(dim=2), torch.ones(3, 7))
    with pytest.raises(ValueError, match="num_classes >= 3"):
        DeepNATCascade(2, **TINY)
    assert isinstance(build_model(DeepNATConfig(num_classes=5, **TINY)), DeepNATCascade)


def test_cascade_loss_masks_network2_heads_on_background_by_hand():
    # Network 1: P = (0.25, 0.75) everywhere, every target foreground: CE = ln(4/3) for each of its 3 heads.
    # Network 2: P = (0.25, 0.5, 0.25); CE = ln 2 for structure index 1, ln 4 for index 0.
    fg_logits = torch.log(torch.tensor([0.25, 0.75])).expand(2, 3, 2).clone().requires_grad_()
    st_logits = torch.log(torch.tensor([0.25, 0.5, 0.25])).expand(2, 3, 3).clone().requires_grad_()
    network = SimpleNamespace(foreground=lambda p, c: fg_logits, structures=lambda p, c: st_logits)
    targets = torch.tensor(
        [
            [[1, 1], [1, IGNORE], [1, IGNORE]],  # example 0 of each network
            [[1, 0], [1, 0], [1, IGNORE]],  # example 1
        ]
    )
    loss = cascade_loss(network, {"patches": None, "structure_patches": None}, targets)  # type: ignore[arg-type]
    # network 1: 3 heads x ln(4/3). network 2: head 0 mean(ln 2, ln 4); head 1 only example 1 (ln 4, not
    # averaged with the masked entry); head 2 masked everywhere adds 0.
    expected = 3 * math.log(4 / 3) + (math.log(2) + math.log(4)) / 2 + math.log(4)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(st_logits.grad).all() and (st_logits.grad[:, 2] == 0).all()  # masked head: no gradient
    with pytest.raises(ValueError, match=r"\(n, T, 2\)"):
        cascade_loss(network, {}, targets[..., 0])  # type: ignore[arg-type]


def test_structure_targets_mask_background_and_outside():
    classes = np.array([[[0, 1, 3]]], np.uint8)
    offsets = np.array([[0, 0, 0], [0, 0, -1], [0, 0, 1]])
    targets = structure_targets(classes, np.array([[0, 0, 1], [0, 0, 2]]), offsets)
    assert targets.dtype == np.int16
    assert targets.tolist() == [[0, IGNORE, 2], [2, 0, IGNORE]]  # background and outside the volume are masked


# -- dense inference ----------------------------------------------------------------------------


def _randomise_batch_norm(network: torch.nn.Module) -> None:
    randomise_batch_norm(network, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for member in (network.foreground, network.structures):
            for head in member.heads:
                head.weight.mul_(5.0)


def test_dense_cascade_equals_patch_by_patch_cascade_with_eq3(rng):
    mask = _ellipsoid((13, 15, 11))
    image = np.where(mask, rng.standard_normal(mask.shape), -1.3).astype(np.float32)
    cfg = DeepNATConfig(num_classes=4, tasks=7, coordinates="cartesian", **TINY)
    torch.manual_seed(0)
    network = build_model(cfg)
    _randomise_batch_norm(network)
    network.eval()
    inputs = WACHINGER2018.case_inputs(cfg, image, mask, np.eye(4), -1.3, None)
    bias = np.array([0.7, -1.0, 0.0, 1.5], np.float32)
    classes, probs = WACHINGER2018.predict(
        network, inputs, mask, probabilities=True, probability_dtype=np.float32, logit_bias=bias
    )
    assert probs.shape == (4,) + mask.shape and (classes[~mask] == 0).all()
    np.testing.assert_allclose(probs[:, mask].sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(classes, probs.argmax(axis=0))

    # the reference: each network's explicit 24^3 patches, combined by hand, biased, renormalised, then Eq. 3
    voxels = np.argwhere(mask)
    kwargs = dict(coordinates=inputs.coordinates, background=-1.3)
    p1 = predict_patches3d(network.foreground, image, voxels, **kwargs)  # (N, 7, 2)
    p2 = predict_patches3d(network.structures, image, voxels, **kwargs)  # (N, 7, 3)
    combined = np.concatenate([p1[:, :, :1], p1[:, :, 1:] * p2], axis=2) * np.exp(bias)
    combined /= combined.sum(axis=2, keepdims=True)
    maps = np.zeros((7, 4) + mask.shape, np.float32)
    maps[:, :, voxels[:, 0], voxels[:, 1], voxels[:, 2]] = combined.transpose(1, 2, 0)
    expected = average_task_probabilities(maps, network.offsets, mask)
    sampled = voxels[rng.choice(len(voxels), 80, replace=False)]
    at = (slice(None), sampled[:, 0], sampled[:, 1], sampled[:, 2])
    np.testing.assert_allclose(probs[at], expected[at], atol=1e-5, rtol=0)


# -- the capped pools ---------------------------------------------------------------------------


def _hand_case():
    """A 2 x 5 x 6 volume, all in the mask: background 10 voxels, classes 1, 2, 3: 30, 12 and 8."""
    classes = np.array([0] * 10 + [1] * 30 + [2] * 12 + [3] * 8, np.uint8).reshape(2, 5, 6)
    mask = np.ones(classes.shape, bool)
    cfg = DeepNATConfig(
        num_classes=4, tasks=7, coordinates="none", fg_bg_per_image=8, per_structure=5, double_classes=(1,), **TINY
    )
    inputs = WACHINGER2018.case_inputs(cfg, np.zeros(classes.shape, np.float32), mask, np.eye(4), 0.0, None)
    return cfg, inputs, classes, mask


def test_capped_pools_and_their_exact_class_frequencies_by_hand():
    cfg, inputs, classes, mask = _hand_case()
    sampler = WACHINGER2018.case_sampler(cfg, inputs, classes, mask)
    assert isinstance(sampler, DeepNATCascadeSampler)
    # network 1: min(10, 8) background and min(50, 8) foreground; network 2: min(30, 2 x 5), min(12, 5), min(8, 5)
    assert sampler.foreground.pool.tolist() == [8, 8]
    assert sampler.structures.pool.tolist() == [0, 10, 5, 5]
    # combined prior: q1(bg) = 1/2; q1(fg) q2(c) = 1/2 x (10, 5, 5) / 20
    np.testing.assert_allclose(sampler.class_frequencies(4, "deepnat"), [0.5, 0.25, 0.125, 0.125])
    np.testing.assert_allclose(sampler.class_frequencies(5, "uniform"), [10 / 60, 30 / 60, 12 / 60, 8 / 60, 0])
    np.testing.assert_allclose(sampler.class_frequencies(4, "balanced"), [0.5, 1 / 6, 1 / 6, 1 / 6])

    one_step = WACHINGER2018.case_sampler(replace(cfg, cascade=False), inputs, classes, mask)
    assert isinstance(one_step, DeepNATSampler)
    assert one_step.voxels.pool.tolist() == [8, 10, 5, 5]  # background capped by fg_bg_per_image
    np.testing.assert_allclose(one_step.class_frequencies(4, "deepnat"), np.array([8, 10, 5, 5]) / 28)


def test_pool_draws_match_the_class_frequencies(rng):
    cfg, inputs, classes, mask = _hand_case()
    sampler = WACHINGER2018.case_sampler(cfg, inputs, classes, mask)
    n = 40_000
    first = sampler.foreground.sample(n, rng, "deepnat")
    second = sampler.structures.sample(n, rng, "deepnat")
    q1 = np.bincount(classes[tuple(first.T)] > 0, minlength=2) / n
    q2 = np.bincount(classes[tuple(second.T)], minlength=4) / n
    assert q2[0] == 0  # network 2 never draws background
    empirical = np.concatenate([[q1[0]], q1[1] * q2[1:]])
    np.testing.assert_allclose(empirical, sampler.class_frequencies(4, "deepnat"), atol=0.01)
    # every voxel of a capped class takes part (the pool is redrawn per example): all 30 voxels of class 1
    assert len(np.unique(second[classes[tuple(second.T)] == 1], axis=0)) == 30

    # what draw() returns, and how the trainer stacks it over cases
    values, targets = sampler.draw(6, rng, TrainingConfig(sampling="deepnat"))
    assert set(values) == {"patches", "structure_patches"} and values["structure_patches"].shape == (6, 1, 24, 24, 24)
    assert targets.shape == (6, 7, 2) and targets.dtype == np.int16
    assert set(targets[..., 0].ravel()) <= {0, 1} and (targets[:, 0, 1] >= 0).all()  # network 2's centres: structures
    cases = [SimpleNamespace(sampler=sampler), SimpleNamespace(sampler=sampler)]
    batch, stacked = draw_batch(cases, 9, rng, TrainingConfig(sampling="deepnat"))
    assert stacked.shape == (9, 7, 2) and stacked.dtype == torch.int64 and (stacked[..., 1] >= IGNORE).all()
    assert batch["patches"].shape == batch["structure_patches"].shape == (9, 1, 24, 24, 24)


# -- jitter -------------------------------------------------------------------------------------


def test_jitter_moves_centres_by_at_most_one_voxel_within_the_region(rng):
    region = np.zeros((5, 6, 7), bool)
    region[1:4, 1:5, 1:6] = True
    voxels = np.argwhere(region)
    voxels = voxels[rng.integers(len(voxels), size=500)]
    moved = jitter_centres(voxels, rng, region)
    assert np.abs(moved - voxels).max() == 1
    assert region[tuple(moved.T)].all()  # never outside the region (or the volume)
    assert (moved != voxels).any(axis=1).mean() > 0.5


@pytest.mark.parametrize("cascade", [True, False])
def test_jittered_draw_keeps_the_targets_of_the_drawn_voxels(rng, cascade):
    mask = _ellipsoid((11, 12, 10))
    classes = np.where(mask, 1 + (np.indices(mask.shape)[0] > 5), 0).astype(np.uint8)
    classes[5, 6, 5] = 3
    image = rng.standard_normal(mask.shape).astype(np.float32)
    cfg = DeepNATConfig(num_classes=4, tasks=7, coordinates="cartesian", cascade=cascade, **TINY)
    inputs = WACHINGER2018.case_inputs(cfg, image, mask, np.eye(4), 0.0, None)
    sampler = WACHINGER2018.case_sampler(cfg, inputs, classes, mask)
    tc = TrainingConfig(sampling="mixed", augment=True)
    plain_values, plain_targets = sampler.draw(30, np.random.default_rng(5), TrainingConfig(sampling="mixed"))
    values, targets = sampler.draw(30, np.random.default_rng(5), tc)
    np.testing.assert_array_equal(targets, plain_targets)  # the targets stay those of the drawn voxels

    # the same stream by hand: the drawn voxels, then their jitter
    stream = np.random.default_rng(5)
    if cascade:
        drawn = [sampler.foreground.sample(30, stream, "mixed"), sampler.structures.sample(30, stream, "mixed")]
        np.testing.assert_array_equal(targets[..., 0], task_targets(classes > 0, drawn[0], sampler.offsets))
        np.testing.assert_array_equal(targets[..., 1], structure_targets(classes, drawn[1], sampler.offsets))
    else:
        drawn = [sampler.voxels.sample(30, stream, "mixed")]
        np.testing.assert_array_equal(targets, task_targets(classes, drawn[0], sampler.offsets))
    moved = [jitter_centres(v, stream, mask) for v in drawn]
    for prefix, v, c in zip(("", "structure_"), drawn, moved):
        assert np.abs(c - v).max() <= 1 and (c != v).any()
        np.testing.assert_array_equal(values[f"{prefix}patches"], extract_patches3d(image, c, background=0.0))
        np.testing.assert_array_equal(
            values[f"{prefix}coordinates"], inputs.coordinates[:, c[:, 0], c[:, 1], c[:, 2]].T
        )
        assert not np.array_equal(values[f"{prefix}patches"], plain_values[f"{prefix}patches"])


# -- end to end ---------------------------------------------------------------------------------


def test_cascade_trains_segments_and_evaluates(tmp_path, tiny_manifest):
    config = {
        "model": {
            "name": "deepnat",
            "widths": [4, 4, 4],
            "fc_widths": [16, 8],
            "dropout": 0.0,
            "tasks": 7,
            "coordinates": "cartesian",
            "fg_bg_per_image": 400,
            "per_structure": 200,
            "double_classes": [1],
        },
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 2,
            "samples_per_epoch": 768,
            "batch_size": 64,
            "learning_rate": 0.05,
            "sampling": "deepnat",
            "augment": True,
            "validate_every": 2,
            "num_threads": 1,
        },
    }
    (tmp_path / "deepnat.yaml").write_text(yaml.safe_dump(config))
    model_dir = tmp_path / "model"
    assert main(["train", str(tmp_path / "deepnat.yaml"), "-o", str(model_dir), "--no-progress"]) == 0
    model = load_model_folder(model_dir)
    assert model.config.model.cascade and isinstance(model.network, DeepNATCascade)
    assert model.network.num_classes == 3 and model.network.structures.num_classes == 2
    # the tiny brains are all structure: network 1's pool holds foreground only; network 2's 200 x 2 and 200
    np.testing.assert_allclose(model.prior.sampling[0], 0.0)
    np.testing.assert_allclose(model.prior.sampling[1:], [2 / 3, 1 / 3])
    card = (model_dir / "model_card.md").read_text()
    assert "DeepNAT (24^3 patches, 7 tasks, Cartesian coordinates, hierarchical), conv widths" in card
    assert "jitter of 1 voxel" in card

    image = tmp_path / "data" / "c_SS.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(model_dir), "--no-progress"]) == 0
    written = nib.load(tmp_path / "seg" / "c_SS_seg.nii.gz")
    assert written.shape == nib.load(image).shape
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 4, 11}
    scores = tmp_path / "scores.csv"
    argv = ["evaluate", str(tmp_path / "seg" / "c_SS_seg.nii.gz"), str(tmp_path / "data" / "c_glm.nii.gz")]
    assert main([*argv, "--model", str(model_dir), "--no-distances", "-o", str(scores)]) == 0
    with open(scores) as f:
        mean = next(r for r in csv.DictReader(f) if r["case_id"] == "mean")
    assert float(mean["dice"]) > 0.75
