"""Tests of brainseg.io.manifest: folder scanning and manifest CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainseg.errors import InputError
from brainseg.io.discovery import scan_folder
from brainseg.io.manifest import Case, read_manifest, write_manifest


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
    # a bad --pattern used to end in a traceback (re.error, or IndexError once a file matched)
    _touch(tmp_path, "1000_SS.nii.gz")
    with pytest.raises(InputError, match=r"image pattern \(--pattern\) '\(\?P<case_id>' is not a regular expression"):
        scan_folder(tmp_path, "(?P<case_id>")
    with pytest.raises(InputError, match="has no .* group; put one around the case id"):
        scan_folder(tmp_path, r"(\d+)_SS\.nii\.gz")


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
    path.write_text("case_id,image\na,a.nii.gz\nb,\n")  # an empty image cell used to give a Case with image None
    with pytest.raises(InputError, match="m.csv: row 3 has an empty case_id or image"):
        read_manifest(path)


# --- datasets as people keep them: patterns and BIDS ---------------------------------------------------

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from brainseg.cli.main import main  # noqa: E402
from brainseg.io.discovery import pair_by_patterns, scan_bids  # noqa: E402


def _nifti(path: Path, shape=(6, 7, 5), affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4) if affine is None else affine), path)
    return path


def test_patterns_pair_images_and_labels_in_separate_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for sub in ("sub-01", "sub-02"):
        _nifti(tmp_path / "imgs" / f"{sub}_T1w.nii.gz")
        _nifti(tmp_path / "labs" / f"{sub}_dseg.nii.gz")
    cases = pair_by_patterns("imgs/*_T1w.nii.gz", "labs/*_dseg.nii.gz")
    assert [c.case_id for c in cases] == ["sub-01", "sub-02"]
    assert cases[1].label_map == Path("labs/sub-02_dseg.nii.gz")
    assert main(["manifest", "--images", "imgs/*_T1w.nii.gz", "--labels", "labs/*_dseg.nii.gz", "-o", "m.csv"]) == 0
    assert [c.case_id for c in read_manifest(tmp_path / "m.csv")] == ["sub-01", "sub-02"]


def test_patterns_across_folders_and_images_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _nifti(tmp_path / "data" / "a" / "scan.nii.gz")
    _nifti(tmp_path / "data" / "b" / "scan.nii.gz")
    cases = pair_by_patterns("data/*/scan.nii.gz")  # file names repeat: the folder wildcard names the case
    assert [c.case_id for c in cases] == ["a", "b"] and cases[0].label_map is None


def test_every_unmatched_file_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _nifti(tmp_path / "imgs" / "sub-01_T1w.nii.gz")
    _nifti(tmp_path / "imgs" / "sub-02_T1w.nii.gz")
    _nifti(tmp_path / "labs" / "sub-01_dseg.nii.gz")
    _nifti(tmp_path / "labs" / "sub-03_dseg.nii.gz")
    code = main(["manifest", "--images", "imgs/*_T1w.nii.gz", "--labels", "labs/*_dseg.nii.gz", "-o", "m.csv"])
    err = capsys.readouterr().err
    assert code == 2 and "imgs/sub-02_T1w.nii.gz" in err and "labs/sub-03_dseg.nii.gz" in err and "2 file(s)" in err
    assert not (tmp_path / "m.csv").exists()
    assert main(["manifest", "--images", "nothing/*.nii.gz", "-o", "m.csv"]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_label_map_on_another_grid_names_both_grids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _nifti(tmp_path / "imgs" / "s1_T1w.nii.gz", affine=np.diag([1.0, 1.0, 1.2, 1.0]))
    _nifti(tmp_path / "labs" / "s1_dseg.nii.gz", shape=(6, 7, 6))
    with pytest.raises(
        InputError,
        match=r"s1_dseg.nii.gz \(6x7x6 voxels of 1 x 1 x 1 mm.*grid of its image .*s1_T1w.nii.gz \(6x7x5 voxels of 1 x 1 x 1.2 mm",
    ):
        pair_by_patterns("imgs/*_T1w.nii.gz", "labs/*_dseg.nii.gz")


def test_bids_dataset_with_derivatives(tmp_path):
    root = tmp_path / "bids"
    _nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _nifti(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz")
    _nifti(root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_run-1_T1w.nii.gz")
    (root / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"")  # not a T1w: ignored
    deriv = root / "derivatives" / "manual"
    _nifti(deriv / "sub-01" / "anat" / "sub-01_desc-manual_dseg.nii.gz")
    _nifti(deriv / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_space-orig_dseg.nii.gz")
    cases = scan_bids(root)
    assert [c.case_id for c in cases] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2_run-1"]
    assert cases[0].label_map.name == "sub-01_desc-manual_dseg.nii.gz"
    assert cases[1].label_map.name == "sub-02_ses-1_space-orig_dseg.nii.gz" and cases[2].label_map is None
    _nifti(deriv / "sub-03" / "anat" / "sub-03_dseg.nii.gz")  # no such subject
    with pytest.raises(InputError, match="sub-03_dseg.nii.gz"):
        scan_bids(root)
    assert main(["manifest", str(root), "--bids", "--derivatives", "nope", "-o", str(tmp_path / "m.csv")]) == 2


def test_pattern_case_id_is_the_stretch_the_wildcards_cover(tmp_path, monkeypatch):
    """'IBSR_??' names IBSR_01 '01' (one stretch, not '0_1'); folders with repeated set names do not leak in."""
    monkeypatch.chdir(tmp_path)
    for folder, case in (("Training_Set", "01"), ("Training_Set", "03"), ("Validation_Set", "11")):
        _nifti(tmp_path / folder / f"IBSR_{case}" / f"IBSR_{case}.nii.gz")
        _nifti(tmp_path / folder / f"IBSR_{case}" / f"IBSR_{case}_seg.nii.gz")
    cases = pair_by_patterns("*_Set/*/IBSR_??.nii.gz", "*_Set/*/IBSR_??_seg.nii.gz")
    assert [c.case_id for c in cases] == ["01", "03", "11"]
    assert all(c.label_map.name == f"IBSR_{c.case_id}_seg.nii.gz" for c in cases)


def test_write_manifest_relative_paths_move_with_the_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _nifti(tmp_path / "data" / "imgs" / "s1_T1w.nii.gz")
    _nifti(tmp_path / "data" / "labs" / "s1_dseg.nii.gz")
    (tmp_path / "data" / "lists").mkdir()
    csv_path = tmp_path / "data" / "lists" / "m.csv"
    assert (
        main(
            [
                "manifest",
                "--images",
                "data/imgs/*_T1w.nii.gz",
                "--labels",
                "data/labs/*_dseg.nii.gz",
                "-o",
                str(csv_path),
                "--relative",
            ]
        )
        == 0
    )
    assert csv_path.read_text().splitlines()[1] == "s1,../imgs/s1_T1w.nii.gz,../labs/s1_dseg.nii.gz,"
    (tmp_path / "data").rename(tmp_path / "moved")
    (case,) = read_manifest(tmp_path / "moved" / "lists" / "m.csv")
    assert case.image.resolve() == (tmp_path / "moved" / "imgs" / "s1_T1w.nii.gz").resolve() and case.image.is_file()
