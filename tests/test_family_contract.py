"""The family contract: a family the shared code has never seen trains, segments, calibrates and is described
through ``brainseg train``, ``segment``, ``evaluate``, ``calibrate`` and ``info`` with no change to them.

The toy family classifies each voxel from its own intensity and its neighbours' along the first axis (a
3-tap 1-D convolution, so its dense predictor and its sampler must agree on which voxels it reads).
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from brainseg.cli.main import main
from brainseg.families import FAMILIES_BY_MODEL, Family, family_of
from brainseg.model_folder import load_model_folder


class ToyNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, num_classes)

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        return self.linear(taps)


class ToySampler:
    def __init__(self, padded, classes, mask):
        self.padded, self.classes = padded, classes
        self.voxels = np.argwhere(mask | (classes > 0))

    def class_frequencies(self, num_classes, mode):
        counts = np.bincount(self.classes[tuple(self.voxels.T)], minlength=num_classes)[:num_classes]
        return counts / counts.sum()

    def draw(self, n, rng, tc):
        v = self.voxels[rng.integers(len(self.voxels), size=n)]
        return {"taps": _taps(self.padded, v)}, self.classes[tuple(v.T)]


def _taps(padded: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    d, h, w = voxels.T
    return np.stack([padded[d + k, h, w] for k in range(3)], axis=1).astype(np.float32)


class ToyFamily(Family):
    name = "toy2026"
    paper = "Toy et al. (2026)"
    paper_parameters = "the paper has none"

    def build_network(self, cfg):
        return ToyNet(cfg.num_classes)

    def describe(self, config):
        return "a 3-tap classifier along the first axis"

    def case_inputs(self, cfg, image, mask, affine, background, atlas):
        return np.pad(image, ((1, 1), (0, 0), (0, 0)), constant_values=background)

    def case_sampler(self, cfg, inputs, classes, mask):
        return ToySampler(inputs, classes, mask)

    def loss(self, network, batch, targets, tc):
        return F.cross_entropy(network(**batch), targets)

    def predict(
        self,
        network,
        inputs,
        mask,
        *,
        probabilities=False,
        probability_dtype=np.float16,
        progress=False,
        logit_bias=None,
    ):
        voxels = np.argwhere(mask)
        with torch.no_grad():
            logits = network(torch.from_numpy(_taps(inputs, voxels)))
            if logit_bias is not None:
                logits = logits + torch.as_tensor(logit_bias, dtype=logits.dtype)
            p = torch.softmax(logits, dim=1).numpy()
        classes = np.zeros(mask.shape, np.uint8)
        classes[tuple(voxels.T)] = p.argmax(axis=1)
        probs = None
        if probabilities:
            probs = np.zeros((p.shape[1],) + mask.shape, probability_dtype)
            probs[0] = 1
            probs[(slice(None),) + tuple(voxels.T)] = p.T
        return classes, probs


@pytest.fixture
def toy_family(monkeypatch):
    family = ToyFamily()
    monkeypatch.setitem(FAMILIES_BY_MODEL, "toy", family)
    return family


def test_an_unseen_family_goes_through_every_command(tmp_path, tiny_manifest, toy_family, capsys):
    config = {
        "model": {"name": "toy"},
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 2,
            "samples_per_epoch": 2048,
            "batch_size": 128,
            "learning_rate": 0.1,
            "num_threads": 1,
        },
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    model_dir = tmp_path / "model"
    assert main(["train", str(tmp_path / "toy.yaml"), "-o", str(model_dir), "--no-progress"]) == 0
    model = load_model_folder(model_dir)
    assert family_of(model.config.model) is toy_family and isinstance(model.network, ToyNet)
    card = (model_dir / "model_card.md").read_text()
    assert "Toy et al. (2026) a 3-tap classifier along the first axis" in card and "the paper has none" in card

    # the two structures (labels 4 and 11) differ in intensity: the toy network separates them
    image = tmp_path / "data" / "c_SS.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(model_dir), "--no-progress"]) == 0
    seg = np.asarray(nib.load(tmp_path / "seg" / "c_SS_seg.nii.gz").dataobj)
    reference = np.asarray(nib.load(tmp_path / "data" / "c_glm.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 4, 11}
    scores = tmp_path / "scores.csv"
    argv = ["evaluate", str(tmp_path / "seg" / "c_SS_seg.nii.gz"), str(tmp_path / "data" / "c_glm.nii.gz")]
    assert main([*argv, "--model", str(model_dir), "--no-distances", "-o", str(scores)]) == 0
    with open(scores) as f:
        mean = next(r for r in csv.DictReader(f) if r["case_id"] == "mean")
    assert float(mean["dice"]) > 0.8
    assert np.mean(seg[reference > 0] == reference[reference > 0]) > 0.8

    assert main(["calibrate", str(model_dir), "--strengths", "0,1", "--no-progress", "--no-card"]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(model_dir)]) == 0
    assert "a 3-tap classifier" in capsys.readouterr().out
