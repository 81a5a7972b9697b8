"""DeepNAT (Wachinger et al. 2018) as a family, one-step variant: config, multi-task sampler and loss, dense predictor, CLI.

The hierarchy (cascade), the capped pools and the jitter are tested in ``test_wachinger2018_cascade.py``.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from network_helpers import randomise_batch_norm

from brainseg.cli.main import main
from brainseg.config import (
    Config,
    DeepNATConfig,
    ModelConfig,
    TrainingConfig,
    _build,
    config_to_dict,
    load_config,
    save_config,
)
from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.families.wachinger2018 import WACHINGER2018
from brainseg.inference.dense3d import extract_patches3d, predict_patches3d
from brainseg.model_folder import load_model_folder
from brainseg.models import build_model
from brainseg.models.wachinger2018 import DeepNAT, average_task_probabilities
from brainseg.sampling.patches3d import DeepNATSampler, task_targets
from brainseg.training.batches import draw_batch

TINY = dict(widths=(4, 4, 4), fc_widths=(16, 8), dropout=0.0)
# task_offsets(7) written out: the centre, then -D, +D, -H, +H, -W, +W
SEVEN = [(0, 0, 0), (-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]


def _ellipsoid(shape=(14, 16, 12)) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g**2 for g in grids) < 0.8


# -- configuration ------------------------------------------------------------------------------


def test_config_parses_by_model_name_and_round_trips(tmp_path):
    path = tmp_path / "deepnat.yaml"
    path.write_text(
        "model:\n  name: deepnat\n  tasks: 27\n  coordinates: spectral\n  widths: [4, 4, 4]\n  fc_widths: [16, 8]\n"
        "training:\n  epochs: 1\n"
    )
    config = load_config(path)
    assert isinstance(config.model, DeepNATConfig)
    assert config.model.tasks == 27 and config.model.coordinates == "spectral"
    assert config.model.widths == (4, 4, 4) and config.model.fc_widths == (16, 8)
    assert config.model.spectral_grid_mm == 2.0 and not config.model.needs_reference
    assert config.model.cascade and config.model.double_classes == ()  # the paper's hierarchy by default
    assert (config.model.fg_bg_per_image, config.model.per_structure) == (30_000, 3_000)
    assert config.model.batch_norm  # every model config has the attributes the shared code reads
    assert family_of(config.model) is WACHINGER2018
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml", model_folder=True) == config
    # Ganaye et al.'s names still read a ModelConfig
    (tmp_path / "basenet.yaml").write_text("model:\n  name: ganaye2018\n  landmarks: 7\n")
    assert isinstance(load_config(tmp_path / "basenet.yaml").model, ModelConfig)


@pytest.mark.parametrize(
    "setting, match",
    [
        ("plane: axial", r"unknown setting\(s\) \['plane'\]"),
        ("prob_branch: true", r"unknown setting\(s\) \['prob_branch'\]"),
        ("tasks: 5", "tasks must be 1, 7 or 27, got 5"),
        ("coordinates: polar", "coordinates must be"),
        ("spectral_grid_mm: 0", "spectral_grid_mm must be a positive"),
        ("widths: [4, 4]", "widths needs 3 values"),
        ("cascade: maybe", "cascade must be true or false"),
        ("per_structure: 0", "per_structure must be a positive number of voxels"),
        ("fg_bg_per_image: 1.5", "fg_bg_per_image must be a positive number of voxels"),
        ("double_classes: [0, 2]", r"double_classes \[0, 2\]: \[0\] are not structure class indices"),
        ("num_classes: 2", "the hierarchy needs at least 2 structures"),
    ],
)
def test_config_refuses_ganaye_settings_and_bad_values(tmp_path, setting, match):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model:\n  name: deepnat\n  {setting}\n")
    with pytest.raises(InputError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_an_older_brainseg_would_refuse_a_deepnat_folder():
    # Before DeepNATConfig every model section was read as a ModelConfig: DeepNAT's settings are unknown there.
    values = config_to_dict(Config(DeepNATConfig(num_classes=3)))["model"]
    with pytest.raises(InputError, match="unknown setting"):
        _build(ModelConfig, values, "config.yaml: model")


# -- sampler and loss -----------------------------------------------------------------------------


def test_task_targets_are_the_classes_of_the_shifted_voxels():
    classes = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)  # class = 30 d + 6 h + w
    voxels = np.array([[0, 2, 3], [3, 4, 5], [2, 0, 0]])
    targets = task_targets(classes, voxels, np.array(SEVEN))
    assert targets.shape == (3, 7) and targets.dtype == np.uint8
    # voxel (0, 2, 3): centre 15; -D outside -> 0; +D 45; -H 9; +H 21; -W 14; +W 16
    assert targets[0].tolist() == [15, 0, 45, 9, 21, 14, 16]
    # voxel (3, 4, 5), the far corner: +D, +H and +W lie outside
    assert targets[1].tolist() == [119, 89, 0, 113, 0, 118, 0]
    # voxel (2, 0, 0): -H and -W lie outside
    assert targets[2].tolist() == [60, 30, 90, 0, 66, 0, 61]


@pytest.mark.parametrize("mode", ["uniform", "balanced", "mixed", "deepnat"])
def test_sampler_draws_patches_coordinates_and_targets_of_the_same_voxels(rng, mode):
    shape = (7, 9, 8)
    classes = (np.arange(np.prod(shape)) % 5).astype(np.uint8).reshape(shape)
    mask = np.zeros(shape, bool)
    mask[1:6, 2:8, 1:7] = True
    classes[~mask] = 0
    image = rng.standard_normal(shape).astype(np.float32)
    cfg = DeepNATConfig(num_classes=5, tasks=7, coordinates="cartesian", cascade=False, per_structure=4, **TINY)
    inputs = WACHINGER2018.case_inputs(cfg, image, mask, np.eye(4), -2.5, None)
    sampler = WACHINGER2018.case_sampler(cfg, inputs, classes, mask)
    assert isinstance(sampler, DeepNATSampler)
    tc = TrainingConfig(sampling=mode)
    idx = sampler.voxels.sample(40, np.random.default_rng(3), mode)  # what draw() draws with the same stream
    values, targets = sampler.draw(40, np.random.default_rng(3), tc)
    assert values["patches"].shape == (40, 1, 24, 24, 24) and values["patches"].dtype == np.float32
    np.testing.assert_array_equal(values["patches"], extract_patches3d(image, idx, background=-2.5))
    assert values["coordinates"].shape == (40, 3) and values["coordinates"].dtype == np.float32
    np.testing.assert_array_equal(values["coordinates"], inputs.coordinates[:, idx[:, 0], idx[:, 1], idx[:, 2]].T)
    assert targets.shape == (40, 7)
    for i, v in enumerate(idx):
        for t, offset in enumerate(SEVEN):
            u = v + offset
            inside = ((u >= 0) & (u < shape)).all()
            assert targets[i, t] == (classes[tuple(u)] if inside else 0)
    # the trainer stacks (n, T) targets along the example axis
    cases = [SimpleNamespace(sampler=sampler), SimpleNamespace(sampler=sampler)]
    batch, stacked = draw_batch(cases, 25, np.random.default_rng(0), tc)
    assert stacked.shape == (25, 7) and stacked.dtype == torch.int64
    assert batch["patches"].shape == (25, 1, 24, 24, 24) and batch["coordinates"].shape == (25, 3)


def test_sampler_without_coordinates_and_refused_settings(rng):
    mask = _ellipsoid((9, 10, 8))
    classes = np.where(mask, 1, 0).astype(np.uint8)
    cfg = DeepNATConfig(num_classes=2, tasks=27, coordinates="none", cascade=False, **TINY)
    inputs = WACHINGER2018.case_inputs(
        cfg, rng.standard_normal(mask.shape).astype(np.float32), mask, np.eye(4), 0, None
    )
    sampler = WACHINGER2018.case_sampler(cfg, inputs, classes, mask)
    values, targets = sampler.draw(6, rng, TrainingConfig())
    assert set(values) == {"patches"} and targets.shape == (6, 27)
    with pytest.raises(InputError, match="auxiliary classifiers"):
        sampler.draw(6, rng, TrainingConfig(auxiliary_weights=(0.3, 0.0)))
    with pytest.raises(InputError, match="BaseNet's patch augmentation"):
        sampler.draw(6, rng, TrainingConfig(augment=True, augment_rotation_deg=5.0))
    with pytest.raises(InputError, match="DeepNAT samples 'uniform', 'balanced', 'mixed', 'deepnat'"):
        sampler.draw(6, rng, TrainingConfig(sampling="slices"))
    with pytest.raises(InputError, match="training.sampling 'slices'"):
        sampler.class_frequencies(2, "slices")


def test_loss_is_the_sum_of_the_tasks_cross_entropies(rng):
    cfg = DeepNATConfig(num_classes=4, tasks=7, coordinates="cartesian", cascade=False, **TINY)
    torch.manual_seed(0)
    network = build_model(cfg).eval()
    batch = {"patches": torch.randn(5, 1, 24, 24, 24), "coordinates": torch.randn(5, 3)}
    targets = torch.from_numpy(rng.integers(0, 4, size=(5, 7)))
    loss = WACHINGER2018.loss(network, batch, targets, TrainingConfig())
    with torch.no_grad():
        logits = network(**batch).double()  # (5, 7, 4)
    manual = 0.0
    for t in range(7):
        log_p = logits[:, t] - torch.logsumexp(logits[:, t], dim=1, keepdim=True)
        manual += float(-log_p[torch.arange(5), targets[:, t]].mean())
    assert float(loss.detach()) == pytest.approx(manual, rel=1e-5)


# -- dense predictor ----------------------------------------------------------------------------


def _tiny_network(cfg: DeepNATConfig) -> DeepNAT:
    """A random tiny DeepNAT in eval mode with non-trivial batch-norm statistics and spread-out logits."""
    torch.manual_seed(0)
    network = build_model(cfg)
    randomise_batch_norm(network, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for head in network.heads:
            head.weight.mul_(5.0)
    return network.eval()


@pytest.mark.parametrize("coordinates, use_bias", [("both", True), ("none", False)])
def test_predict_equals_patch_by_patch_with_eq3_averaging(rng, coordinates, use_bias):
    mask = _ellipsoid()
    image = np.where(mask, rng.standard_normal(mask.shape), -1.3).astype(np.float32)
    cfg = DeepNATConfig(num_classes=4, tasks=7, coordinates=coordinates, cascade=False, **TINY)
    network = _tiny_network(cfg)
    inputs = WACHINGER2018.case_inputs(cfg, image, mask, np.diag([1.0, 1.0, 1.2, 1.0]), -1.3, None)
    assert inputs.coordinates.shape == ({"both": 6, "none": 0}[coordinates],) + mask.shape
    bias = np.array([0.5, -1.0, 0.0, 2.0]) if use_bias else None
    classes, probs = WACHINGER2018.predict(
        network, inputs, mask, probabilities=True, probability_dtype=np.float32, logit_bias=bias
    )
    assert classes.dtype == np.uint8 and classes.shape == mask.shape and probs.shape == (4,) + mask.shape
    np.testing.assert_array_equal(classes, probs.argmax(axis=0))
    assert (classes[~mask] == 0).all() and (probs[0][~mask] == 1).all()

    # the reference: every mask voxel's explicit 24^3 patch, then Eq. 3 on the maps
    voxels = np.argwhere(mask)
    per_voxel = predict_patches3d(
        network,
        image,
        voxels,
        inputs.coordinates if coordinates != "none" else None,
        background=-1.3,
        logit_bias=bias,
    )
    maps = np.zeros((7, 4) + mask.shape, np.float32)
    maps[:, :, voxels[:, 0], voxels[:, 1], voxels[:, 2]] = per_voxel.transpose(1, 2, 0)
    expected = average_task_probabilities(maps, network.offsets, mask)
    sampled = voxels[rng.choice(len(voxels), 60, replace=False)]
    at = (slice(None), sampled[:, 0], sampled[:, 1], sampled[:, 2])
    np.testing.assert_allclose(probs[at], expected[at], atol=1e-5, rtol=0)
    classes_only, none = WACHINGER2018.predict(network, inputs, mask, logit_bias=bias)
    assert none is None
    np.testing.assert_array_equal(classes_only, classes)


def test_describe_and_row_label():
    config = Config(DeepNATConfig())
    assert (
        WACHINGER2018.describe(config)
        == "DeepNAT (24^3 patches, 7 tasks, Cartesian + spectral coordinates, hierarchical)"
    )
    assert WACHINGER2018.row_label(config) == "Cartesian + spectral, hierarchical, 7 tasks"
    jittered = Config(DeepNATConfig(), TrainingConfig(augment=True))
    assert WACHINGER2018.describe(jittered).endswith("hierarchical), jitter of 1 voxel")
    assert WACHINGER2018.row_label(jittered) == "Cartesian + spectral, hierarchical, 7 tasks, jitter"
    tiny = Config(DeepNATConfig(tasks=1, coordinates="none", cascade=False, **TINY))
    assert WACHINGER2018.describe(tiny).startswith("DeepNAT (24^3 patches, 1 task, no coordinates, one step), conv")
    assert WACHINGER2018.row_label(tiny) == "no coordinates, one step, 1 task [widths [4, 4, 4], [16, 8]]"
    assert "2,764,000 (7 tasks)" in WACHINGER2018.paper_parameters


# -- end to end ---------------------------------------------------------------------------------


def test_deepnat_trains_segments_evaluates_calibrates_and_is_described(tmp_path, tiny_manifest, capsys):
    config = {
        "model": {
            "name": "deepnat",
            "widths": [4, 4, 4],
            "fc_widths": [16, 8],
            "dropout": 0.0,
            "tasks": 7,
            "cascade": False,
        },
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 2,
            "samples_per_epoch": 1024,
            "batch_size": 64,
            "learning_rate": 0.05,
            "sampling": "mixed",
            "num_threads": 1,
        },
    }
    (tmp_path / "deepnat.yaml").write_text(yaml.safe_dump(config))
    model_dir = tmp_path / "model"
    assert main(["train", str(tmp_path / "deepnat.yaml"), "-o", str(model_dir), "--no-progress"]) == 0
    model = load_model_folder(model_dir)
    assert isinstance(model.config.model, DeepNATConfig) and model.config.model.num_classes == 3
    assert family_of(model.config.model) is WACHINGER2018 and isinstance(model.network, DeepNAT)
    assert model.network.coordinates == 6 and model.network.tasks == 7
    card = (model_dir / "model_card.md").read_text()
    assert "Wachinger et al. (2018) DeepNAT (24^3 patches, 7 tasks, Cartesian + spectral coordinates, one step)" in card

    image = tmp_path / "data" / "c_SS.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(model_dir), "--no-progress"]) == 0
    written = nib.load(tmp_path / "seg" / "c_SS_seg.nii.gz")
    source = nib.load(image)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    seg = np.asarray(written.dataobj)
    assert set(np.unique(seg)) <= {0, 4, 11}
    scores = tmp_path / "scores.csv"
    argv = ["evaluate", str(tmp_path / "seg" / "c_SS_seg.nii.gz"), str(tmp_path / "data" / "c_glm.nii.gz")]
    assert main([*argv, "--model", str(model_dir), "--no-distances", "-o", str(scores)]) == 0
    with open(scores) as f:
        mean = next(r for r in csv.DictReader(f) if r["case_id"] == "mean")
    assert float(mean["dice"]) > 0.75  # the two structures differ in intensity: 32 steps separate them (0.92)

    assert main(["calibrate", str(model_dir), "--strengths", "0,1", "--no-progress", "--no-card"]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "network: deepnat: DeepNAT (24^3 patches" in out and "2,764,000 (7 tasks)" in out
