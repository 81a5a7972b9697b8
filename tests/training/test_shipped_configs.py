"""The configs shipped in configs/ load, and the ablation rows differ only where the paper's tables say."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainseg.config import config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ABLATION = CONFIGS / "ablation"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads(path):
    config = load_config(path)
    assert config.model.num_classes == 135
    assert config.training.manifest.endswith("miccai2012_manifest.csv")


def _changes(a: Path, b: Path) -> dict:
    da, db = config_to_dict(load_config(a)), config_to_dict(load_config(b))
    return {(s, k): db[s][k] for s in da for k in da[s] if da[s][k] != db[s][k]}


def test_ablation_rows_add_one_thing_each():
    dist = {("model", "landmarks"): 7, ("model", "distance_rbf"): False}  # conv is the default
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
    # ... and the paper_distbranch/ variants differ from it only by the paper's RBF.
    for row in ("dist", "dist_prob", "dist_prob_3d", "full"):
        paper = ABLATION / "paper_distbranch" / f"{row}.yaml"
        assert _changes(ABLATION / f"{row}.yaml", paper) == {("model", "distance_rbf"): True}
