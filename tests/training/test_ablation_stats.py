"""Dice over structures for ablation studies (Wachinger et al. 2018, Fig. 4): medians, Wilcoxon tests, box plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from brainseg.errors import InputError
from brainseg.metrics.report import StructureScore, write_scores_csv
from brainseg.training.ablation import AblationRow
from brainseg.training.ablation_figures import plot_dice_by_structure, plot_dice_by_variant
from brainseg.training.ablation_stats import (
    format_structure_table,
    read_structure_dice,
    structure_means,
    summarize_structures,
    wilcoxon_p,
)

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("s1", "s2", "s3", "s4", "s5")
REFERENCE = (0.80, 0.75, 0.90, 0.60, 0.70)  # median 0.75, mean 0.75
WORSE = (0.78, 0.70, 0.84, 0.52, 0.69)  # every structure lower: differences -0.02 -0.05 -0.06 -0.08 -0.01


def _row(name, means, extra=None):
    # Two validation cases 0.1 above and below each structure's mean; s5 absent from both maps in case b.
    a = {s: m + 0.1 for s, m in zip(NAMES, means)}
    b = {s: m - 0.1 for s, m in zip(NAMES, means)}
    a["s5"], b["s5"] = means[4], math.nan
    a.update(extra or {})
    b.update(extra or {})
    return AblationRow(name, name.upper(), {"a": {"dice": 0.0}, "b": {"dice": 0.0}}, 10, 1.0, {"a": a, "b": b})


def test_wilcoxon_p_on_hand_checked_pairings():
    # all five differences of one sign: the smallest rank sum, exact p = 2 / 2**5
    assert wilcoxon_p(WORSE, REFERENCE) == pytest.approx(0.0625)
    # differences 0.01 -0.02 0.03 0.04: ranks 1..4, negative rank sum 2; P(W <= 2) = 3/16, two-sided 6/16
    assert wilcoxon_p([0.81, 0.68, 0.93, 0.64], [0.80, 0.70, 0.90, 0.60]) == pytest.approx(0.375)
    # zero differences are dropped before ranking (Wilcoxon's convention); none left: p = 1
    assert wilcoxon_p([0.81, 0.5, 0.68, 0.93, 0.64], [0.80, 0.5, 0.70, 0.90, 0.60]) == pytest.approx(0.375)
    assert wilcoxon_p(REFERENCE, REFERENCE) == 1.0
    assert math.isnan(wilcoxon_p([], []))
    with pytest.raises(ValueError, match="equal lengths"):
        wilcoxon_p([0.1, 0.2], [0.1])
    x = np.random.default_rng(0).uniform(0.5, 0.9, 30)
    y = x + np.random.default_rng(1).normal(0.01, 0.02, 30)
    assert wilcoxon_p(x, y) == pytest.approx(wilcoxon(x, y).pvalue)


def test_structure_means_skip_cases_where_a_structure_is_absent():
    means = structure_means(_row("a", REFERENCE).structure_dice)
    assert list(means) == list(NAMES)
    assert [round(v, 12) for v in means.values()] == list(REFERENCE)  # s5: case a only
    assert structure_means({"a": {"x": math.nan}, "b": {"x": None, "y": 0.5}}) == {"y": 0.5}


def test_summaries_median_mean_and_paired_test_against_the_reference():
    same_plus_extra = _row("c", REFERENCE, extra={"extra": 0.5})
    rows = [_row("ref", REFERENCE), _row("worse", WORSE), same_plus_extra]
    ref, worse, extra = summarize_structures(rows, "ref")
    assert (ref.structures, ref.paired, ref.median_difference) == (5, 5, 0.0) and math.isnan(ref.p_value)
    assert ref.median_dice == pytest.approx(0.75) and ref.mean_dice == pytest.approx(0.75)
    assert worse.median_dice == pytest.approx(0.70) and worse.mean_dice == pytest.approx(3.53 / 5)
    assert worse.median_difference == pytest.approx(-0.05) and worse.p_value == pytest.approx(0.0625)
    # a structure the reference lacks counts in the row's figures, not in the paired test
    assert (extra.structures, extra.paired, extra.p_value) == (6, 5, 1.0)
    assert extra.median_dice == pytest.approx(0.725)
    table = format_structure_table([ref, worse, extra], "ref", cases=2)
    lines = table.splitlines()
    assert lines[2] == "| REF | 5 | 0.750 | 0.750 | (reference) | – |"
    assert lines[3] == "| WORSE | 5 | 0.700 | 0.706 | -0.050 | 0.0625 |"
    assert lines[4] == "| C | 6 | 0.725 | 0.708 | +0.000 | 1 |"
    assert "mean Dice over the 2 validation cases" in table and "REF (`ref`)" in table
    # the reference row may be any row
    assert summarize_structures(rows, "worse")[0].median_difference == pytest.approx(0.05)
    with pytest.raises(InputError, match="names no row"):
        summarize_structures(rows, "nosuch")


def test_box_plots_are_written_as_png(tmp_path):
    rows = [_row("ref", REFERENCE), _row("worse", WORSE), _row("c", REFERENCE, extra={"extra": 0.5})]
    summaries = summarize_structures(rows, "ref")
    by_variant = plot_dice_by_variant(rows, tmp_path / "dice_by_variant.png", summaries, "ref")
    by_structure = plot_dice_by_structure(rows, tmp_path / "dice_by_structure.png")
    stacked = plot_dice_by_structure(rows, tmp_path / "stacked.png", per_panel=2)  # 6 structures: 3 panels
    for path in (by_variant, by_structure, stacked):
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG
    with Image.open(by_structure) as one, Image.open(stacked) as three:
        assert three.height > 2 * one.height
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
    with pytest.raises(ValueError, match="per_panel"):
        plot_dice_by_structure(rows, tmp_path / "x.png", per_panel=0)


def test_structure_dice_reads_back_from_validation_csv(tmp_path):
    nan = math.nan
    scores = [
        StructureScore("1000", 4, "3rd-Ventricle", 0.5, 3.0, 2.0, 1.0, 0.9, 10, 12),
        StructureScore("1000", 11, "4th-Ventricle", nan, nan, nan, nan, nan, 0, 0),
        StructureScore("1008", 4, "3rd-Ventricle", 0.75, 3.0, 2.0, 1.0, 0.9, 10, 12),
    ]
    write_scores_csv(tmp_path / "validation.csv", scores)
    dice = read_structure_dice(tmp_path / "validation.csv")
    assert list(dice) == ["1000", "1008"]  # the mean row is skipped
    assert dice["1000"]["3rd-Ventricle"] == 0.5 and math.isnan(dice["1000"]["4th-Ventricle"])
    assert structure_means(dice) == {"3rd-Ventricle": 0.625}
    with pytest.raises(InputError, match="no such"):
        read_structure_dice(tmp_path / "missing.csv")
