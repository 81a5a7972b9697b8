"""Train your own: a protocol brainseg has never seen, end to end through the commands of the README.

Tiny synthetic 'brains' labelled 0, 2, 41, 1002, 2035 (non-contiguous, above 255), anisotropic voxels
and a non-identity affine: ``brainseg labels`` builds the table from the data (names from a colour
table), a short ``train`` runs with ``training.labels`` naming it, ``segment`` writes those label
numbers, ``evaluate`` scores them by name.
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import yaml

from brainseg.cli.main import main
from brainseg.labels import LabelTable, read_lut
from brainseg.model_folder import write_checksums
from brainseg.postprocessing.prior import ClassPrior
from brainseg.reporting import read_volumes_csv

LUT = """# a FreeSurfer-style colour table
#No. Label Name:                R   G   B   A
0   Unknown                     0   0   0   0
2   Left-Cerebral-White-Matter  245 245 245 0
41  Right-Cerebral-White-Matter 0   225 0   0
1002 ctx-lh-caudalanteriorcingulate 125 100 160 0
2035 ctx-rh-insula              255 192 32  0
"""
AFFINE = np.array([[0.0, -1.2, 0.0, 30.0], [1.0, 0.0, 0.0, -20.0], [0.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _case(folder, case_id, seed, extra_label=None, affine=AFFINE):
    """A 22 x 18 x 12 ellipsoid split in four quadrants labelled 2, 41, 1002, 2035, with intensities per label."""
    rng = np.random.default_rng(seed)
    shape = (22, 18, 12)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = zz**2 + yy**2 + xx**2 < 0.8
    labels = np.where(zz < 0, np.where(yy < 0, 2, 41), np.where(yy < 0, 1002, 2035))
    labels = np.where(brain, labels, 0).astype(np.int16)
    if extra_label is not None:
        labels[brain & (xx > 0.5)] = extra_label
    means = {0: 0.0, 2: 60.0, 41: 100.0, 1002: 140.0, 2035: 180.0, extra_label: 220.0}
    image = np.vectorize(means.get)(labels).astype(np.float32)
    image = np.where(brain, image + 4 * rng.standard_normal(shape), 0).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), folder / f"{case_id}_SS.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{case_id}_glm.nii.gz")


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, case_id in enumerate(("s1", "s2", "s3")):
        _case(data, case_id, i)
    (tmp_path / "lut.txt").write_text(LUT)
    assert main(["manifest", str(data), "-o", str(tmp_path / "cases.csv")]) == 0
    return tmp_path


def test_lut_reader_keeps_names_and_colours(tmp_path):
    (tmp_path / "lut.txt").write_text(LUT)
    lut = read_lut(tmp_path / "lut.txt")
    assert lut[2035] == ("ctx-rh-insula", (255, 192, 32)) and lut[0][0] == "Unknown" and len(lut) == 5
    (tmp_path / "bad.txt").write_text("0 Unknown 0 0 0 0\n17 Left-Hippocampus 220 216 300 0\n")
    with pytest.raises(ValueError, match="line 2"):
        read_lut(tmp_path / "bad.txt")


def test_labels_builds_the_table_from_the_data(dataset, capsys):
    out = dataset / "labels.tsv"
    assert (
        main(["labels", str(dataset / "cases.csv"), "-o", str(out), "--lut", str(dataset / "lut.txt"), "--no-progress"])
        == 0
    )
    table = LabelTable.from_tsv(out)
    assert table.labels == (0, 2, 41, 1002, 2035)
    assert table.names[1:] == (
        "Left-Cerebral-White-Matter",
        "Right-Cerebral-White-Matter",
        "ctx-lh-caudalanteriorcingulate",
        "ctx-rh-insula",
    )
    assert table.colors[4] == (255, 192, 32)
    with open(out) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["cases"] for r in rows] == ["3"] * 5
    voxels = {int(r["label"]): int(r["voxels"]) for r in rows}
    expected = {}
    for case_id in ("s1", "s2", "s3"):
        values, counts = np.unique(
            np.asarray(nib.load(dataset / "data" / f"{case_id}_glm.nii.gz").dataobj), return_counts=True
        )
        for v, n in zip(values, counts):
            expected[int(v)] = expected.get(int(v), 0) + int(n)
    assert voxels == expected
    assert "5 classes" in capsys.readouterr().out


def test_merge_and_ignore(dataset):
    out = dataset / "merged.tsv"
    argv = ["labels", str(dataset / "cases.csv"), "-o", str(out), "--no-progress"]
    assert main(argv + ["--merge", "1002,2035:3", "--ignore", "41"]) == 0
    table = LabelTable.from_tsv(out)
    assert table.labels == (0, 2, 3) and table.names == ("Background", "label 2", "label 3")
    assert table.merged == ((41,), (), (1002, 2035))
    label_map = np.array([0, 2, 41, 1002, 2035, 3, 7])
    np.testing.assert_array_equal(table.to_classes(label_map), [0, 1, 0, 2, 2, 2, 0])
    assert main(argv + ["--merge", "2:41", "--ignore", "41"]) == 2  # merged into an ignored label
    assert main(argv + ["--merge", "2:41", "--merge", "2:1002"]) == 2  # merged twice


def test_a_label_missing_from_some_cases_is_reported(dataset, capsys):
    _case(dataset / "data", "s4", 4, extra_label=10000)
    assert main(["manifest", str(dataset / "data"), "-o", str(dataset / "cases.csv")]) == 0
    capsys.readouterr()
    assert main(["labels", str(dataset / "cases.csv"), "-o", str(dataset / "l.tsv"), "--no-progress"]) == 0
    assert "missing from some cases: 10000" in capsys.readouterr().out
    assert LabelTable.from_tsv(dataset / "l.tsv").labels[-1] == 10000


@pytest.mark.parametrize("labels_setting", ["table", "auto"])
def test_train_segment_evaluate_an_unseen_protocol(dataset, capsys, labels_setting):
    assert (
        main(
            [
                "labels",
                str(dataset / "cases.csv"),
                "-o",
                str(dataset / "labels.tsv"),
                "--lut",
                str(dataset / "lut.txt"),
                "--no-progress",
            ]
        )
        == 0
    )
    config = {
        "model": {"branch_widths": [4, 8], "mix_channels": 8, "fc_widths": [32], "dropout": 0.0, "batch_norm": True},
        "training": {
            "manifest": "cases.csv",
            "labels": "labels.tsv" if labels_setting == "table" else "auto",
            **({"lut": "lut.txt"} if labels_setting == "auto" else {}),
            "train_cases": ["s1", "s2"],
            "validation_cases": ["s3"],
            "epochs": 3,
            "samples_per_epoch": 2048,
            "batch_size": 64,
            "learning_rate": 0.05,
            "sampling": "balanced",
            "num_threads": 1,
        },
    }
    (dataset / "config.yaml").write_text(yaml.safe_dump(config))
    model = dataset / "model"
    assert main(["train", str(dataset / "config.yaml"), "-o", str(model), "--no-progress"]) == 0
    table = LabelTable.from_tsv(model / "labels.tsv")
    assert table.labels == (0, 2, 41, 1002, 2035) and table.names[4] == "ctx-rh-insula"
    assert yaml.safe_load((model / "config.yaml").read_text())["model"]["num_classes"] == 5
    out = dataset / "out"
    image = dataset / "data" / "s3_SS.nii.gz"
    assert (
        main(["segment", str(image), "-o", str(out), "--model", str(model), "--skull-strip", "never", "--no-progress"])
        == 0
    )
    seg = nib.load(out / "s3_SS_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-5)
    predicted = np.asarray(seg.dataobj)
    assert set(np.unique(predicted)) <= {0, 2, 41, 1002, 2035} and 2035 in predicted and 1002 in predicted
    _, rows = read_volumes_csv(out / "s3_SS_volumes.csv")
    assert [r["name"] for r in rows][-1] == "ctx-rh-insula" and [int(r["label"]) for r in rows] == [2, 41, 1002, 2035]
    capsys.readouterr()
    scores = dataset / "scores.csv"
    argv = ["evaluate", str(out / "s3_SS_seg.nii.gz"), str(dataset / "data" / "s3_glm.nii.gz"), "-o", str(scores)]
    assert main(argv + ["--model", str(model)]) == 0
    with open(scores) as f:
        rows = [r for r in csv.DictReader(f) if r["case_id"] != "mean"]
    by_name = {r["name"]: float(r["dice"]) for r in rows if r["name"]}
    assert set(by_name) >= {"Left-Cerebral-White-Matter", "ctx-rh-insula"}
    assert by_name["ctx-rh-insula"] > 0.7  # four intensity-coded quadrants: an easy task


def test_training_records_the_class_prior_and_segment_applies_its_strength(tmp_path, capsys):
    # 1 mm voxels (axes permuted and flipped): the network's grid is the label maps' grid, so the
    # frequencies can be checked by hand on the files.
    dataset, one_mm = tmp_path, np.array([[0.0, -1, 0, 30], [1, 0, 0, -20], [0, 0, 1, 5], [0, 0, 0, 1]])
    (dataset / "data").mkdir()
    for i, case_id in enumerate(("s1", "s2", "s3")):
        _case(dataset / "data", case_id, i, affine=one_mm)
    assert main(["manifest", str(dataset / "data"), "-o", str(dataset / "cases.csv")]) == 0
    config = {
        "model": {"branch_widths": [4, 8], "mix_channels": 8, "fc_widths": [32], "dropout": 0.0},
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["s1", "s2"],
            "validation_cases": ["s3"],
            "epochs": 1,
            "samples_per_epoch": 1024,
            "batch_size": 64,
            "sampling": "balanced",
            "num_threads": 1,
        },
    }
    (dataset / "config.yaml").write_text(yaml.safe_dump(config))
    model = dataset / "model"
    assert main(["train", str(dataset / "config.yaml"), "-o", str(model), "--no-progress", "--no-card"]) == 0
    prior = ClassPrior.load(model / "class_prior.json")
    # By hand: each case's share of its brain voxels per label, averaged over the two cases; balanced: 1/4 each.
    shares = []
    for case_id in ("s1", "s2"):
        labels = np.asarray(nib.load(dataset / "data" / f"{case_id}_glm.nii.gz").dataobj)
        shares.append([np.mean(labels[labels > 0] == n) for n in (2, 41, 1002, 2035)])
    np.testing.assert_allclose(prior.brain, [0.0, *np.mean(shares, axis=0)], atol=1e-9)
    np.testing.assert_allclose(prior.sampling, [0.0, 0.25, 0.25, 0.25, 0.25], atol=1e-12)
    assert prior.strength == 0.0  # no correction until a strength is chosen on validation data

    image = dataset / "data" / "s3_SS.nii.gz"

    def count_2035(out):
        argv = ["segment", str(image), "-o", str(dataset / out), "--model", str(model), "--skull-strip", "never"]
        assert main(argv + ["--no-progress"]) == 0
        return int((np.asarray(nib.load(dataset / out / "s3_SS_seg.nii.gz").dataobj) == 2035).sum())

    before = count_2035("out0")
    # calibrate: its strength-0 row scores what segment wrote, as brainseg evaluate does
    capsys.readouterr()
    (model / "model_card.md").write_text("# old card\n\n## Known limitations\n\n- a note by hand\n\n## Data\n- old\n")
    assert main(["calibrate", str(model), "--strengths", "0,3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    card = (model / "model_card.md").read_text()  # rescored with the chosen strength; the note by hand kept
    assert (
        "# old card" not in card and "- old" not in card and card.endswith("## Known limitations\n\n- a note by hand\n")
    )
    assert "Sampling prior correction at inference: strength" in card and "| VS |" in card
    with open(model / "prior_calibration.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["strength"]) for r in rows] == [0.0, 3.0] and sum(r["chosen"] == "yes" for r in rows) == 1
    chosen = float(next(r["strength"] for r in rows if r["chosen"] == "yes"))
    assert ClassPrior.load(model / "class_prior.json").strength == chosen and "<- chosen" in printed
    scores = dataset / "scores.csv"
    assert (
        main(
            [
                "evaluate",
                str(dataset / "out0" / "s3_SS_seg.nii.gz"),
                str(dataset / "data" / "s3_glm.nii.gz"),
                "--model",
                str(model),
                "--no-distances",
                "-o",
                str(scores),
            ]
        )
        == 0
    )
    with open(scores) as f:
        mean_row = [r for r in csv.DictReader(f) if r["case_id"] == "mean"][0]
    assert float(rows[0]["dice"]) == pytest.approx(float(mean_row["dice"]), abs=1e-4)
    ClassPrior(np.array([0.0, 0.01, 0.01, 0.01, 0.97]), prior.sampling, 3.0).save(model / "class_prior.json")
    write_checksums(model)
    assert count_2035("out1") > before  # a strong prior for 2035 grows it
