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


DEEPNAT = CONFIGS / "deepnat_ablation"


def test_deepnat_configs_use_the_25_and_134_protocols_on_the_shipped_split():
    from brainseg.config import DeepNATConfig

    deepnat25 = load_config(CONFIGS / "deepnat25_miccai2012.yaml")
    basenet = load_config(CONFIGS / "basenet_miccai2012.yaml")
    assert isinstance(deepnat25.model, DeepNATConfig) and deepnat25.model.name == "deepnat"
    assert resolve_label_table(deepnat25.training.labels).num_classes == 26
    for key in ("manifest", "train_cases", "validation_cases"):
        assert getattr(deepnat25.training, key) == getattr(basenet.training, key), key
    # the 134-structure config differs from the 25-structure one by its label table only
    labels = _changes(CONFIGS / "deepnat25_miccai2012.yaml", CONFIGS / "deepnat134_miccai2012.yaml")
    assert labels == {("training", "labels"): "miccai2012"}


def test_deepnat_ablation_rows_change_one_setting_each():
    """Wachinger et al. 2018, Fig. 4: hierarchical / one step, coordinates none / Cartesian / spectral / both, 1 / 7 / 27 tasks."""
    base = load_config(DEEPNAT / "base.yaml").model
    assert (base.cascade, base.coordinates, base.tasks) == (True, "both", 7)  # the paper's choices
    expected = {
        "one_step.yaml": {("model", "cascade"): False},
        "coordinates_none.yaml": {("model", "coordinates"): "none"},
        "coordinates_cartesian.yaml": {("model", "coordinates"): "cartesian"},
        "coordinates_spectral.yaml": {("model", "coordinates"): "spectral"},
        "tasks_1.yaml": {("model", "tasks"): 1},
        "tasks_27.yaml": {("model", "tasks"): 27},
    }
    assert {p.name for p in DEEPNAT.glob("*.yaml")} == {"base.yaml", *expected}
    for name, change in expected.items():
        assert _changes(DEEPNAT / "base.yaml", DEEPNAT / name) == change, name
    # the base differs from the 25-structure config by the ablation budget only
    budget = _changes(CONFIGS / "deepnat25_miccai2012.yaml", DEEPNAT / "base.yaml")
    assert {key for _, key in budget} <= {"epochs", "samples_per_epoch", "num_threads", "validate_every"}
    labels = {row_label_of(DEEPNAT / name) for name in ["base.yaml", *expected]}
    assert len(labels) == len(expected) + 1  # every row has its own label in the tables


def row_label_of(path: Path) -> str:
    from brainseg.training.ablation import row_label

    return row_label(load_config(path))


BREBISSON = CONFIGS / "brebisson_ablation"


def test_brebisson_ablation_rows_are_the_papers_table_1():
    """de Brébisson & Montana 2015, Table 1: one config per row, each differing from the full network by its pathways."""
    from brainseg.families.brebisson2015 import PAPER_ERROR_RATES

    shipped = load_config(CONFIGS / "brebisson2015_miccai2012.yaml")
    basenet = load_config(CONFIGS / "basenet_miccai2012.yaml")
    assert shipped.model.name == "brebisson2015" and shipped.training.labels == "miccai2012"
    for key in ("manifest", "train_cases", "validation_cases"):
        assert getattr(shipped.training, key) == getattr(basenet.training, key), key
    expected = {
        "patch_2d.yaml": ["patch_2d"],
        "patch_3d.yaml": ["patch_3d"],
        "orthogonal.yaml": ["orthogonal"],
        "compressed.yaml": ["compressed"],
        "coordinates.yaml": ["coordinates"],
        "centroids.yaml": ["centroids"],
        "orthogonal_compressed.yaml": ["orthogonal", "compressed"],
    }
    assert {p.name for p in BREBISSON.glob("*.yaml")} == {"full.yaml", *expected}
    for name, pathways in expected.items():
        change = _changes(BREBISSON / "full.yaml", BREBISSON / name)
        assert change.pop(("model", "pathways")) == pathways, name
        assert change == ({("model", "first_stage"): ["coordinates"]} if name == "centroids.yaml" else {}), name
    budget = _changes(CONFIGS / "brebisson2015_miccai2012.yaml", BREBISSON / "full.yaml")
    assert {key for _, key in budget} <= {"epochs", "samples_per_epoch", "num_threads"}
    labels = {row_label_of(BREBISSON / name) for name in ["full.yaml", *expected]}
    assert labels == set(PAPER_ERROR_RATES)  # every row finds its paper figure
