"""The configs shipped in configs/ load, and the ablation rows differ only where the paper's tables say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainseg.config import config_to_dict, load_config
from brainseg.io.manifest import read_manifest
from brainseg.labels import LabelTable, resolve_label_table

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ABLATION = CONFIGS / "ablation"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads(path):
    config = load_config(path)
    tc = config.training
    assert config.model.num_classes == 0  # from the table
    table = resolve_label_table(tc.labels)  # a shipped table or a TSV beside the config
    assert table.num_classes >= 4
    cases = {c.case_id for c in read_manifest(tc.manifest)}
    assert set(tc.train_cases) <= cases and set(tc.validation_cases) <= cases
    assert not set(tc.train_cases) & set(tc.validation_cases)


def test_coarse_miccai_protocol_merges_every_structure_once():
    coarse = LabelTable.from_tsv(CONFIGS / "miccai2012_coarse_labels.tsv")
    fine = LabelTable.miccai2012()
    sources = [n for c in range(1, coarse.num_classes) for n in coarse.sources(c)]
    assert coarse.num_classes == 28 and len(sources) == len(set(sources))
    assert set(sources) - {1001, 1002, 1003, 1004, 1005, 2001, 2002, 2003, 2004, 2005} == set(fine.labels[1:])
    # left cortical parcels (odd MICCAI numbers >= 101) go to left classes (1001-1005), right ones to 2001-2005
    for c in range(1, coarse.num_classes):
        parcels = [n for n in coarse.sources(c) if n >= 100 and n < 1000]
        if coarse.labels[c] in range(1001, 1006):
            assert parcels and all(n % 2 == 1 for n in parcels), coarse.names[c]
        if coarse.labels[c] in range(2001, 2006):
            assert parcels and all(n % 2 == 0 for n in parcels), coarse.names[c]
    # a MICCAI label map maps onto the coarse classes: the left hippocampus and amygdala share one class
    merged = coarse.to_classes(np.array([48, 32, 47, 0, 5]))
    assert merged[0] == merged[1] != merged[2] and merged[3] == merged[4] == 0


def _changes(a: Path, b: Path) -> dict:
    da, db = config_to_dict(load_config(a)), config_to_dict(load_config(b))
    return {(s, k): db[s][k] for s in da for k in da[s] if da[s][k] != db[s][k]}


def test_ablation_rows_add_one_thing_each():
    dist = {("model", "landmarks"): 7}  # conv and no RBF (the paper's DistBranch) are the defaults
    assert _changes(ABLATION / "basenet.yaml", ABLATION / "dist.yaml") == dist
    assert _changes(ABLATION / "basenet.yaml", ABLATION / "prob.yaml") == {("model", "prob_branch"): True}
    assert _changes(ABLATION / "dist.yaml", ABLATION / "dist_prob.yaml") == {("model", "prob_branch"): True}
    assert _changes(ABLATION / "dist_prob.yaml", ABLATION / "dist_prob_3d.yaml") == {
        ("model", "branch_3d_widths"): [8, 16]
    }
    full = _changes(ABLATION / "dist_prob_3d.yaml", ABLATION / "full.yaml")
    assert full[("model", "auxiliary")] is True and full[("training", "augment")] is True
    # Table 2: the four combinations of convolutions and RBF over the same landmarks.
    base = ABLATION / "distance.yaml"
    assert _changes(base, ABLATION / "distance_rbf.yaml") == {("model", "distance_rbf"): True}
    assert _changes(base, ABLATION / "distance_conv.yaml") == {("model", "distance_conv"): True}
    assert _changes(base, ABLATION / "distance_conv_rbf.yaml") == {
        ("model", "distance_conv"): True,
        ("model", "distance_rbf"): True,
    }
    # Table 1's DistBranch is Table 2's distance + conv row (reused by the ablation command) ...
    assert _changes(ABLATION / "dist.yaml", ABLATION / "distance_conv.yaml") == {}
    # ... and the conv_rbf_distbranch/ variants differ from it only by the RBF.
    for row in ("dist", "dist_prob", "dist_prob_3d", "full"):
        variant = ABLATION / "conv_rbf_distbranch" / f"{row}.yaml"
        assert _changes(ABLATION / f"{row}.yaml", variant) == {("model", "distance_rbf"): True}


def test_every_paper_row_gets_the_papers_figures():
    """Tables 1 and 2 of Ganaye et al. give every row; rows with another DistBranch than the paper's get none."""
    from brainseg.families.ganaye2018 import PAPER_RESULTS
    from brainseg.training.ablation import AblationRow, format_table, row_label

    expected = {
        "basenet": (0.694, 40.26, 1.74, 1_249_415),
        "dist": (0.720, 10.09, 1.10, 1_508_511),
        "prob": (0.700, 32.38, 1.50, 1_304_090),
        "dist_prob": (0.723, 9.95, 1.10, 1_563_186),
        "dist_prob_3d": (0.733, 9.99, 1.07, 2_847_794),
        "full": (0.748, 9.66, 1.00, 2_847_794),
        "distance": (0.703, 15.84, None, None),
        "distance_rbf": (0.452, 66.02, None, None),
        "distance_conv": (0.720, 10.09, 1.10, 1_508_511),
        "distance_conv_rbf": (0.718, 10.42, None, None),
    }
    for name, figures in expected.items():
        assert PAPER_RESULTS[row_label(load_config(ABLATION / f"{name}.yaml"))] == figures, name
    for name in ("dist_prob", "dist_prob_3d", "full"):
        label = row_label(load_config(ABLATION / "conv_rbf_distbranch" / f"{name}.yaml"))
        assert label not in PAPER_RESULTS and "conv, rbf" in label
    row = AblationRow(
        "full",
        row_label(load_config(ABLATION / "full.yaml")),
        {"a": {"dice": 0.5, "hausdorff": 9.0, "msd": 1.0}},
        5,
        1.0,
    )
    assert "| 0.748 | 9.66 | 1.00 | 2,847,794 |" in format_table([row], paper_results=PAPER_RESULTS)
