"""The shipped MixNet model (134 structures, one network for three views) end to end on the demo subject."""

from __future__ import annotations

import numpy as np
import pytest
from shipped_helpers import assert_one_mixnetv2_for_three_views, segment_demo

from brainseg.model_folder import load_model_folder


def test_shipped_mixnet_is_one_mixnetv2_for_three_views_on_134_structures():
    model = load_model_folder("mixnet")
    assert_one_mixnetv2_for_three_views(model)
    assert model.labels.num_classes == 135 and model.reference is None
    card = (model.path / "model_card.md").read_text()
    assert "MixNetv2, 3 views" in card and "unfinished" not in card


@pytest.mark.slow
def test_mixnet_segments_the_demo_subject(tmp_path):
    _, dice, volume_rows = segment_demo("mixnet", tmp_path)
    assert np.nanmean(dice) > 0.59  # the model card's validation mean for this subject (0.629), less a margin
    assert volume_rows == 134
