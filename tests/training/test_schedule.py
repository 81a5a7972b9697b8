"""The learning-rate schedule (``training.lr_milestones``, ``training.nesterov``): rates per epoch, after a
resume, into the optimiser and the model card; validation of the settings; older checkpoints stay resumable."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from brainseg.cli.main import main
from brainseg.config import Config, TrainingConfig, load_config
from brainseg.errors import InputError
from brainseg.training.checkpoint import check_resumable, load_checkpoint, resume_settings
from brainseg.training.schedule import learning_rate_schedule, milestone_epochs


def _rates(tc: TrainingConfig, start: int = 0) -> list[float]:
    """The rates of epochs ``start`` .. ``epochs - 1`` as the trainer gets them, replaying ``start`` epochs first."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=tc.learning_rate, momentum=0.9)
    scheduler = learning_rate_schedule(optimizer, tc)
    for _ in range(start):
        optimizer.step()
        scheduler.step()
    rates = []
    for _ in range(start, tc.epochs):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_milestones_halve_the_rate_at_fractions_of_the_epochs_also_after_a_resume():
    tc = TrainingConfig(epochs=10, learning_rate=1e-3, lr_milestones=(0.2, 0.4))
    expected = [1e-3 * f for f in (1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25)]
    assert _rates(tc) == pytest.approx(expected, rel=1e-12)
    for start in range(1, 10):  # a run resumed after `start` epochs replays the schedule
        assert _rates(tc, start) == pytest.approx(expected[start:], rel=1e-12)
    # the paper's: 8 halvings over 250 epochs (0.75 x 250 = 187.5 -> from epoch 188)
    paper = TrainingConfig(epochs=250, learning_rate=2e-4, lr_milestones=(0.2, 0.4, 0.6, 0.75, 0.8, 0.85, 0.9, 0.95))
    assert milestone_epochs(paper.lr_milestones, 250) == [50, 100, 150, 188, 200, 213, 225, 238]
    rates = _rates(paper)
    assert (
        rates[49] == pytest.approx(2e-4) and rates[50] == pytest.approx(1e-4) and rates[-1] == pytest.approx(2e-4 / 256)
    )
    # without milestones, the poly policy as before
    assert _rates(TrainingConfig(epochs=2, learning_rate=0.05)) == pytest.approx([0.05, 0.05 * 0.5**0.9])


def test_schedule_settings_are_checked_naming_the_setting(tmp_path):
    for bad in ((0.5, 0.2), (0.0, 0.5), (0.5, 1.0), (0.4, 0.4), (True,)):
        with pytest.raises(InputError, match="lr_milestones"):
            TrainingConfig(lr_milestones=bad)
    with pytest.raises(InputError, match="nesterov: true needs momentum > 0"):
        TrainingConfig(nesterov=True, momentum=0.0)
    with pytest.raises(InputError, match="nesterov must be true or false"):
        TrainingConfig(nesterov="yes")
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  nesterov: true\n  momentum: 0.99\n  lr_milestones: [0.2, 0.4]\n")
    tc = load_config(path).training
    assert tc.nesterov is True and tc.lr_milestones == (0.2, 0.4)
    path.write_text("training:\n  lr_milestones: [0.4, 0.2]\n")
    with pytest.raises(InputError, match="training: lr_milestones must be increasing"):
        load_config(path)
    path.write_text("training:\n  precision: float16\n")
    with pytest.raises(InputError, match="c.yaml: training: precision must be one of float32, bfloat16; got 'float16'"):
        load_config(path)
    path.write_text("training:\n  precision: bfloat16\n")
    assert load_config(path).training.precision == "bfloat16" and TrainingConfig().precision == "float32"


def test_a_checkpoint_from_before_these_settings_stays_resumable(tmp_path):
    config = Config()
    old = json.loads(resume_settings(config))
    assert "nesterov" not in old["training"] and "lr_milestones" not in old["training"]  # at their defaults
    assert "precision" not in old["training"]  # may change on a resume
    state = {"settings": json.dumps(old, sort_keys=True)}
    check_resumable(state, resume_settings(config), {}, tmp_path / "checkpoint.pt")
    nesterov = Config(training=TrainingConfig(nesterov=True, lr_milestones=(0.5,)))
    with pytest.raises(InputError, match=r"training.lr_milestones, training.nesterov"):
        check_resumable(state, resume_settings(nesterov), {}, tmp_path / "checkpoint.pt")


def test_training_with_nesterov_and_milestones_resumes_on_schedule(tiny_setup):
    """One epoch, then a resume to two: the rate halves at epoch 2 (milestone 0.5 of 2 epochs); Nesterov momentum
    reaches the optimiser, and the model card names both."""
    config = yaml.safe_load(tiny_setup.read_text())
    config["training"].update(nesterov=True, lr_milestones=[0.5])
    tiny_setup.write_text(yaml.safe_dump(config))
    out = tiny_setup.parent / "model"
    assert main(["train", str(tiny_setup), "-o", str(out), "--epochs", "1", "--no-progress"]) == 0
    assert main(["train", str(tiny_setup), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.025])
    groups = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert all(g["nesterov"] is True and g["momentum"] == 0.9 for g in groups)
    card = (out / "model_card.md").read_text()
    assert "- SGD Nesterov momentum 0.9, learning rate 0.05 halved at 0.5 of the epochs, weight decay" in card


def test_counts_are_checked_naming_the_setting(tmp_path):
    # epochs: 0 used to train nothing and write an untrained model folder; `--epochs 0` was silently ignored
    for name, bad in (("epochs", 0), ("epochs", 2.5), ("samples_per_epoch", -1), ("batch_size", 0), ("stop_epochs", 0)):
        with pytest.raises(InputError, match=f"{name} must be a whole number >= 1, got {bad!r}"):
            TrainingConfig(**{name: bad})
    for name in ("validate_every", "num_threads"):
        assert getattr(TrainingConfig(**{name: 0}), name) == 0  # 0: never validate; torch's default threads
        with pytest.raises(InputError, match=f"{name} must be a whole number >= 0, got -1"):
            TrainingConfig(**{name: -1})
    with pytest.raises(InputError, match="epochs must be a whole number >= 1, got True"):
        TrainingConfig(epochs=True)
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 3\n")
    with pytest.raises(InputError, match="c.yaml: training: epochs must be a whole number >= 1, got 0"):
        load_config(path, {"training": {"epochs": 0}})
