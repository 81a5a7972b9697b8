"""Tests of brainseg.io.manifest: folder scanning and manifest CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainseg.errors import InputError
from brainseg.io.manifest import Case, read_manifest, scan_folder, write_manifest


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


@pytest.fixture
def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    _touch(
        folder,
        "1000_3_SS.nii.gz",
        "1000_3_glm.nii.gz",
        "1000_3_mask.nii.gz",  # full case
        "1001_3_SS.nii.gz",
        "1001_3_glm.nii.gz",  # no mask
        "1002_3_SS.nii",  # no label map, uncompressed
        "1002_3_glm.nii.gz",  # other extension: not matched to the .nii image
        "README.txt",
        "1003_3_glm.nii.gz",  # no image
    )
    return folder


def test_scan_folder(data_folder):
    cases = scan_folder(data_folder)
    assert [c.case_id for c in cases] == ["1000_3", "1001_3", "1002_3"]
    full, no_mask, bare = cases
    assert full == Case(
        "1000_3",
        data_folder / "1000_3_SS.nii.gz",
        data_folder / "1000_3_glm.nii.gz",
        data_folder / "1000_3_mask.nii.gz",
    )
    assert no_mask.label_map == data_folder / "1001_3_glm.nii.gz"
    assert no_mask.mask is None
    assert bare.image == data_folder / "1002_3_SS.nii"
    assert bare.label_map is None and bare.mask is None


def test_scan_folder_custom_pattern(tmp_path):
    _touch(tmp_path, "sub-01_T1w.nii.gz", "sub-01_seg.nii.gz")
    cases = scan_folder(tmp_path, r"(?P<case_id>sub-\d+)_T1w\.nii\.gz$", label_suffix="_seg")
    assert cases == [Case("sub-01", tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-01_seg.nii.gz", None)]


def test_scan_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        scan_folder(tmp_path / "absent")
    _touch(tmp_path, "notes.txt")
    with pytest.raises(InputError, match="no image matches"):
        scan_folder(tmp_path)


def test_manifest_round_trip(data_folder, tmp_path):
    cases = scan_folder(data_folder)
    path = write_manifest(tmp_path / "cases.csv", cases)
    assert path == tmp_path / "cases.csv"
    back = read_manifest(path)
    resolved = [
        Case(c.case_id, *(Path(p).resolve() if p else None for p in (c.image, c.label_map, c.mask))) for c in cases
    ]
    assert back == resolved
    assert all(c.image.is_absolute() for c in back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv", "data"]  # no temp file left


def test_write_manifest_header(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [Case("a", tmp_path / "a.nii.gz")])
    lines = path.read_text().splitlines()
    assert lines[0] == "case_id,image,label_map,mask"
    assert lines[1] == f"a,{(tmp_path / 'a.nii.gz').resolve()},,"


def test_relative_paths_resolve_against_csv(tmp_path, monkeypatch):
    sub = tmp_path / "lists"
    sub.mkdir()
    path = sub / "m.csv"
    path.write_text("case_id,image,label_map\nc1,../data/c1_SS.nii.gz,c1_glm.nii.gz\nc2,/abs/c2.nii,\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c1, c2 = read_manifest(path)
    assert c1.image == sub / "../data/c1_SS.nii.gz"
    assert c1.image.resolve() == (tmp_path / "data" / "c1_SS.nii.gz").resolve()
    assert c1.label_map == sub / "c1_glm.nii.gz"
    assert c1.mask is None
    assert c2.image == Path("/abs/c2.nii")
    assert c2.label_map is None


def test_duplicate_case_ids(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("case_id,image\na,a.nii.gz\nb,b.nii.gz\na,c.nii.gz\n")
    with pytest.raises(InputError, match="unique"):
        read_manifest(path)


def test_manifest_missing_or_bad_columns(tmp_path):
    with pytest.raises(InputError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv")
    path = tmp_path / "m.csv"
    path.write_text("id,path\na,a.nii.gz\n")
    with pytest.raises(InputError, match="columns"):
        read_manifest(path)
    path.write_text("")
    with pytest.raises(InputError, match="columns"):
        read_manifest(path)
