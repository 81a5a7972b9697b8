"""Config inheritance (extends), fine-tuning initialisation, and reading 0.1 weight names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from brainseg.config import Config, ModelConfig, load_config
from brainseg.errors import InputError
from brainseg.labels import LabelTable
from brainseg.model_folder import read_weights, save_model_folder
from brainseg.models import build_model
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.training.setup import initialise_from

SMALL = dict(branch_widths=(4, 8), mix_channels=8, fc_widths=(16, 12), num_classes=7)


def test_extends_overrides_and_resolves_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "model:\n  dropout: 0.2\n  landmarks: 7\ntraining:\n  manifest: cases.csv\n  epochs: 5\n  seed: 3\n"
    )
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nmodel:\n  landmarks: 5\ntraining:\n  epochs: 2\n  reference: ref\n"
    )
    config = load_config(tmp_path / "sub" / "child.yaml")
    assert config.model.dropout == 0.2 and config.model.landmarks == 5
    assert config.training.epochs == 2 and config.training.seed == 3
    # Each path is relative to the file that names it.
    assert config.training.manifest == str((tmp_path / "cases.csv").resolve())
    assert config.training.reference == str((tmp_path / "sub" / "ref").resolve())


def test_extends_loop_and_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(InputError, match="loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(InputError, match="nowhere.yaml"):
        load_config(tmp_path / "c.yaml")


def test_needs_reference():
    assert not ModelConfig().needs_reference
    assert ModelConfig(landmarks=7).needs_reference and ModelConfig(prob_branch=True).needs_reference
    assert ModelConfig(reference_space=True).needs_reference


def test_initialise_from_basenet_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    base = build_model(ModelConfig(**SMALL, dropout=0.0)).eval()
    labels = LabelTable(tuple(range(7)), tuple(f"s{i}" for i in range(7)))
    save_model_folder(tmp_path, Config(ModelConfig(**SMALL, dropout=0.0)), labels, IntensityNormalization(), base)
    full = build_model(
        ModelConfig(
            **SMALL,
            dropout=0.0,
            name="ganaye2018",
            landmarks=2,
            distance_width=4,
            prob_branch=True,
            branch_3d_widths=(2, 3),
        )
    ).eval()
    copied = initialise_from(full, tmp_path)
    assert copied == len(base.state_dict())  # every BaseNet tensor found a home
    patches = torch.randn(5, 3, 25, 25)
    extras = dict(
        distances=torch.rand(5, 8) * 50,
        atlas=torch.softmax(torch.randn(5, 7), 1),
        patches_3d=torch.randn(5, 1, 15, 15, 15),
    )
    # New input columns start at zero and the ProbBranch's last layer too: same logits as the BaseNet.
    torch.testing.assert_close(full(patches, **extras), base(patches), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="not a model folder"):
        initialise_from(full, tmp_path / "missing")
    (tmp_path / "weights.safetensors").write_bytes((tmp_path / "weights.safetensors").read_bytes()[:-8])
    with pytest.raises(InputError, match="sha256 differs"):  # a damaged source is refused, not half copied
        initialise_from(full, tmp_path)


def test_read_weights_renames_version_0_1_layers(tmp_path):
    torch.manual_seed(0)
    net = build_model(ModelConfig(**SMALL))
    old = {}
    for k, v in net.state_dict().items():
        k = k.replace("fc.0.", "classifier.0.").replace("fc.1.", "classifier.3.").replace("out.", "classifier.6.")
        old[k] = v.contiguous()
    save_file(old, str(tmp_path / "w.safetensors"))
    state = read_weights(tmp_path / "w.safetensors")
    assert set(state) == set(net.state_dict())
    np.testing.assert_array_equal(state["out.weight"].numpy(), net.state_dict()["out.weight"].numpy())
