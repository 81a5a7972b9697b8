"""``brainseg train`` and ``brainseg manifest`` on a tiny synthetic data set: model folder, resume."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from brainseg.cli.main import main
from brainseg.training.checkpoint import load_checkpoint


def test_manifest_lists_cases(tiny_setup):
    text = (tiny_setup.parent / "cases.csv").read_text().splitlines()
    assert text[0] == "case_id,image,label_map,mask" and len(text) == 4


def test_train_writes_model_folder_and_resumes(tiny_setup, capsys):
    out = tiny_setup.parent / "model"
    assert main(["train", str(tiny_setup), "-o", str(out), "--epochs", "1", "--no-progress"]) == 0
    for name in (
        "config.yaml",
        "labels.tsv",
        "normalization.json",
        "weights.safetensors",
        "model_card.md",
        "checkpoint.pt",
    ):
        assert (out / name).is_file(), name
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    first = load_file(str(out / "weights.safetensors"))
    # a second run into the same folder without --resume is refused
    assert main(["train", str(tiny_setup), "-o", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume to 2 epochs
    assert main(["train", str(tiny_setup), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert "val_mean_dice" in history[-1]
    second = load_file(str(out / "weights.safetensors"))
    assert any(not np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
    card = (out / "model_card.md").read_text()
    assert "Validation cases (1): c" in card and "label table auto" in card
    assert "Neuromorphometrics" not in card  # the MICCAI credit only for the MICCAI protocol
    assert "- 1 epoch x " in card and "unfinished" not in card and " min on " in card  # the first run's card
    assert " patches, batch " in card  # a patch family's epochs count patches


def test_card_of_an_unfinished_run_says_so(tiny_setup):
    """A run stopped before its last epoch (no training.json yet) gets a card with the epochs and minutes so far."""
    from brainseg.training.model_card import write_model_card

    out = tiny_setup.parent / "unfinished"
    config = _with(tiny_setup, "two_epochs", epochs=2)
    assert main(["train", str(config), "-o", str(out), "--no-progress", "--no-card"]) == 0
    # the folder as a run stopped after its first epoch leaves it: one epoch of history, no training.json
    (out / "training.json").unlink()
    history = json.loads((out / "history.json").read_text())[:1]
    (out / "history.json").write_text(json.dumps(history))
    minutes = history[-1]["elapsed_s"] / 60
    card = write_model_card(out).read_text()
    assert "- 1 of 2 epochs x " in card and "; an unfinished run (training.json is written at its end)" in card
    assert f"- Training time: {minutes:.1f} min so far (history.json)" in card
    assert "nan" not in card.split("## Validation")[0]


def _with(config_path, name, **training_or_model):
    config = yaml.safe_load(config_path.read_text())
    for key, value in training_or_model.items():
        section = "model" if key in ("dropout", "batch_norm") else "training"
        config[section][key] = value
    path = config_path.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_resume_equals_uninterrupted(tiny_setup):
    """Two epochs in one go give the same weights as one epoch + resume, with dropout, batch norm and
    augmentation on, so every random stream (patches, augmentation, dropout masks) must be reseeded per epoch
    and the batch-norm statistics carried over."""
    config = _with(tiny_setup, "noisy", dropout=0.3, batch_norm=True, augment=True)
    a, b = config.parent / "a", config.parent / "b"
    assert main(["train", str(config), "-o", str(a), "--no-progress", "--no-card"]) == 0
    assert main(["train", str(config), "-o", str(b), "--epochs", "1", "--no-progress", "--no-card"]) == 0
    after_one = load_file(str(b / "weights.safetensors"))
    assert main(["train", str(config), "-o", str(b), "--resume", "--no-progress", "--no-card"]) == 0
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert any("running_mean" in k for k in wa)
    for key in wa:
        np.testing.assert_allclose(wa[key].numpy(), wb[key].numpy(), atol=1e-5, err_msg=key)
    assert any(not np.allclose(after_one[k].numpy(), wb[k].numpy()) for k in wb)  # epoch 2 did train
    history = json.loads((b / "history.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05 * 0.5**0.9])  # poly decay, power 0.9


def test_resume_refuses_other_settings(tiny_setup, capsys):
    out = tiny_setup.parent / "run"
    assert main(["train", str(tiny_setup), "-o", str(out), "--epochs", "1", "--no-progress", "--no-card"]) == 0
    other = _with(tiny_setup, "other", learning_rate=0.01, dropout=0.5)
    assert main(["train", str(other), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 2
    err = capsys.readouterr().err
    assert "model.dropout" in err and "training.learning_rate" in err and "other settings" in err
    # more epochs or threads, or another arithmetic, are fine
    longer = _with(tiny_setup, "longer", epochs=2, num_threads=2, precision="bfloat16")
    assert main(["train", str(longer), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 0


def _resume(config, out, epochs: int) -> int:
    return main(
        ["train", str(config), "-o", str(out), "--resume", "--epochs", str(epochs), "--no-progress", "--no-card"]
    )


def test_resume_from_a_moved_checkout_compares_files_by_content(tiny_setup, capsys):
    # Config and manifest copied elsewhere (another checkout, another machine): same contents, other paths.
    out = tiny_setup.parent / "run"
    assert main(["train", str(tiny_setup), "-o", str(out), "--epochs", "1", "--no-progress", "--no-card"]) == 0
    moved = tiny_setup.parent / "moved"
    moved.mkdir()
    shutil.copy(tiny_setup, moved / "config.yaml")
    shutil.copy(tiny_setup.parent / "cases.csv", moved / "cases.csv")
    assert _resume(moved / "config.yaml", out, epochs=2) == 0
    assert len(json.loads((out / "history.json").read_text())) == 2
    # a manifest whose contents differ is another training set
    lines = (moved / "cases.csv").read_text().splitlines()
    (moved / "cases.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert _resume(moved / "config.yaml", out, epochs=3) == 2
    assert "training.manifest" in capsys.readouterr().err


def test_resume_equals_uninterrupted_plain(tiny_setup):
    """Two epochs in one go give the same weights as one epoch + resume (no random layers)."""
    a, b = tiny_setup.parent / "a", tiny_setup.parent / "b"
    assert main(["train", str(tiny_setup), "-o", str(a), "--no-progress", "--no-card"]) == 0
    assert main(["train", str(tiny_setup), "-o", str(b), "--epochs", "1", "--no-progress", "--no-card"]) == 0
    assert main(["train", str(tiny_setup), "-o", str(b), "--resume", "--no-progress", "--no-card"]) == 0
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    for key in wa:
        np.testing.assert_allclose(wa[key].numpy(), wb[key].numpy(), atol=1e-5, err_msg=key)


def test_unknown_setting_is_an_input_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  widht: 3\n")
    assert main(["train", str(path), "-o", str(tmp_path / "m")]) == 2
    assert "unknown setting" in capsys.readouterr().err


def test_model_card_scores_each_case_on_its_own_grid(tmp_path, capsys, tiny_config):
    """Validation scores of a model card are those `brainseg evaluate` gives for the written label map, on the
    case's own anisotropic grid (1 x 1 x 2 mm), not on the 1 mm grid the network works on."""
    import csv

    import nibabel as nib

    from brainseg.model_folder import load_model_folder
    from brainseg.training.model_card import evaluate_validation

    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    shape = (18, 20, 10)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    for case_id in ("a", "b", "c"):
        brain = zz**2 + yy**2 + xx**2 < 0.7
        labels = np.where(brain, np.where(zz < 0, 4, 11), 0).astype(np.int16)
        image = np.where(brain, np.where(zz < 0, 80, 140) + 5 * rng.standard_normal(shape), 0).astype(np.float32)
        for suffix, values in (("SS", image), ("glm", labels), ("mask", brain.astype(np.uint8))):
            nib.save(nib.Nifti1Image(values, affine), data / f"{case_id}_{suffix}.nii.gz")
    assert main(["manifest", str(data), "-o", str(tmp_path / "cases.csv")]) == 0
    config = tiny_config(epochs=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model"
    assert main(["train", str(tmp_path / "config.yaml"), "-o", str(out), "--no-progress", "--no-card"]) == 0
    card = {s.label: s for s in evaluate_validation(load_model_folder(out))}
    assert (
        main(["segment", str(data / "c_SS.nii.gz"), "-o", str(tmp_path / "seg"), "--model", str(out), "--no-progress"])
        == 0
    )
    scores = tmp_path / "scores.csv"
    assert (
        main(["evaluate", str(tmp_path / "seg" / "c_SS_seg.nii.gz"), str(data / "c_glm.nii.gz"), "-o", str(scores)])
        == 0
    )
    with open(scores) as f:
        rows = {int(r["label"]): r for r in csv.DictReader(f) if r["case_id"] != "mean"}
    for label in (4, 11):
        assert (
            card[label].reference_voxels
            == int(rows[label]["reference_voxels"])
            == int((np.asarray(nib.load(data / "c_glm.nii.gz").dataobj) == label).sum())
        )  # counted on the 18 x 20 x 10 file, not on a 1 mm grid of twice as many voxels
        for metric in ("dice", "hausdorff", "hd95", "msd"):
            assert getattr(card[label], metric) == pytest.approx(float(rows[label][metric]), abs=1e-9), metric


def test_validate_every_zero_skips_validation_during_training(tiny_setup):
    config = _with(tiny_setup, "novalidation", validate_every=0, epochs=1)
    out = config.parent / "nv"
    assert main(["train", str(config), "-o", str(out), "--no-progress", "--no-card"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "val_mean_dice" not in history[0]


def test_device_is_checked_before_any_data_are_read(tiny_setup, capsys):
    out = tiny_setup.parent / "run"
    args = ["train", str(tiny_setup), "-o", str(out), "--no-progress", "--no-card"]
    assert main([*args, "--device", "tpu9"]) == 2
    assert "not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda:0"]) == 2
        err = capsys.readouterr().err
        assert "CUDA device" in err and "--device cpu" in err
    assert not out.exists()
    assert main([*args, "--epochs", "1", "--device", "cpu"]) == 0


def test_worker_processes_draw_the_same_batches_however_many(tiny_setup, capsys):
    """--workers 1 and --workers 3 train to the same weights, with augmentation, dropout and batch norm on: each
    step's batch comes from its own (seed, epoch, step) generator, whichever worker draws it and whenever it ends."""
    config = _with(tiny_setup, "noisy_workers", dropout=0.3, batch_norm=True, augment=True)
    one, three = config.parent / "one", config.parent / "three"
    assert main(["train", str(config), "-o", str(one), "--no-progress", "--no-card", "--workers", "1"]) == 0
    assert main(["train", str(config), "-o", str(three), "--no-progress", "--no-card", "--workers", "3"]) == 0
    w1, w3 = load_file(str(one / "weights.safetensors")), load_file(str(three / "weights.safetensors"))
    for key in w1:
        np.testing.assert_allclose(w1[key].numpy(), w3[key].numpy(), atol=1e-6, err_msg=key)
    losses = [h["loss"] for h in json.loads((one / "history.json").read_text())]
    assert len(losses) == 2 and losses == [h["loss"] for h in json.loads((three / "history.json").read_text())]
    out = config.parent / "bad_workers"
    assert main(["train", str(config), "-o", str(out), "--no-progress", "--no-card", "--workers", "-1"]) == 2
    assert "--workers -1" in capsys.readouterr().err and not out.exists()


def test_workers_draw_what_the_loop_would_with_step_generators(tiny_setup, monkeypatch):
    """The workers' batches are draw_batch's on each step's own generator, in step order."""
    from brainseg.config import load_config
    from brainseg.io.manifest import read_manifest
    from brainseg.preprocessing.intensity import IntensityNormalization
    from brainseg.training import batches
    from brainseg.training.data import load_training_case
    from brainseg.training.setup import training_label_table

    config = load_config(tiny_setup)
    tc = config.training
    cases = [c for c in read_manifest(tc.manifest) if c.case_id in tc.train_cases]
    labels = training_label_table(tc, cases)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=labels.num_classes))
    loaded = [load_training_case(c, labels, config.model, IntensityNormalization()) for c in cases]
    with batches.BatchWorkers(loaded, tc, 2) as workers:
        drawn = list(batches.epoch_batches(loaded, tc, 1, 5, workers))
    assert len(drawn) == 5
    for step, (batch, targets) in enumerate(drawn):
        expected, expected_targets = batches.draw_batch(
            loaded, tc.batch_size, batches.step_generator(tc.seed, 1, step), tc
        )
        assert torch.equal(targets, expected_targets)
        for name in expected:
            assert torch.equal(batch[name], expected[name]), (step, name)
    assert not torch.equal(drawn[0][1], drawn[1][1])


def test_step_batches_differ_and_repeat():
    """Different steps draw different generators; the same (seed, epoch, step) draws the same numbers."""
    from brainseg.training.batches import step_generator

    first = step_generator(0, 1, 2).integers(1 << 30, size=4)
    assert np.array_equal(first, step_generator(0, 1, 2).integers(1 << 30, size=4))
    for other in ((0, 1, 3), (0, 2, 2), (1, 1, 2)):
        assert not np.array_equal(first, step_generator(*other).integers(1 << 30, size=4))


def test_bfloat16_precision_runs_each_step_under_autocast_and_keeps_float32_weights(tiny_setup, monkeypatch):
    from brainseg.families.ganaye2018 import GanayeFamily

    seen = []
    loss = GanayeFamily.loss

    def spy(self, network, batch, targets, tc):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        value = loss(self, network, batch, targets, tc)
        assert value.dtype == torch.float32  # the loss itself stays float32
        return value

    monkeypatch.setattr(GanayeFamily, "loss", spy)
    for precision in ("float32", "bfloat16"):
        config = _with(tiny_setup, precision, epochs=1, precision=precision, validate_every=0)
        out = tiny_setup.parent / precision
        assert main(["train", str(config), "-o", str(out), "--no-progress", "--no-card"]) == 0
        assert all(w.dtype == torch.float32 for w in load_file(str(out / "weights.safetensors")).values())
    steps = 512 // 64
    assert [on for on, _ in seen] == [False] * steps + [True] * steps
    assert all(dtype == torch.bfloat16 for _, dtype in seen[steps:])
    history = json.loads((tiny_setup.parent / "bfloat16" / "history.json").read_text())
    assert np.isfinite(history[0]["loss"])


class _NaNGradient(torch.autograd.Function):
    """Zero forward, NaN gradient backward: a finite loss whose step makes the weights NaN."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return grad.new_full(ctx.shape, float("nan"))


@pytest.mark.parametrize("poison", ["loss", "weights"])
def test_a_diverged_run_stops_in_one_line_and_keeps_the_last_finite_checkpoint(tiny_setup, monkeypatch, capsys, poison):
    """A NaN loss, or NaN weights after an epoch's last step with a finite loss (NaN gradients), stop the run
    before that epoch's checkpoint: exit status 1, one line, and ``--resume`` continues from the kept epoch."""
    from brainseg.families.ganaye2018 import GanayeFamily

    out = tiny_setup.parent / poison
    config = _with(tiny_setup, f"diverge_{poison}", epochs=3, validate_every=0)
    assert main(["train", str(config), "-o", str(out), "--no-progress", "--no-card", "--epochs", "1"]) == 0
    kept = load_checkpoint(out / "checkpoint.pt")
    loss, steps = GanayeFamily.loss, []

    def nan_in_epoch_2(self, network, batch, targets, tc):
        steps.append(1)
        value = loss(self, network, batch, targets, tc)
        if poison == "loss" and len(steps) == 3:
            return value * float("nan")
        if poison == "weights" and len(steps) == 512 // 64:  # the epoch's last step: finite loss, NaN gradients
            return value + _NaNGradient.apply(next(network.parameters()))
        return value

    monkeypatch.setattr(GanayeFamily, "loss", nan_in_epoch_2)
    capsys.readouterr()
    assert main(["train", str(config), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    where = "epoch 2, step 3: the loss is nan" if poison == "loss" else "epoch 2: the weights are not finite"
    assert where in err[0] and "the checkpoint of epoch 1" in err[0] and "--resume" in err[0]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1
    for name, value in state["network"].items():
        torch.testing.assert_close(value, kept["network"][name], msg=name)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
    monkeypatch.setattr(GanayeFamily, "loss", loss)
    assert main(["train", str(config), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 0
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2, 3]


def test_a_run_diverging_in_its_first_epoch_says_no_checkpoint_was_written(tiny_setup, monkeypatch, capsys):
    from brainseg.families.ganaye2018 import GanayeFamily

    loss = GanayeFamily.loss
    monkeypatch.setattr(GanayeFamily, "loss", lambda *a: loss(*a) * float("inf"))
    out = tiny_setup.parent / "first"
    assert main(["train", str(tiny_setup), "-o", str(out), "--no-progress", "--no-card"]) == 1
    err = capsys.readouterr().err
    assert "epoch 1, step 1: the loss is inf" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists()


def test_epochs_zero_is_refused_not_ignored(tiny_setup, capsys):
    # `--epochs 0` used to be dropped (a falsy override), training the config's own epoch count
    out = tiny_setup.parent / "zero"
    assert main(["train", str(tiny_setup), "-o", str(out), "--epochs", "0", "--no-progress", "--no-card"]) == 2
    err = capsys.readouterr().err
    assert "epochs must be a whole number >= 1, got 0" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
