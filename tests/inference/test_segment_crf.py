"""``brainseg segment --crf`` and ``Predictor.predict(crf=...)``: every family, settings from the model folder."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.cli.main import main
from brainseg.config import BrebissonConfig, Config, DeepNATConfig, MixNetConfig, ModelConfig, load_config
from brainseg.errors import InputError
from brainseg.inference.predictor import Predictor
from brainseg.io.nifti import load_volume
from brainseg.labels import LabelTable
from brainseg.model_folder import load_model_folder, save_model_folder
from brainseg.models import build_model
from brainseg.postprocessing.dense_crf import CRFParameters
from brainseg.preprocessing.intensity import IntensityNormalization

LABELS = LabelTable(labels=(0, 2, 41), names=("background", "left", "right"))
OFF = CRFParameters(appearance_weight=0.0, smoothness_weight=0.0)


def _brain(shape=(14, 15, 13), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    return np.where(inside, 100 + 20 * rng.standard_normal(shape), 0).astype(np.float32)


def _model_dir(kind: str, tmp_path_factory):
    torch.manual_seed(0)
    if kind == "basenet":
        cfg = Config(ModelConfig(num_classes=3, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), dropout=0.0))
    elif kind == "brebisson2015":
        cfg = Config(BrebissonConfig(num_classes=3, widths_2d=(3, 4), fc_3d=(5,), fc=(8,), max_iterations=2))
    elif kind == "mixnet":
        cfg = Config(MixNetConfig(num_classes=3, filters=4, crop=16))
    else:
        model = DeepNATConfig(
            num_classes=3, widths=(4, 4, 4), fc_widths=(16, 8), dropout=0.0, coordinates="cartesian", cascade=False
        )
        cfg = Config(model)
    network = build_model(cfg.model).eval()
    with torch.no_grad():  # spread-out logits so that the CRF has something to change
        for p in network.parameters():
            p.mul_(3.0)
    folder = tmp_path_factory.mktemp(kind)
    return save_model_folder(folder, cfg, LABELS, IntensityNormalization(), network)


@pytest.fixture(scope="module", params=["basenet", "deepnat", "brebisson2015", "mixnet"])
def model_dir(request, tmp_path_factory):
    """A tiny model folder of each family."""
    return _model_dir(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def basenet_dir(tmp_path_factory):
    """A tiny BaseNet model folder (the CLI is family-agnostic: one family is enough there)."""
    return _model_dir("basenet", tmp_path_factory)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "scan.nii.gz"
    affine = np.array([[-4.0, 0, 0.3, 20], [0, 4.0, 0, -10], [0, 0, 5.0, 3], [0, 0, 0, 1]])  # anisotropic, oblique
    nib.save(nib.Nifti1Image(_brain(), affine), path)
    return path


def test_predict_with_crf_in_every_family(model_dir, image_path):
    predictor = Predictor(load_model_folder(model_dir), num_threads=1)
    volume = load_volume(image_path)
    plain = predictor.predict(volume, probabilities=True)
    off = predictor.predict(volume, probabilities=True, crf=OFF)
    # zero weights: the CRF returns the arg-max of the network's float16 probabilities, which may break a
    # near-tie otherwise than the network's float32 arg-max (measured: 1 voxel of 2,730)
    assert (off.label_map != plain.label_map).mean() < 0.005
    np.testing.assert_allclose(off.probabilities.astype(np.float32), plain.probabilities.astype(np.float32), atol=2e-3)
    strong = predictor.predict(volume, probabilities=True, crf=CRFParameters(smoothness_weight=20.0, top_k=0))
    assert strong.label_map.shape == plain.label_map.shape
    np.testing.assert_allclose(strong.probabilities.astype(np.float32).sum(0), 1, atol=0.02)

    def disagreements(labels):
        return sum(int((np.diff(labels, axis=a) != 0).sum()) for a in range(3))

    assert disagreements(strong.label_map) < disagreements(plain.label_map)


def test_model_folder_carries_crf_settings(model_dir):
    config = load_config(model_dir / "config.yaml", model_folder=True)
    assert config.crf == CRFParameters()  # written by save_model_folder, read back


def test_cli_crf_writes_its_settings_and_refuses_bad_ones(basenet_dir, image_path, tmp_path, capsys):
    base = ["segment", str(image_path), "--model", str(basenet_dir), "--skull-strip", "never", "--no-progress"]
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    args = [
        *base,
        "-o",
        str(tmp_path / "crf"),
        "--crf",
        "--crf-param",
        "appearance_weight=0",
        "--crf-param",
        "smoothness_weight=0",
        "--crf-param",
        "iterations=3",
    ]
    assert main(args) == 0
    plain = np.asanyarray(nib.load(tmp_path / "plain" / "scan_seg.nii.gz").dataobj)
    crf = np.asanyarray(nib.load(tmp_path / "crf" / "scan_seg.nii.gz").dataobj)
    assert (plain != crf).mean() < 0.005  # float16 near-ties only, as above
    header = (tmp_path / "crf" / "scan_volumes.csv").read_text()
    assert "# dense CRF: appearance_weight 0, smoothness_weight 0," in header and "iterations 3" in header
    record = json.loads((tmp_path / "crf" / "scan_seg.json").read_text())
    assert "iterations" in json.dumps(record)
    capsys.readouterr()
    for bad, message in [
        (["--crf", "--crf-param", "sigma=3"], "unknown setting"),
        (["--crf", "--crf-param", "iterations=2.5"], "--crf-param: iterations must be a whole number, got '2.5'"),
        (["--crf", "--crf-param", "intensity_sigma=0"], "intensity_sigma"),
        (["--crf-param", "iterations=2"], "needs --crf"),
        (["--crf", "--crf-param", "iterations"], "NAME=VALUE"),
    ]:
        out = tmp_path / "bad"
        assert main([*base, "-o", str(out), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())


def test_crf_settings_of_converts_and_refuses_fractional_counts():
    # segment(crf_settings=...) takes numbers too; int(2.7) used to run 2 iterations without a word
    from brainseg.inference.segment import crf_settings_of

    changed = crf_settings_of(CRFParameters(), {"iterations": 4.0, "top_k": "3", "appearance_weight": "0.5"})
    assert (changed.iterations, changed.top_k, changed.appearance_weight) == (4, 3, 0.5)
    assert isinstance(changed.iterations, int) and isinstance(changed.top_k, int)
    with pytest.raises(InputError, match="iterations must be a whole number, got 2.7"):
        crf_settings_of(CRFParameters(), {"iterations": 2.7})


def test_crf_parameters_round_trip_through_a_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: basenet}\ntraining: {}\ncrf: {iterations: 10, top_k: 0, intensity_sigma: 0.3}\n")
    config = load_config(path)
    assert config.crf == dataclasses.replace(CRFParameters(), iterations=10, top_k=0, intensity_sigma=0.3)
    path.write_text("model: {name: basenet}\ntraining: {}\ncrf: {iterations: -1}\n")
    with pytest.raises(Exception, match="crf: iterations and top_k must be >= 0"):
        load_config(path)
