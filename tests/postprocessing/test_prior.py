"""The sampling prior's correction: hand-checkable arithmetic, exact sampler frequencies, dense == patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainseg.errors import InputError
from brainseg.inference.dense import predict_dense, predict_dense_at, predict_patches
from brainseg.models.ganaye2018 import BaseNet
from brainseg.postprocessing.prior import ClassPrior, adjust_probabilities
from brainseg.sampling.patches import PLANE_AXIS, build_stack, to_plane
from brainseg.sampling.samplers import VoxelSampler


def test_two_classes_sampled_50_50_with_true_frequencies_90_10_move_the_boundary_to_log_9():
    # A calibrated network under 50/50 sampling: P_q(1 | x) = sigmoid(x), so its boundary is x = 0.
    x = np.linspace(-6, 6, 1201)
    p1 = 1 / (1 + np.exp(-x))
    probabilities = np.stack([1 - p1, p1])
    prior = ClassPrior(np.array([0.9, 0.1]), np.array([0.5, 0.5]), strength=1.0)
    adjusted = adjust_probabilities(probabilities, prior.logit_bias())
    boundary = x[np.argmax(adjusted[1] > adjusted[0])]
    assert boundary == pytest.approx(np.log(9), abs=0.01)  # P_p(1|x) = sigmoid(x - log 9): odds must beat 9
    np.testing.assert_allclose(adjusted[1], 1 / (1 + np.exp(-(x - np.log(9)))), atol=1e-6)
    half = adjust_probabilities(probabilities, prior.logit_bias(0.5))
    assert x[np.argmax(half[1] > half[0])] == pytest.approx(np.log(9) / 2, abs=0.01)  # half strength: odds 3
    np.testing.assert_allclose(adjust_probabilities(probabilities, prior.logit_bias(0.0)), probabilities, atol=1e-6)


def test_absent_classes_get_no_shift_and_bad_priors_are_refused(tmp_path):
    prior = ClassPrior(np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.5, 0.25]), 1.0)
    np.testing.assert_allclose(prior.logit_bias(), [np.log(2), 0.0, 0.0], atol=1e-6)
    with pytest.raises(InputError):
        ClassPrior(np.array([0.5, -0.1]), np.array([0.5, 0.5]))
    prior.save(tmp_path / "p.json")
    assert ClassPrior.load(tmp_path / "p.json").strength == 1.0
    (tmp_path / "bad.json").write_text(json.dumps({"brain": [1]}))
    with pytest.raises(InputError, match="not a class prior"):
        ClassPrior.load(tmp_path / "bad.json")


@pytest.mark.parametrize("mode", ["uniform", "balanced", "mixed"])
def test_sampler_frequencies_are_what_it_draws(mode):
    rng = np.random.default_rng(0)
    classes = rng.choice(4, size=(6, 9, 7), p=[0.55, 0.3, 0.14, 0.01])
    classes[0, 0, 0] = 3
    mask = rng.random(classes.shape) < 0.8
    sampler = VoxelSampler(classes, mask)
    expected = sampler.class_frequencies(5, mode)  # one more class than present: frequency 0
    drawn = sampler.sample(400_000, rng, mode)
    observed = np.bincount(classes[tuple(drawn.T)], minlength=5) / len(drawn)
    np.testing.assert_allclose(observed, expected, atol=0.004)
    assert expected[4] == 0 and expected.sum() == pytest.approx(1.0)


def test_dense_with_the_correction_equals_patches_with_it(rng):
    torch.manual_seed(0)
    model = BaseNet(num_classes=5, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), dropout=0.0).eval()
    with torch.no_grad():
        model.out.weight.mul_(20.0)
    image = rng.standard_normal((10, 20, 30)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[2:8, 4:16, 5:25] = True
    stack = build_stack(image, "axial", (1, 2, 3), background=0.0)
    bias = ClassPrior(np.array([0.6, 0.2, 0.1, 0.07, 0.03]), np.full(5, 0.2), 0.8).logit_bias()
    classes, probs = predict_dense(
        model, stack, mask, probabilities=True, probability_dtype=np.float32, logit_bias=bias
    )
    idx = np.argwhere(to_plane(mask, "axial"))
    reference = predict_patches(model, stack, idx, logit_bias=bias)
    at = predict_dense_at(model, stack, idx, logit_bias=bias)
    probs_p = np.moveaxis(probs, 1 + PLANE_AXIS["axial"], 1)
    dense = probs_p[:, idx[:, 0], idx[:, 1], idx[:, 2]].T
    assert np.abs(dense - reference).max() <= 1e-5 and np.abs(at - reference).max() <= 1e-5
    plain = predict_patches(model, stack, idx)
    np.testing.assert_allclose(adjust_probabilities(plain, bias, axis=1), reference, atol=1e-5)
    assert (plain.argmax(1) != reference.argmax(1)).any()  # the shift changes some labels
    with pytest.raises(ValueError, match="logit_bias"):
        predict_patches(model, stack, idx[:3], logit_bias=bias[:4])


def test_calibration_refuses_no_strengths_before_segmenting_anything(tmp_path):
    # an empty list used to segment every validation case and then fail in max() on nothing
    from brainseg.errors import InputError
    from brainseg.training.calibration import calibrate_prior

    with pytest.raises(InputError, match="no prior strengths to try"):
        calibrate_prior(tmp_path / "not_even_a_model_folder", [])
