"""Crash-safe batches of ``brainseg segment``: inputs, skipping complete cases, kill -9, disk full."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from brainseg.cli.main import main
from brainseg.config import Config, ModelConfig
from brainseg.errors import InputError
from brainseg.inference.batch import expand_inputs
from brainseg.labels import LabelTable
from brainseg.model_folder import save_model_folder
from brainseg.models import build_model
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.reporting import read_volumes_csv

LABELS = LabelTable((0, 4, 11), ("Background", "3rd Ventricle", "4th Ventricle"))
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = Config(ModelConfig(num_classes=3, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), dropout=0.0))
    network = build_model(cfg.model).eval()
    return save_model_folder(tmp_path_factory.mktemp("model"), cfg, LABELS, IntensityNormalization(), network)


def _brain(seed: int, shape=(14, 15, 13)) -> np.ndarray:
    """A noisy ellipsoid; with 4 mm voxels it covers 56-60 mm, enough for the shipped brain-size limits."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    return np.where(inside, 100 + 20 * rng.standard_normal(shape), 0).astype(np.float32)


def _write(path: Path, seed: int) -> Path:
    affine = np.diag([-4.0, 4.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(_brain(seed), affine), path)
    return path


def _segment(args, capsys=None) -> int:
    code = main(["segment", *map(str, args), "--skull-strip", "never", "--no-progress"])
    if capsys is not None:
        capsys.readouterr()
    return code


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "segment_summary.csv") as f:
        return list(csv.DictReader(f))


def test_globs_manifests_and_lists_expand_in_order(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    paths = [_write(data / f"s{i}.nii.gz", i) for i in range(3)]
    got = expand_inputs([str(data / "s*.nii.gz")])
    assert [g.image for g in got] == paths and [g.name for g in got] == ["s0", "s1", "s2"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my cases\ndata/s2.nii.gz\n\n  data/s0.nii.gz  # first\n")
    assert [(g.image, g.name) for g in expand_inputs([listing])] == [(paths[2], "s2"), (paths[0], "s0")]
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case_id,image\nsub-01,data/s1.nii.gz\nsub-02,data/s0.nii.gz\n")
    assert [(g.image, g.name) for g in expand_inputs([manifest])] == [(paths[1], "sub-01"), (paths[0], "sub-02")]
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs([str(data / "*.mgz")])
    with pytest.raises(InputError, match="is a folder"):
        expand_inputs([data])
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(InputError, match=r"notes\.txt: line 1 \('hello'\) is not a \.nii"):
        expand_inputs([tmp_path / "notes.txt"])


def test_manifest_case_ids_name_the_outputs_of_same_named_files(tmp_path, tiny_model, capsys):
    for sub in ("sub-01", "sub-02"):
        (tmp_path / sub).mkdir()
        _write(tmp_path / sub / "T1w.nii.gz", int(sub[-1]))
    out = tmp_path / "out"
    assert _segment([tmp_path / "*" / "T1w.nii.gz", "-o", out, "--model", tiny_model], capsys) == 2  # both T1w_seg
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case_id,image\nsub-01,sub-01/T1w.nii.gz\nsub-02,sub-02/T1w.nii.gz\n")
    assert _segment([manifest, "-o", out, "--model", tiny_model], capsys) == 0
    assert (out / "sub-01_seg.nii.gz").is_file() and (out / "sub-02_seg.nii.gz").is_file()


def test_rerun_skips_complete_cases_and_redoes_changed_ones(tmp_path, tiny_model, capsys):
    images = [_write(tmp_path / f"s{i}.nii.gz", i) for i in range(3)]
    out = tmp_path / "out"
    assert _segment([*images, "-o", out, "--model", tiny_model], capsys) == 0
    assert [r["status"] for r in _summary(out)] == ["ok", "ok", "ok"]
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "segment_summary.csv"}
    record = json.loads((out / "s0_seg.json").read_text())
    assert set(record["outputs"]) == {"s0_seg.nii.gz", "s0_brain_mask.nii.gz", "s0_volumes.csv", "s0_qc.png"}

    assert _segment([*images, "-o", out, "--model", tiny_model], capsys) == 0
    assert [r["status"] for r in _summary(out)] == ["skipped"] * 3

    (out / "s1_qc.png").write_bytes(b"damaged")  # an output no longer matches its record
    _write(images[2], 99)  # the input changed
    (out / "s0_volumes.csv").unlink()
    assert _segment([*images, "-o", out, "--model", tiny_model], capsys) == 0
    assert [r["status"] for r in _summary(out)] == ["ok", "ok", "ok"]
    assert (out / "s1_qc.png").read_bytes() == first["s1_qc.png"]
    assert (out / "s2_seg.json").read_bytes() != first["s2_seg.json"]

    assert _segment([*images, "-o", out, "--model", tiny_model, "--overwrite"], capsys) == 0
    assert [r["status"] for r in _summary(out)] == ["ok"] * 3
    assert _segment([*images, "-o", out, "--model", tiny_model, "--probabilities"], capsys) == 0  # other settings
    assert [r["status"] for r in _summary(out)] == ["ok"] * 3


def test_fixing_the_corrupt_case_segments_only_that_one(tmp_path, tiny_model, capsys):
    images = [_write(tmp_path / f"s{i}.nii.gz", i) for i in range(3)]
    good = images[1].read_bytes()
    images[1].write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    assert _segment([*images, "-o", out, "--model", tiny_model], capsys) == 1
    assert [r["status"] for r in _summary(out)] == ["ok", "failed", "ok"]
    assert not list(out.glob("s1_*"))
    images[1].write_bytes(good)
    assert _segment([*images, "-o", out, "--model", tiny_model], capsys) == 0
    assert [r["status"] for r in _summary(out)] == ["skipped", "ok", "skipped"]


def _fail_when_writing(name: str, monkeypatch):
    """Patch nibabel's writer: writing ``name`` puts half the bytes on disk, then the disk is full."""
    real_save = nib.save

    def save(img, filename):
        if Path(filename).name.startswith(f".{name}."):
            Path(filename).write_bytes(b"\x1f\x8b" + b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(img, filename)

    monkeypatch.setattr(nib, "save", save)


def test_disk_full_leaves_no_partial_output(tmp_path, tiny_model, capsys, monkeypatch):
    images = [_write(tmp_path / f"s{i}.nii.gz", i) for i in range(3)]
    out = tmp_path / "out"
    _fail_when_writing("s1_brain_mask.nii.gz", monkeypatch)
    assert _segment([*images, "-o", out, "--model", tiny_model], capsys) == 1
    rows = _summary(out)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "No space left on device" in rows[1]["message"] and "free disk space" in rows[1]["message"]
    assert not list(out.glob("s1*")) and not list(out.glob(".*"))  # neither its label map nor a temp file
    single = tmp_path / "single"
    code = _segment_raw(images[1], single, tiny_model)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left" in err
    assert "single/s1_brain_mask.nii.gz: cannot write" in err  # the output's name, not the temporary file's
    assert not single.exists() or not [p for p in single.iterdir()]


def _segment_raw(image, out, model) -> int:
    return main(
        ["segment", str(image), "-o", str(out), "--skull-strip", "never", "--model", str(model), "--no-progress"]
    )


def _check_visible_files_are_whole(out: Path) -> None:
    for path in out.iterdir():
        if path.name.startswith("."):
            continue
        if path.name.endswith(".nii.gz"):
            np.asarray(nib.load(path).dataobj)  # a truncated gzip raises here
        elif path.name.endswith(".png"):
            Image.open(path).load()
        elif path.name.endswith(".json"):
            json.loads(path.read_text())
        elif path.name.endswith("_volumes.csv"):
            comments, rows = read_volumes_csv(path)
            assert comments and rows
        elif path.name == "segment_summary.csv":
            assert path.read_text().startswith("case,input,status")


def test_kill_9_at_random_moments_then_rerun_gives_identical_outputs(tmp_path, tiny_model):
    images = [_write(tmp_path / f"s{i}.nii.gz", i) for i in range(3)]
    argv = [sys.executable, "-m", "brainseg", "segment", *map(str, images), "--model", str(tiny_model)]
    argv += ["--skull-strip", "never", "--no-progress", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    reference = tmp_path / "reference"
    start = time.perf_counter()
    subprocess.run([*argv, "-o", str(reference)], check=True, env=env, capture_output=True)
    duration = time.perf_counter() - start
    expected = {p.name: p.read_bytes() for p in reference.iterdir() if p.name != "segment_summary.csv"}
    assert len(expected) == 3 * 5
    # Six kills spread over the whole run (one in each sixth of it, at a random point of that sixth) reach
    # the moments twenty uniform ones did, at a third of the suite time.
    rng = np.random.default_rng(20240919)
    edges = np.linspace(0.3, duration, 7)
    for trial in range(6):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen([*argv, "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(edges[trial], edges[trial + 1]))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            _check_visible_files_are_whole(out)
        subprocess.run([*argv, "-o", str(out)], check=True, env=env, capture_output=True)
        got = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "segment_summary.csv"}
        assert got.keys() == expected.keys(), trial
        assert all(got[name] == expected[name] for name in expected), trial
