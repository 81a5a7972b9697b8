"""``brainseg evaluate``: hand-checkable scores, CSV/JSON outputs, batch form, errors."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli.main import main


def _save(path, data, zooms=(1.0, 1.0, 2.0)):
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag(list(zooms) + [1.0])), path)
    return path


@pytest.fixture
def pair(tmp_path):
    """3rd ventricle (label 4): prediction 4 voxels inside a 6-voxel reference -> Dice 0.8.

    4th ventricle (label 11): one voxel each, 3 voxels apart along the 2 mm axis -> HD 6 mm.
    """
    reference = np.zeros((6, 6, 8), np.int16)
    prediction = np.zeros_like(reference)
    reference[1, 1, 0:6] = 4
    prediction[1, 1, 0:4] = 4
    reference[4, 4, 1] = 11
    prediction[4, 4, 4] = 11
    return _save(tmp_path / "pred.nii.gz", prediction), _save(tmp_path / "ref.nii.gz", reference)


def test_single_pair_scores(tmp_path, pair, capsys):
    out_csv, out_json = tmp_path / "s.csv", tmp_path / "s.json"
    assert main(["evaluate", str(pair[0]), str(pair[1]), "-o", str(out_csv), "--json", str(out_json)]) == 0
    with open(out_csv) as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    assert float(rows["4"]["dice"]) == pytest.approx(0.8)
    assert float(rows["11"]["dice"]) == 0.0
    assert float(rows["11"]["hausdorff"]) == pytest.approx(6.0)
    # prediction end (z=3) is 2 voxels * 2 mm from the reference end (z=5)
    assert float(rows["4"]["hausdorff"]) == pytest.approx(4.0)
    assert float(rows["4"]["volumetric_similarity"]) == pytest.approx(0.8)
    mean = rows[""]
    assert mean["case_id"] == "mean" and mean["name"] == "all"
    assert float(mean["dice"]) == pytest.approx(0.4)  # structures absent from both are left out
    data = json.loads(out_json.read_text())
    assert data["mean"]["dice"] == pytest.approx(0.4)
    absent = [s for s in data["structures"] if s["label"] == 23][0]
    assert absent["dice"] is None and absent["hausdorff"] is None
    assert "Dice 0.4000" in capsys.readouterr().out


def test_no_distances_says_so(pair, capsys):
    assert main(["evaluate", str(pair[0]), str(pair[1]), "--no-distances"]) == 0
    out = capsys.readouterr().out
    assert "Dice 0.4000, distances not computed (--no-distances), VS" in out
    assert "nan" not in out


def test_missing_on_one_side_counts(tmp_path, capsys):
    reference = np.zeros((5, 5, 5), np.int16)
    reference[2, 2, 2] = 4
    p = _save(tmp_path / "p.nii.gz", np.zeros_like(reference))
    r = _save(tmp_path / "r.nii.gz", reference)
    assert main(["evaluate", str(p), str(r), "--json", str(tmp_path / "o.json")]) == 0
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["mean"]["missing"] == 1 and data["mean"]["dice"] == 0.0
    assert data["mean"]["hausdorff"] is None


def test_batch_over_manifest(tmp_path, pair, capsys):
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    (pred_dir / "c1_seg.nii.gz").write_bytes(pair[0].read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case_id,image,label_map\nc1,img.nii.gz,{pair[1].name}\n")
    out = tmp_path / "batch.csv"
    assert main(["evaluate", "--manifest", str(manifest), "--predictions", str(pred_dir), "-o", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["case_id"] == "c1" and rows[-1]["case_id"] == "mean"


def test_grid_mismatch_is_an_input_error(tmp_path, pair, capsys):
    other = _save(tmp_path / "other.nii.gz", np.zeros((6, 6, 8)), zooms=(1.0, 1.0, 1.0))
    assert main(["evaluate", str(other), str(pair[1])]) == 2
    err = capsys.readouterr().err
    assert "not on the grid" in err and len(err.strip().splitlines()) == 1


def test_needs_two_maps_or_a_manifest(capsys):
    assert main(["evaluate"]) == 2
    assert "PREDICTION and REFERENCE" in capsys.readouterr().err
