"""Real-world inputs end to end (slow; need ../shared/data, present in CI).

- the skull-stripped detector on every MICCAI 2012 and IBSR scan and on the whole-head scans;
- ``brainseg segment`` with no option on each whole-head scan: a brain-sized segmentation on the input grid,
  nothing labelled outside the brain;
- a batch of 5 real subjects with a corrupt file in the middle, then a re-run after fixing it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli.main import main
from brainseg.io.nifti import load_volume
from brainseg.preprocessing.skull_strip import BrainExtractor, detect_skull_stripped
from brainseg.reporting import read_volumes_csv
from brainseg.reporting.volumes import voxel_volume_mm3

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
WHOLE_HEAD = DATA / "whole_head"
IBSR = DATA / "ibsr18"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (present in CI; see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="module")
def extractor() -> BrainExtractor:
    return BrainExtractor()


def _stripped(path: Path, extractor: BrainExtractor) -> tuple[bool, str]:
    volume = load_volume(path)
    stripped, _, _, reason = detect_skull_stripped(volume.data, voxel_volume_mm3(volume.affine) / 1000, extractor)
    return stripped, reason


def test_detector_calls_every_miccai_and_ibsr_scan_skull_stripped(miccai_dir, extractor):
    scans = sorted(miccai_dir.glob("*_SS.nii.gz")) + sorted(_need(IBSR).glob("*/IBSR_*/IBSR_??.nii.gz"))
    assert len(scans) == 15 + 18
    for scan in scans:
        stripped, reason = _stripped(scan, extractor)
        assert stripped, f"{scan.name}: {reason}"


def test_detector_on_the_whole_head_folder(extractor):
    # brainchop's sample is a whole head; the 'colin27_ch2' file turns out to be brain-extracted already
    # (no skull or scalp in it; 0.5 % of its non-zero volume lies outside deepbet's mask), so it is kept as is.
    assert _stripped(_need(WHOLE_HEAD) / "brainchop_t1_crop.nii.gz", extractor)[0] is False
    assert _stripped(WHOLE_HEAD / "colin27_ch2.nii.gz", extractor)[0] is True


@pytest.mark.parametrize("name", ["brainchop_t1_crop", "colin27_ch2"])
def test_whole_head_scans_segment_with_no_option(tmp_path, name):
    image = _need(WHOLE_HEAD) / f"{name}.nii.gz"
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--no-progress"]) == 0
    source = nib.load(image)
    seg = nib.load(out / f"{name}_seg.nii.gz")
    mask = nib.load(out / f"{name}_brain_mask.nii.gz")
    assert seg.shape == source.shape[:3] == mask.shape
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-5)
    labels, brain = np.asarray(seg.dataobj), np.asarray(mask.dataobj) > 0
    assert not labels[~brain].any()  # nothing labelled outside the brain mask
    voxel_ml = voxel_volume_mm3(source.affine) / 1000
    assert 1000 < brain.sum() * voxel_ml < 2000  # an adult brain (plus CSF), not a 3.5 l head
    comments, rows = read_volumes_csv(out / f"{name}_volumes.csv")
    total_ml = sum(float(r["volume_mm3"]) for r in rows) / 1000
    assert 900 < total_ml < 1900 and len(rows) > 120
    expected = "brain extracted with deepbet" if name == "brainchop_t1_crop" else "input used as skull-stripped"
    assert any(expected in line for line in comments), comments


def test_batch_of_five_real_subjects_with_a_corrupt_one(miccai_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ids = ["1000", "1001", "1002", "1006", "1007"]
    for case in ids:
        shutil.copy(miccai_dir / f"{case}_SS.nii.gz", data / f"{case}.nii.gz")
    good = (data / "1002.nii.gz").read_bytes()
    (data / "1002.nii.gz").write_bytes(good[: len(good) // 2])
    listing = tmp_path / "scans.txt"
    listing.write_text("".join(f"data/{case}.nii.gz\n" for case in ids))
    out = tmp_path / "out"
    args = ["segment", str(listing), "-o", str(out), "--model", "basenet", "--no-progress"]
    assert main(args) == 1
    with open(out / "segment_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok", "ok"]
    assert "1002.nii.gz" in rows[2]["message"] and not list(out.glob("1002*"))
    assert all((out / f"{case}_seg.nii.gz").is_file() for case in ids if case != "1002")
    (data / "1002.nii.gz").write_bytes(good)
    assert main(args) == 0
    with open(out / "segment_summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["skipped", "skipped", "ok", "skipped", "skipped"]
