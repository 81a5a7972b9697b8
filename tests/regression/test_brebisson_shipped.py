"""The shipped de Brébisson & Montana model (134 structures, two-stage inference) end to end on the demo subject."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli.main import main
from brainseg.metrics.overlap import dice_per_class
from brainseg.model_folder import default_model_dir, load_model_folder
from brainseg.models.brebisson2015 import BrebissonTwoStage
from brainseg.reporting import read_volumes_csv

DEMO = default_model_dir().parent / "demo"


def test_shipped_brebisson_is_the_full_two_stage_network_on_134_structures():
    model = load_model_folder("brebisson2015")
    cfg = model.config.model
    assert cfg.name == "brebisson2015" and cfg.pathways == ("orthogonal", "compressed", "patch_3d", "centroids")
    assert isinstance(model.network, BrebissonTwoStage) and model.network.first.pathways == cfg.pathways[:-1]
    assert model.labels.num_classes == 135 and model.reference is None
    card = (model.path / "model_card.md").read_text()
    assert "error rate" in card and "## Iterative inference, pass by pass" in card


@pytest.mark.slow
def test_brebisson_segments_the_demo_subject(tmp_path):
    out = tmp_path / "out"
    argv = ["segment", str(DEMO / "1000_SS.nii.gz"), "-o", str(out), "--model", "brebisson2015", "--no-progress"]
    assert main(argv) == 0
    seg, source = nib.load(out / "1000_SS_seg.nii.gz"), nib.load(DEMO / "1000_SS.nii.gz")
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine)
    labels = load_model_folder("brebisson2015").labels
    predicted = labels.to_classes(np.asarray(seg.dataobj))
    reference = labels.to_classes(np.asarray(nib.load(DEMO / "1000_glm.nii.gz").dataobj))
    dice = dice_per_class(predicted, reference, labels.num_classes)[1:]
    assert np.nanmean(dice) > 0.66  # the model card's validation mean for this subject (0.699), less a margin
    _, rows = read_volumes_csv(out / "1000_SS_volumes.csv")
    assert len(rows) == 134
