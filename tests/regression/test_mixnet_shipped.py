"""The shipped MixNet model (134 structures, one network for three views) end to end on the demo subject."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli.main import main
from brainseg.families.chen2018 import MixNetViews
from brainseg.metrics.overlap import dice_per_class
from brainseg.model_folder import default_model_dir, load_model_folder
from brainseg.reporting import read_volumes_csv

DEMO = default_model_dir().parent / "demo"


def test_shipped_mixnet_is_one_mixnetv2_for_three_views_on_134_structures():
    model = load_model_folder("mixnet")
    cfg = model.config.model
    assert cfg.name == "mixnet" and cfg.version == 2 and cfg.shared_views
    assert cfg.planes == ("sagittal", "coronal", "axial") and tuple(cfg.modalities) == ("t1",)
    assert isinstance(model.network, MixNetViews) and list(model.network.nets) == ["shared"]
    assert model.labels.num_classes == 135 and model.reference is None
    card = (model.path / "model_card.md").read_text()
    assert "MixNetv2, 3 views" in card and "unfinished" not in card


@pytest.mark.slow
def test_mixnet_segments_the_demo_subject(tmp_path):
    out = tmp_path / "out"
    argv = ["segment", str(DEMO / "1000_SS.nii.gz"), "-o", str(out), "--model", "mixnet", "--no-progress"]
    assert main(argv) == 0
    seg, source = nib.load(out / "1000_SS_seg.nii.gz"), nib.load(DEMO / "1000_SS.nii.gz")
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine)
    labels = load_model_folder("mixnet").labels
    predicted = labels.to_classes(np.asarray(seg.dataobj))
    reference = labels.to_classes(np.asarray(nib.load(DEMO / "1000_glm.nii.gz").dataobj))
    dice = dice_per_class(predicted, reference, labels.num_classes)[1:]
    assert np.nanmean(dice) > 0.36  # the model card's validation mean for this subject (0.384), less a margin
    _, rows = read_volumes_csv(out / "1000_SS_volumes.csv")
    assert len(rows) == 134
