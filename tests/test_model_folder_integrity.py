"""Model folders are data, not code: unknown files, checksums, no unpickling, versions, mismatched files.

Every refusal is checked through ``brainseg segment`` as a user meets it: exit status 2, one line naming
the file and the fix, and nothing written.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from brainseg.cli.main import main
from brainseg.config import FORMAT_VERSION, Config, ModelConfig
from brainseg.labels import LabelTable
from brainseg.model_folder import CHECKSUMS, PAYLOAD, load_model_folder, save_model_folder, write_checksums
from brainseg.models import build_model
from brainseg.preprocessing.intensity import IntensityNormalization

LABELS = LabelTable((0, 4, 11, 23), ("Background", "3rd Ventricle", "4th Ventricle", "Right Accumbens Area"))
SMALL = dict(num_classes=4, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), dropout=0.0)


class _Exploit:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def _malicious_pickle(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"network": _Exploit(marker)}, f)
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    torch.manual_seed(0)
    network = build_model(ModelConfig(**SMALL)).eval()
    return save_model_folder(
        tmp_path / "model", Config(ModelConfig(**SMALL)), LABELS, IntensityNormalization(), network
    )


@pytest.fixture
def image(tmp_path) -> Path:
    shape = (20, 24, 16)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    data = np.where(zz**2 + yy**2 + xx**2 < 0.8, 100 + 20 * np.random.default_rng(0).standard_normal(shape), 0)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([-1.0, 1.2, 2.0, 1.0])), path)
    return path


def _segment(image: Path, model: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(
        ["segment", str(image), "-o", str(out), "--model", str(model), "--skull-strip", "never", "--no-progress"]
    )
    return code, capsys.readouterr().err


def _refused(image, model, tmp_path, capsys, *fragments) -> str:
    out = tmp_path / "out"
    code, err = _segment(image, model, out, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_checksums_cover_what_inference_reads_in_sha256sum_format(model):
    lines = (model / CHECKSUMS).read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert (
        set(listed)
        == {name for name in PAYLOAD if (model / name).is_file()}
        == {
            "config.yaml",
            "labels.tsv",
            "normalization.json",
            "weights.safetensors",
        }
    )
    for name, digest in listed.items():
        assert hashlib.sha256((model / name).read_bytes()).hexdigest() == digest
    assert yaml.safe_load((model / "config.yaml").read_text())["format_version"] == FORMAT_VERSION


def test_shipped_model_folders_pass_their_own_checksums():
    from brainseg.model_folder import SHIPPED_MODELS, shipped_model_dir, verify_model_folder

    for name in SHIPPED_MODELS:
        verify_model_folder(shipped_model_dir(name))
        assert (shipped_model_dir(name) / CHECKSUMS).is_file()


def test_an_intact_folder_segments(image, model, tmp_path, capsys):
    code, err = _segment(image, model, tmp_path / "out", capsys)
    assert code == 0, err


def test_unknown_files_are_refused_by_name_temporaries_ignored(image, model, tmp_path, capsys):
    (model / ".weights.safetensors.x1y2").write_bytes(b"half a file from a killed write")
    assert _segment(image, model, tmp_path / "ok", capsys)[0] == 0
    (model / "model.pth").write_bytes(b"another tool's weights")
    _refused(image, model, tmp_path, capsys, "model.pth", "does not have", "remove")


def test_a_malicious_pickle_is_never_executed(image, model, tmp_path, capsys):
    marker = tmp_path / "pwned"
    # Under the checkpoint's name: segment never reads it.
    _malicious_pickle(model / "checkpoint.pt", marker)
    assert _segment(image, model, tmp_path / "a", capsys)[0] == 0
    assert not marker.exists()
    # Under another tool's names: refused unread.
    for name in ("model.pth", "weights.pt", "reference/atlas.pkl"):
        (model / name).parent.mkdir(exist_ok=True)
        _malicious_pickle(model / name, marker)
        _refused(image, model, tmp_path, capsys, name)
        (model / name).unlink()
    # As the weights file itself, checksums rewritten to match (a crafted folder): refused, not unpickled.
    _malicious_pickle(model / "weights.safetensors", marker)
    write_checksums(model)
    _refused(image, model, tmp_path, capsys, "weights.safetensors", "unreadable")
    assert not marker.exists()
    with open(model / "weights.safetensors", "rb") as f:  # the planted file was live: unpickling it runs code
        pickle.load(f)
    assert marker.read_text() == "code ran"


def test_resume_from_a_malicious_checkpoint_is_refused_unexecuted(tmp_path, tiny_manifest, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items() if k != "num_classes"},
                "training": {"manifest": "cases.csv", "train_cases": ["a"], "epochs": 1, "samples_per_epoch": 64},
            }
        )
    )
    out = tmp_path / "run"
    out.mkdir()
    _malicious_pickle(out / "checkpoint.pt", marker)
    code = main(["train", str(config), "-o", str(out), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not a brainseg training checkpoint" in err and "checkpoint.pt" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_missing_and_truncated_weights(image, model, tmp_path, capsys):
    good = (model / "weights.safetensors").read_bytes()
    (model / "weights.safetensors").write_bytes(good[: len(good) // 2])
    _refused(image, model, tmp_path, capsys, "weights.safetensors", "sha256 differs", "truncated")
    write_checksums(model)  # even with matching checksums a truncated file is one clear line
    _refused(image, model, tmp_path, capsys, "weights.safetensors", "unreadable")
    (model / "weights.safetensors").unlink()
    _refused(image, model, tmp_path, capsys, "missing weights.safetensors")


def test_missing_or_tampered_checksums(image, model, tmp_path, capsys):
    text = (model / CHECKSUMS).read_text()
    (model / "labels.tsv").write_text((model / "labels.tsv").read_text().replace("3rd Ventricle", "Hippocampus"))
    _refused(image, model, tmp_path, capsys, "labels.tsv", "sha256 differs")
    (model / CHECKSUMS).write_text(text + f"{'0' * 64}  ../../etc/passwd\n")
    _refused(image, model, tmp_path, capsys, CHECKSUMS, "line 5")
    (model / CHECKSUMS).unlink()
    _refused(image, model, tmp_path, capsys, "no checksums.sha256", "write_checksums")


def test_config_from_a_newer_brainseg(image, model, tmp_path, capsys):
    raw = yaml.safe_load((model / "config.yaml").read_text())
    (model / "config.yaml").write_text(yaml.safe_dump({**raw, "format_version": FORMAT_VERSION + 1}, sort_keys=False))
    write_checksums(model)
    _refused(
        image,
        model,
        tmp_path,
        capsys,
        "config.yaml",
        "newer brainseg",
        f"format_version {FORMAT_VERSION + 1}",
        "upgrade",
    )
    raw["model"]["crf_iterations"] = 5  # a setting this brainseg does not know
    (model / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_checksums(model)
    _refused(image, model, tmp_path, capsys, "crf_iterations", "newer brainseg")


def test_label_table_that_does_not_match_the_weights(image, model, tmp_path, capsys):
    five = LabelTable((0, 4, 11, 23, 30), ("Background", "a", "b", "c", "d"))
    five.to_tsv(model / "labels.tsv")
    write_checksums(model)
    _refused(image, model, tmp_path, capsys, "labels.tsv has 5 classes", "num_classes is 4")
    raw = yaml.safe_load((model / "config.yaml").read_text())
    raw["model"]["num_classes"] = 5
    (model / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_checksums(model)
    line = _refused(image, model, tmp_path, capsys, "weights.safetensors", "5 classes of labels.tsv", "out.weight")
    assert "(4, 16)" in line and "(5, 16)" in line


def test_load_model_folder_reads_a_copied_folder(model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    assert load_model_folder(copy).labels == LABELS
