"""MixNet's views alone and fused on validation cases, and the weights chosen by validation (section 2.3)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from brainseg.model_folder import load_model_folder, verify_model_folder
from brainseg.training import view_fusion
from brainseg.training.view_fusion import FusionScore, candidate_weights, choose_fusion


@pytest.fixture
def mixnet_dir(tiny_manifest, train_tiny_mixnet):
    return train_tiny_mixnet(epochs=1, samples_per_epoch=96)


def test_candidates_hold_each_view_alone_equal_doubled_and_the_papers():
    three = candidate_weights(("sagittal", "coronal", "axial"))
    assert three[:3] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)] and (1, 1, 1) in three and (1, 1, 4) in three
    assert (2, 1, 1) in three and (1, 2, 1) in three and (1, 1, 2) in three and len(set(three)) == len(three)
    assert candidate_weights(("axial",)) == [(1.0,)]


def test_the_chosen_weighting_is_the_best_fused_one():
    from brainseg.metrics.report import StructureScore

    def score(weights, dice):
        return FusionScore(weights, [StructureScore("c", 1, "A", dice, 1.0, 1.0, 1.0, 1.0, 1, 1)])

    alone, fair, better = score((1, 0, 0), 0.9), score((1, 1, 1), 0.6), score((1, 1, 2), 0.7)
    assert choose_fusion([alone, fair, better]) is better  # a view alone is never "fused", however good
    assert choose_fusion([alone]) is None
    nothing = score((1, 1, 4), float("nan"))  # no structure scored: max() used to keep a NaN it met first
    assert choose_fusion([nothing, fair]) is fair and choose_fusion([fair, nothing]) is fair


def test_fusion_table_scores_as_evaluate_does_and_writes_the_chosen_weights(mixnet_dir, capsys):
    assert view_fusion.main([str(mixnet_dir), "--no-progress"]) == 0
    with open(mixnet_dir / "view_fusion.csv") as f:
        rows = list(csv.DictReader(f))
    with open(mixnet_dir / "validation.csv") as f:
        validation = {r["name"]: float(r["dice"]) for r in csv.DictReader(f) if r["case_id"] == "c"}
    equal = {r["name"]: float(r["dice"]) for r in rows if r["weights"] == "1:1:1"}
    # the equal weighting is the folder's own fusion: the same Dice as its validation (brainseg segment's path)
    assert equal.keys() == validation.keys() and all(abs(equal[k] - validation[k]) < 1e-4 for k in equal)
    weights = {r["weights"] for r in rows}
    assert {"1:0:0", "0:1:0", "0:0:1", "1:1:1", "1:1:4"} <= weights
    text = (mixnet_dir / "view_fusion.md").read_text()
    assert "| sagittal alone |" in text and "(chosen)" in text and "optimistic" in text
    assert load_model_folder(mixnet_dir).config.model.view_weights == ()  # not written without --write

    assert (
        view_fusion.main([str(mixnet_dir), "--weights", "1,0,3", "--weights", "0,2,1", "--write", "--no-progress"]) == 0
    )
    with open(mixnet_dir / "view_fusion.csv") as f:
        rows = list(csv.DictReader(f))
    by_weights = {}
    for r in rows:
        by_weights.setdefault(r["weights"], []).append(float(r["dice"]))
    best = max(by_weights, key=lambda w: np.mean(by_weights[w]))
    verify_model_folder(mixnet_dir)  # checksums rewritten with the config
    model = load_model_folder(mixnet_dir)
    assert ":".join(f"{w:g}" for w in model.config.model.view_weights) == best
    assert model.network.view_weights == pytest.approx(
        tuple(w / sum(model.config.model.view_weights) for w in model.config.model.view_weights)
    )


def test_refuses_a_model_that_is_not_a_mixnet_and_bad_weights(mixnet_dir, capsys):
    from brainseg.model_folder import shipped_model_dir

    assert view_fusion.main([str(shipped_model_dir("basenet")), "--no-progress"]) == 2
    assert "not a MixNet model folder (model.name: mixnet)" in capsys.readouterr().err
    assert view_fusion.main([str(mixnet_dir), "--weights", "1,1", "--no-progress"]) == 2
    assert "need one number >= 0 per plane (sagittal, coronal, axial)" in capsys.readouterr().err
    assert view_fusion.main([str(mixnet_dir), "--weights", "a,b,c", "--no-progress"]) == 2
    assert "--weights expects numbers separated by commas" in capsys.readouterr().err
