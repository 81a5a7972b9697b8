"""The shipped de Brébisson & Montana model (134 structures, two-stage inference) end to end on the demo subject."""

from __future__ import annotations

import numpy as np
import pytest
from shipped_helpers import segment_demo

from brainseg.model_folder import load_model_folder
from brainseg.models.brebisson2015 import BrebissonTwoStage


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
    _, dice, volume_rows = segment_demo("brebisson2015", tmp_path)
    assert np.nanmean(dice) > 0.66  # the model card's validation mean for this subject (0.699), less a margin
    assert volume_rows == 134
