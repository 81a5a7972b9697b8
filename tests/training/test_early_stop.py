"""Early stopping on validation mean Dice and keeping the best validated epoch (``training.stop_min_gain``,
``training.keep_best``)."""

from __future__ import annotations

import json

import numpy as np
import yaml
from safetensors.torch import load_file

from brainseg.cli.main import main
from brainseg.training.stopping import should_stop


def _history(*dices):
    # epochs 1, 2, ...; None = not validated that epoch
    return [{"epoch": i + 1, **({} if d is None else {"val_mean_dice": d})} for i, d in enumerate(dices)]


def test_should_stop_compares_with_the_best_validation_window_epochs_back():
    # 0.700 -> 0.702 over two epochs: a gain of 0.002 < 0.003 stops
    assert should_stop(_history(0.690, 0.700, 0.702), 0.003, 2) is False  # window 2 from epoch 3 is epoch 1: +0.012
    assert should_stop(_history(0.690, 0.700, 0.702, 0.7025), 0.003, 2) is True  # epoch 4 vs best of 1-2: +0.0025
    assert should_stop(_history(0.690, 0.700, 0.702, 0.7035), 0.003, 2) is False  # +0.0035
    # the best earlier validation counts, not the latest: a dip does not reset the bar
    assert should_stop(_history(0.710, 0.690, 0.712), 0.003, 2) is True
    # validated every other epoch: consecutive validations are two epochs apart
    assert should_stop(_history(None, 0.700, None, 0.705), 0.003, 2) is False
    assert should_stop(_history(None, 0.700, None, 0.701), 0.003, 2) is True


def test_should_stop_never_without_a_rule_a_validation_or_an_earlier_one():
    assert should_stop(_history(0.7, 0.7, 0.7), 0.0, 2) is False  # rule off
    assert should_stop(_history(0.7, 0.7, None), 0.003, 2) is False  # last epoch not validated
    assert should_stop(_history(0.7, 0.7), 0.003, 2) is False  # nothing two epochs back
    assert should_stop([], 0.003, 2) is False


def test_training_stops_early_and_keeps_the_best_epoch(tiny_setup, monkeypatch):
    """Validations scripted to 0.5, 0.7, 0.6 under an unreachable gain: a 6-epoch run stops after epoch 3,
    and with keep_best its model folder holds epoch 2's weights, the same as a plain 2-epoch run (constant
    learning rate, so the schedule does not depend on the number of epochs)."""
    scripted = iter([0.5, 0.7, 0.6])
    config = yaml.safe_load(tiny_setup.read_text())
    config["training"].update(epochs=6, validate_every=1, poly_power=0.0, stop_min_gain=1.0, keep_best=True)
    path = tiny_setup.parent / "stop.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tiny_setup.parent / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(
            "brainseg.training.trainer.validate",
            lambda *a, **k: {"mean_dice": next(scripted), "per_case": {}, "per_class": []},
        )
        assert main(["train", str(path), "-o", str(out), "--no-progress", "--no-card"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["val_mean_dice"] for h in history] == [0.5, 0.7, 0.6]
    training = json.loads((out / "training.json").read_text())
    assert training["epochs"] == 3 and training["weights_epoch"] == 2
    # resuming a run that already stopped trains nothing more
    assert main(["train", str(path), "-o", str(out), "--resume", "--no-progress", "--no-card"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 3

    config["training"].update(epochs=2, stop_min_gain=0.0, keep_best=False)
    plain = tiny_setup.parent / "plain.yaml"
    plain.write_text(yaml.safe_dump(config))
    assert main(["train", str(plain), "-o", str(tiny_setup.parent / "two"), "--no-progress", "--no-card"]) == 0
    kept, two = (
        load_file(str(out / "weights.safetensors")),
        load_file(str(tiny_setup.parent / "two" / "weights.safetensors")),
    )
    for key in two:
        np.testing.assert_allclose(kept[key].numpy(), two[key].numpy(), atol=1e-6, err_msg=key)


def test_is_best_and_the_epoch_the_folder_keeps():
    from brainseg.training.stopping import is_best, weights_epoch

    history = [{"epoch": 1}, {"epoch": 2, "val_mean_dice": 0.5}, {"epoch": 3, "val_mean_dice": 0.7}]
    assert is_best(history[:1])  # nothing validated yet: written every epoch
    assert is_best(history[:2]) and is_best(history)
    later = history + [{"epoch": 4, "val_mean_dice": 0.6}, {"epoch": 5}, {"epoch": 6, "val_mean_dice": 0.7}]
    assert not is_best(later[:4]) and not is_best(later[:5])  # worse, and unvalidated after a validation
    assert is_best(later)  # ties count as best: the later of equal epochs is kept
    assert weights_epoch(later, keep_best=True) == 6
    assert weights_epoch(later[:5], keep_best=True) == 3
    assert weights_epoch(later[:5], keep_best=False) == 5
    assert weights_epoch([], keep_best=True) == 0
