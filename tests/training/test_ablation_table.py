"""The ablation table's error-rate columns (de Brébisson and Montana 2015, Table 1) and the per-case error rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainseg.families.brebisson2015 import PAPER_ERROR_RATES
from brainseg.metrics.overlap import error_rate
from brainseg.metrics.report import StructureScore
from brainseg.training.ablation import AblationRow, _per_case, format_table


def test_error_rate_counts_structure_voxels_only():
    reference = np.zeros((3, 4, 5), np.uint8)
    reference[0] = 1
    reference[1, :2] = 2  # 20 + 10 structure voxels
    prediction = reference.copy()
    prediction[0, 0, :3] = 2  # 3 wrong structure voxels
    prediction[2] = 1  # background predicted as a structure: not an error rate error
    prediction[1, 0, 0] = 0  # a structure voxel lost to background: an error
    assert error_rate(prediction, reference) == 4 / 30
    assert np.isnan(error_rate(prediction, np.zeros_like(reference)))


def test_table_shows_error_rates_beside_the_papers_only_for_families_that_report_them():
    per_case = {
        "a": {"dice": 0.7, "hausdorff": 30.0, "msd": 1.5, "error_rate": 0.20},
        "b": {"dice": 0.8, "hausdorff": 20.0, "msd": 1.0, "error_rate": 0.30},
    }
    full = AblationRow("full", "full", per_case, 1000, 5.0)
    old = AblationRow("orth", "3 orthogonal patches", {"a": {"dice": 0.6, "hausdorff": 1.0, "msd": 1.0}}, 10, 1.0)
    lines = format_table([full, old], paper_error_rates=PAPER_ERROR_RATES).splitlines()
    assert lines[0].endswith("| training (min) | error rate | paper error rate |")
    assert lines[2].endswith("| 5 | 0.250 ± 0.050 | 0.105 |")
    assert lines[3].endswith("| 1 | n/a | 0.175 |")
    assert "error rate" not in format_table([full])


def test_per_case_records_the_error_rate_when_given():
    scores = [
        StructureScore("a", 1, "s1", 0.5, 10.0, 5.0, 1.0, 0.9, 10, 12),
        StructureScore("a", 2, "s2", 0.7, 20.0, 7.0, 2.0, 0.8, 10, 9),
    ]
    got = _per_case(scores, {"a": 0.125})
    assert got["a"]["error_rate"] == 0.125 and got["a"]["dice"] == 0.6
    assert "error_rate" not in _per_case(scores)["a"]


def test_row_label_names_bfloat16_steps():
    from brainseg.config import Config, TrainingConfig
    from brainseg.training.ablation import row_label

    assert row_label(Config()) == "BaseNet"
    assert row_label(Config(training=TrainingConfig(precision="bfloat16"))) == "BaseNet, bfloat16 steps"


def test_full_row_needs_auxiliary_losses_that_are_trained():
    # the auxiliary classifiers built but weighted 0 are not the paper's "Full" row (describe() agrees)
    import dataclasses

    from brainseg.config import load_config
    from brainseg.training.ablation import row_label

    full = load_config(Path(__file__).resolve().parents[2] / "configs" / "ablation" / "full.yaml")
    assert row_label(full) == "Full (+aux. losses, augmentation)"
    unweighted = dataclasses.replace(full, training=dataclasses.replace(full.training, auxiliary_weights=(0.0, 0.0)))
    assert row_label(unweighted) == "+Dist+Prob+3d"
