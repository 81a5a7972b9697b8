"""``brainseg tune-crf``: the CRF's settings chosen on validation cases and written into the model folder."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import yaml

from brainseg.cli.main import main
from brainseg.config import load_config
from brainseg.errors import InputError
from brainseg.inference.predictor import Predictor
from brainseg.model_folder import verify_model_folder
from brainseg.postprocessing.dense_crf import CRFParameters
from brainseg.training import crf_tuning
from brainseg.training.crf_tuning import CRFScores, choose_crf, crf_grid


def _scores(*rows):
    return [
        CRFScores(None if i == 0 else CRFParameters(appearance_weight=float(i)), *r, 0.0, 0.0)
        for i, r in enumerate(rows)
    ]


def test_choose_keeps_dice_and_lowers_hd95():
    # (dice, hd95, msd): the network first
    assert choose_crf(_scores((0.7, 5.0, 1.0), (0.7, 5.0, 0.9), (0.69, 2.0, 0.8))) is None  # equal HD95; lower Dice
    chosen = choose_crf(_scores((0.7, 5.0, 1.0), (0.71, 4.5, 1.0), (0.70, 4.0, 1.1), (0.65, 1.0, 0.5)))
    assert chosen is not None and chosen.settings.appearance_weight == 2.0  # lowest HD95 of the qualified


def test_grid_is_the_product_over_the_folder_settings():
    base = CRFParameters(iterations=7)
    grid = crf_grid(base, {"appearance_weight": [1, 2], "top_k": [3.0], "intensity_sigma": [0.1, 0.2, 0.3]})
    assert len(grid) == 6 and all(p.iterations == 7 and p.top_k == 3 and isinstance(p.top_k, int) for p in grid)
    assert [(p.appearance_weight, p.intensity_sigma) for p in grid[:3]] == [(1.0, 0.1), (1.0, 0.2), (1.0, 0.3)]
    with pytest.raises(InputError, match="unknown CRF setting"):
        crf_grid(base, {"sigma": [1.0]})
    with pytest.raises(InputError, match="intensity_sigma must be > 0"):
        crf_grid(base, {"intensity_sigma": [0.0]})


def test_tune_crf_scores_the_network_and_writes_the_chosen_setting(tiny_setup, capsys, monkeypatch, one_torch_thread):
    model = tiny_setup.parent / "model"
    assert main(["train", str(tiny_setup), "-o", str(model), "--no-progress", "--no-card"]) == 0
    before = (model / "config.yaml").read_text()
    # a bad grid: one line, exit 2, nothing written
    assert main(["tune-crf", str(model), "--grid", "sigma=1,2", "--no-progress"]) == 2
    assert "unknown CRF setting" in capsys.readouterr().err and not (model / "crf_tuning.csv").exists()
    grid = ["--grid", "appearance_weight=0,2", "--grid", "smoothness_weight=0,2", "--grid", "iterations=3"]
    assert main(["tune-crf", str(model), *grid, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    with open(model / "crf_tuning.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["crf"] for r in rows] == ["no", "yes", "yes", "yes", "yes"]
    assert [(r["appearance_weight"], r["smoothness_weight"]) for r in rows[1:]] == [
        ("0.0", "0.0"),
        ("0.0", "2.0"),
        ("2.0", "0.0"),
        ("2.0", "2.0"),
    ]
    # the CRF with both weights 0 keeps the network's labels: the same figures as the network alone
    for key in ("dice", "hd95", "msd"):
        assert rows[1][key] == rows[0][key]
    assert float(rows[1]["changed"]) == 0.0
    # the two structures differ in intensity: the appearance kernel follows their edge and wins here
    (row,) = [r for r in rows if r["chosen"] == "yes"]
    assert (row["appearance_weight"], row["smoothness_weight"]) == ("2.0", "0.0") and "<- chosen" in printed
    assert float(row["dice"]) >= float(rows[0]["dice"]) and float(row["hd95"]) < float(rows[0]["hd95"])
    verify_model_folder(model)  # checksums rewritten
    config = load_config(model / "config.yaml")  # written, and what segment --crf will use
    assert config.crf == dataclasses.replace(
        CRFParameters(), appearance_weight=2.0, smoothness_weight=0.0, iterations=3
    )
    assert yaml.safe_load(before)["training"] == yaml.safe_load((model / "config.yaml").read_text())["training"]
    # every (case, setting) was logged as scored: a rerun scores only what is missing
    logged = [json.loads(line) for line in (model / "crf_tuning_cases.jsonl").read_text().splitlines()]
    assert "identity" in logged[0] and len(logged) == 1 + 5 and {e["case"] for e in logged[1:]} == {"c"}
    calls = {"crf": 0, "segment": 0}
    real_crf, real_segment = crf_tuning.dense_crf, Predictor.segment_prepared

    def counting_crf(*args, **kwargs):
        calls["crf"] += 1
        return real_crf(*args, **kwargs)

    def counting_segment(self, *args, **kwargs):
        calls["segment"] += 1
        return real_segment(self, *args, **kwargs)

    monkeypatch.setattr(crf_tuning, "dense_crf", counting_crf)
    monkeypatch.setattr(Predictor, "segment_prepared", counting_segment)
    assert main(["tune-crf", str(model), *grid, "--no-progress"]) == 0
    assert calls == {"crf": 0, "segment": 0} and "<- chosen" in capsys.readouterr().out
    # a grid where nothing qualifies (the network's own labels, one new setting) leaves the config as it was
    written = (model / "config.yaml").read_text()
    nothing = ["--grid", "appearance_weight=0", "--grid", "smoothness_weight=0", "--grid", "iterations=2"]
    assert main(["tune-crf", str(model), *nothing, "--no-progress"]) == 0
    assert (model / "config.yaml").read_text() == written and "left as it was" in capsys.readouterr().out
    assert calls == {"crf": 1, "segment": 1}


def test_case_log_resumes_its_own_model_only(tmp_path):
    path = tmp_path / "crf_tuning_cases.jsonl"
    log = crf_tuning._CaseLog(path, "model-a")
    log.add("key", "c", [0.7, 3.0, 1.0, 0.01, 9.0])
    with open(path, "a") as f:
        f.write('{"key": "cut sh')  # a crash mid-line
    assert crf_tuning._CaseLog(path, "model-a").scored == {"key": [0.7, 3.0, 1.0, 0.01, 9.0]}
    assert crf_tuning._CaseLog(path, "model-b").scored == {}  # retrained: afresh
    assert json.loads(path.read_text().splitlines()[0]) == {"identity": "model-b"}
    assert crf_tuning._CaseLog(None, "model-b").scored == {}
