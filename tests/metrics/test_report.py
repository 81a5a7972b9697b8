"""Tests of brainseg.metrics.report on tiny hand-checkable label maps."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from brainseg.labels import LabelTable
from brainseg.metrics.report import evaluate_label_maps, summarize, write_scores_csv, write_scores_json

TABLE = LabelTable(labels=(0, 4, 11), names=("bg", "a", "b"))
SPACING = (1.0, 1.0, 2.0)


def _maps() -> tuple[np.ndarray, np.ndarray]:
    # A line of 8 voxels of 2 mm along the last axis. Label 99 is not in the table: background.
    pred = np.array([4, 4, 4, 0, 99, 11, 0, 0]).reshape(1, 1, 8)
    ref = np.array([4, 4, 4, 4, 0, 0, 0, 0]).reshape(1, 1, 8)
    return pred, ref


def test_evaluate_hand_values():
    pred, ref = _maps()
    a, b = evaluate_label_maps(pred, ref, TABLE, SPACING, case_id="c1")
    # Structure a: P = {0, 1, 2}, R = {0, 1, 2, 3}; every voxel is a surface voxel.
    assert (a.case_id, a.label, a.name) == ("c1", 4, "a")
    assert a.dice == pytest.approx(6 / 7)
    assert a.volumetric_similarity == pytest.approx(1 - 1 / 7)
    assert (a.prediction_voxels, a.reference_voxels) == (3, 4)
    # d(P, R) = (0, 0, 0); d(R, P) = (0, 0, 0, 2 mm).
    assert a.hausdorff == pytest.approx(2.0)
    assert a.hd95 == pytest.approx(0.85 * 2.0)  # 95th percentile of (0, 0, 0, 2), linear interpolation
    assert a.msd == pytest.approx((0 / 3 + 2.0 / 4) / 2)  # d_msd: mean of the two directed means
    # Structure b: predicted but absent from the reference.
    assert (b.label, b.name, b.dice, b.volumetric_similarity) == (11, "b", 0.0, 0.0)
    assert math.isinf(b.hausdorff) and math.isinf(b.hd95) and math.isinf(b.msd)
    assert (b.prediction_voxels, b.reference_voxels) == (1, 0)


def test_summarize_hand_values():
    pred, ref = _maps()
    summary = summarize(evaluate_label_maps(pred, ref, TABLE, SPACING))
    assert summary["dice"] == pytest.approx((6 / 7 + 0.0) / 2)
    assert summary["volumetric_similarity"] == pytest.approx((6 / 7 + 0.0) / 2)
    assert summary["hausdorff"] == pytest.approx(2.0)  # inf left out
    assert summary["msd"] == pytest.approx(0.25)
    assert summary["missing"] == 1
    assert summary["structures"] == 2


def test_absent_from_both_is_nan_and_left_out():
    pred, ref = _maps()
    pred = np.where(pred == 11, 0, pred)
    a, b = evaluate_label_maps(pred, ref, TABLE, SPACING)
    for value in (b.dice, b.hausdorff, b.hd95, b.msd, b.volumetric_similarity):
        assert math.isnan(value)
    summary = summarize([a, b])
    assert summary["dice"] == pytest.approx(6 / 7)
    assert summary["missing"] == 0


def test_dice_only():
    pred, ref = _maps()
    a, _ = evaluate_label_maps(pred, ref, TABLE, SPACING, distances=False)
    assert a.dice == pytest.approx(6 / 7)
    assert math.isnan(a.hausdorff) and math.isnan(a.msd)


def test_perfect_prediction(label_volume):
    scores = evaluate_label_maps(label_volume, label_volume, TABLE, SPACING)
    assert [s.label for s in scores] == [4, 11]
    for s in scores:
        assert (s.dice, s.hausdorff, s.hd95, s.msd, s.volumetric_similarity) == (1.0, 0.0, 0.0, 0.0, 1.0)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        evaluate_label_maps(np.zeros((2, 3, 4), int), np.zeros((2, 4, 3), int), TABLE, SPACING)


def test_write_scores(tmp_path):
    pred, ref = _maps()
    scores = evaluate_label_maps(pred, ref, TABLE, SPACING, case_id="c1")
    write_scores_csv(tmp_path / "s.csv", scores)
    write_scores_json(tmp_path / "s.json", scores)
    rows = list(csv.DictReader((tmp_path / "s.csv").read_text().splitlines()))
    assert [r["case_id"] for r in rows] == ["c1", "c1", "mean"]
    assert float(rows[0]["dice"]) == pytest.approx(6 / 7)
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["structures"][1]["hausdorff"] is None  # inf written as null
    assert data["mean"]["missing"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.json"]
