"""``brainseg segment``: outputs on the input grid, and one-line errors for bad input."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from brainseg.cli.main import main
from brainseg.config import Config, ModelConfig
from brainseg.labels import LabelTable
from brainseg.model_folder import save_model_folder
from brainseg.models import build_model
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.reporting import read_volumes_csv

LABELS = LabelTable((0, 4, 11, 23), ("Background", "3rd Ventricle", "4th Ventricle", "Right Accumbens Area"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small random BaseNet model folder with 4 classes."""
    torch.manual_seed(0)
    cfg = Config(ModelConfig(num_classes=4, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), dropout=0.0))
    network = build_model(cfg.model).eval()
    return save_model_folder(tmp_path_factory.mktemp("model"), cfg, LABELS, IntensityNormalization(), network)


def _brain(shape=(20, 24, 16)) -> np.ndarray:
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = zz**2 + yy**2 + xx**2 < 0.8
    return np.where(inside, 100 + 20 * rng.standard_normal(shape), 0).astype(np.int16)


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    if affine is None:
        affine = np.diag([-1.0, 1.2, 2.0, 1.0])
        affine[:3, 3] = [10, -20, 5]
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _run(argv, capsys) -> tuple[int, str]:
    argv = [str(a) for a in argv]
    if argv[0] == "segment" and "--skull-strip" not in argv:
        argv += [
            "--skull-strip",
            "never",
        ]  # the synthetic ellipsoids are skull-stripped; deepbet is tested on real scans
    code = main(argv)
    return code, capsys.readouterr().err


def test_segment_writes_outputs_on_input_grid(tmp_path, tiny_model, capsys):
    affine = np.diag([-1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    image = _write(tmp_path / "sub-01.nii.gz", _brain(), affine)
    out = tmp_path / "out"
    code, err = _run(["segment", image, "-o", out, "--model", tiny_model, "--no-progress", "--probabilities"], capsys)
    assert code == 0, err
    seg = nib.load(out / "sub-01_seg.nii.gz")
    assert seg.shape == (20, 24, 16)
    np.testing.assert_allclose(seg.affine, affine)
    data = np.asarray(seg.dataobj)
    assert np.issubdtype(data.dtype, np.integer)
    assert set(np.unique(data)) <= {0, 4, 11, 23}
    assert not data[_brain() == 0].any()  # background outside the brain
    comments, rows = read_volumes_csv(out / "sub-01_volumes.csv")
    assert [int(r["label"]) for r in rows] == [4, 11, 23]
    voxel_mm3 = 1.0 * 1.2 * 2.0
    for r in rows:
        assert float(r["volume_mm3"]) == pytest.approx(int(r["voxels"]) * voxel_mm3, abs=1e-3)
        assert int(r["voxels"]) == int((data == int(r["label"])).sum())
    qc = np.asarray(Image.open(out / "sub-01_qc.png"))
    assert qc.ndim == 3 and qc.shape[2] == 3
    probs = nib.load(out / "sub-01_probabilities.nii.gz")
    assert probs.shape == (20, 24, 16, 4)
    p = probs.get_fdata()
    np.testing.assert_allclose(p.sum(axis=3), 1.0, atol=4 * 4 / 255)
    # The probabilities agree with the label map: the labelled class has the largest probability (ties
    # only from the 1/255 storage), and outside the brain the background has probability 1.
    classes = LABELS.to_classes(data)
    labelled = np.take_along_axis(p, classes[..., None], axis=3)[..., 0]
    assert np.all(labelled >= p.max(axis=3) - 1e-6)
    assert np.all(p[_brain() == 0][:, 0] == pytest.approx(1.0))
    assert not list(out.glob(".*"))  # no temp files left


def test_python_api_matches_cli(tmp_path, tiny_model, capsys):
    import brainseg

    image = _write(tmp_path / "a.nii.gz", _brain())
    results = brainseg.segment([image], tmp_path / "api", model=tiny_model, progress=False, skull_strip="never")
    outputs = results[0].outputs
    code, err = _run(["segment", image, "-o", tmp_path / "cli", "--model", tiny_model, "--no-progress"], capsys)
    assert code == 0, err
    api_seg = nib.load(outputs.label_map)
    cli_seg = nib.load(tmp_path / "cli" / "a_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(api_seg.dataobj), np.asarray(cli_seg.dataobj))
    np.testing.assert_allclose(api_seg.affine, cli_seg.affine)
    assert np.asarray(api_seg.dataobj).any()  # a real segmentation, not an empty map on both sides
    assert outputs.volumes.read_text() == (tmp_path / "cli" / "a_volumes.csv").read_text()
    api_qc, cli_qc = Image.open(outputs.qc), Image.open(tmp_path / "cli" / "a_qc.png")
    np.testing.assert_array_equal(np.asarray(api_qc), np.asarray(cli_qc))


def _truncated(tmp_path: Path) -> Path:
    good = _write(tmp_path / "good.nii.gz", _brain())
    raw = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    return bad


BAD_INPUTS = {
    "missing": lambda d: d / "nope.nii.gz",
    "not_nifti": lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt",
    "text_named_nifti": lambda d: (d / "fake.nii.gz").write_bytes(gzip.compress(b"not an image")) and d / "fake.nii.gz",
    "truncated": _truncated,
    "two_d": lambda d: _write(d / "flat.nii.gz", np.ones((10, 12), np.int16)),
    "four_d": lambda d: _write(d / "series.nii.gz", np.ones((6, 6, 6, 2), np.int16)),
    "nan": lambda d: _write(d / "nan.nii.gz", np.where(_brain() > 0, np.nan, 0).astype(np.float32)),
    "inf": lambda d: _write(d / "inf.nii.gz", np.where(_brain() > 0, np.inf, 0).astype(np.float32)),
    "all_zero": lambda d: _write(d / "zero.nii.gz", np.zeros((8, 8, 8), np.int16)),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_model, capsys, kind):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = BAD_INPUTS[kind](inputs)
    out = tmp_path / "out"
    code, err = _run(["segment", image, "-o", out, "--model", tiny_model, "--no-progress"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert str(image.name) in lines[0]
    assert not out.exists()


def test_output_folder_is_existing_file(tmp_path, tiny_model, capsys):
    image = _write(tmp_path / "a.nii.gz", _brain())
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, err = _run(["segment", image, "-o", target, "--model", tiny_model], capsys)
    assert code == 2 and "existing file" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


def test_a_bad_case_in_a_batch_is_reported_and_the_others_go_on(tmp_path, tiny_model, capsys):
    good = _write(tmp_path / "a.nii.gz", _brain())
    bad = _truncated(tmp_path)
    last = _write(tmp_path / "c.nii.gz", _brain()[::-1].copy())
    out = tmp_path / "out"
    code, err = _run(["segment", good, bad, last, "-o", out, "--model", tiny_model, "--no-progress"], capsys)
    assert code == 1 and "1 of 3 cases failed" in err and "Traceback" not in err
    assert (out / "a_seg.nii.gz").is_file() and (out / "c_seg.nii.gz").is_file()
    assert not list(out.glob("truncated*")) and not list(out.glob(".*"))
    with open(out / "segment_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["status"]) for r in rows] == [("a", "ok"), ("truncated", "failed"), ("c", "ok")]
    assert "truncated.nii.gz: cannot read it" in rows[1]["message"] and float(rows[0]["seconds"]) >= 0


def test_never_overwrites_an_input(tmp_path, tiny_model, capsys):
    image = _write(tmp_path / "scan_seg.nii.gz", _brain())  # would collide with scan_seg's own output? no:
    other = _write(tmp_path / "scan.nii.gz", _brain())  # scan.nii.gz -> scan_seg.nii.gz == first input
    before = image.read_bytes()
    code, err = _run(["segment", other, image, "-o", tmp_path, "--model", tiny_model], capsys)
    assert code == 2 and "overwrite an input" in err
    assert image.read_bytes() == before


def test_missing_model_folder(tmp_path, capsys):
    image = _write(tmp_path / "a.nii.gz", _brain())
    code, err = _run(["segment", image, "-o", tmp_path / "o", "--model", tmp_path / "nomodel"], capsys)
    assert code == 2 and "not a model folder" in err


def test_timings_name_every_stage_once(tmp_path, tiny_model, capsys):
    image = _write(tmp_path / "sub-01.nii.gz", _brain(), np.diag([1.0, 1.0, 1.5, 1.0]))
    code, err = _run(
        ["segment", image, "-o", tmp_path / "out", "--model", tiny_model, "--no-progress", "--timings"], capsys
    )
    assert code == 0, err
    (line,) = [x for x in err.splitlines() if x.startswith("timings ")]
    assert line.startswith(f"timings {image}: ")
    stages = dict(part.rsplit(" ", 2)[:2] for part in line.split(": ", 1)[1].split(", "))
    for name in ("load", "skull strip", "prepare", "dense inference", "branch maps", "head", "write"):
        assert name in stages, (name, line)
        assert float(stages[name]) >= 0
    code, err = _run(["segment", image, "-o", tmp_path / "out2", "--model", tiny_model, "--no-progress"], capsys)
    assert code == 0 and "timings" not in err
