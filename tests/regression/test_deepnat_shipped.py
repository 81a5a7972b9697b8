"""The shipped DeepNAT model (25 structures) end to end on the demo subject."""

from __future__ import annotations

import numpy as np
import pytest
from shipped_helpers import segment_demo

from brainseg.model_folder import load_model_folder


def test_shipped_deepnat_is_one_step_on_25_structures():
    # one network over all 26 classes: the Fig. 4 ablation found it better than the hierarchy on our masks
    model = load_model_folder("deepnat")
    cfg = model.config.model
    assert cfg.name == "deepnat" and not cfg.cascade and cfg.tasks == 7 and cfg.coordinates == "both"
    assert model.labels.num_classes == 26 and model.reference is None
    assert (model.path / "model_card.md").is_file() and model.prior is not None


@pytest.mark.slow
def test_deepnat_segments_the_demo_subject_into_its_25_structures(tmp_path):
    predicted, dice, volume_rows = segment_demo("deepnat", tmp_path)
    assert set(np.unique(predicted)) <= set(load_model_folder("deepnat").labels.labels)
    assert np.nanmean(dice) > 0.84  # the model card's validation mean on this subject (0.867), less a margin
    assert volume_rows == 25
