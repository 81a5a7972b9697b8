"""The spatial priors end to end on tiny synthetic cases: atlas build, training, segmenting, ablation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml

from brainseg.cli.main import main
from brainseg.model_folder import load_model_folder
from brainseg.preprocessing.reference import load_reference

SMALL = {
    "branch_widths": [4, 8],
    "mix_channels": 8,
    "fc_widths": [32, 16],
    "dropout": 0.0,
    "batch_norm": True,
}


@pytest.fixture
def reference(tiny_manifest):
    out = tiny_manifest.parent / "reference"
    assert main(["atlas", "build", str(tiny_manifest), "-o", str(out), "--cases", "a", "b", "--no-progress"]) == 0
    return out


def _config(folder, name, model=None, training=None):
    config = {
        "model": {**SMALL, "name": "ganaye2018", **(model or {})},
        "training": {
            "manifest": "cases.csv",
            "reference": "reference",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 1,
            "samples_per_epoch": 256,
            "batch_size": 64,
            "learning_rate": 0.05,
            "sampling": "mixed",
            "num_threads": 1,
            **(training or {}),
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


FULL = {"landmarks": 3, "distance_filters": 2, "distance_width": 8, "prob_branch": True}
FULL.update({"branch_3d_widths": [2, 4], "auxiliary": True})
FULL_TRAINING = {"auxiliary_weights": [0.3, 0.3], "augment": True}


def info_registered_to(reference):
    return json.loads((reference / "reference.json").read_text())["registered_to"]


def test_atlas_build_writes_reference(reference):
    ref = load_reference(reference)
    assert set(ref.transforms) == {"a", "b", "c"}
    # Every case, the first atlas case too, is registered to the final template (an 18-voxel ellipsoid is
    # a poor registration target, so only where its brain lands is checked): all of it inside the grid.
    from brainseg.io.manifest import read_manifest
    from brainseg.labels import LabelTable
    from brainseg.preprocessing.intensity import IntensityNormalization
    from brainseg.training.data import load_prepared_case

    for case in read_manifest(reference.parent / "cases.csv"):
        prepared, _ = load_prepared_case(case, LabelTable.miccai2012(), IntensityNormalization(), with_labels=False)
        to_template = np.linalg.inv(ref.affine) @ np.linalg.inv(ref.transforms[case.case_id])
        voxels = np.argwhere(prepared.mask) @ to_template[:3, :3].T + to_template[:3, 3]
        assert voxels.min() > 5 and np.all(voxels.max(axis=0) < np.array(ref.shape) - 6), case.case_id
    assert info_registered_to(reference) == "final template (every case, atlas cases included)"
    # The grid is the union of the brains plus the 15 mm margin, not clipped to the first case's grid.
    assert np.all(ref.affine[:3, 3] < 0)
    assert (
        ref.atlas is not None and ref.atlas.num_classes == 3
    )  # 'auto': background, 4 and 11 and ref.atlas.shape == ref.shape
    voxels = np.argwhere(np.ones(ref.shape, bool))
    probs = ref.atlas.lookup(voxels)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Cases a and b are the same sphere: the atlas is confident in the middle of each structure.
    assert probs.max() > 0.9
    info = json.loads((reference / "reference.json").read_text())
    assert info["template_cases"] == ["a", "b"] and info["template_iterations"] == 2


def test_atlas_build_refuses_existing_output(reference, capsys):
    assert main(["atlas", "build", str(reference.parent / "cases.csv"), "-o", str(reference), "--cases", "a"]) == 2
    assert "already holds a reference" in capsys.readouterr().err


def test_atlas_build_needs_the_atlas_cases_named(tiny_manifest, capsys):
    """Without --cases the validation cases would enter the atlas: refuse, and say what to give."""
    out = tiny_manifest.parent / "ref_all"
    with pytest.raises(SystemExit) as exit_info:
        main(["atlas", "build", str(tiny_manifest), "-o", str(out)])
    assert exit_info.value.code == 2
    assert "--cases" in capsys.readouterr().err and not out.exists()
    # saying so explicitly builds from every labelled case
    assert (
        main(
            [
                "atlas",
                "build",
                str(tiny_manifest),
                "-o",
                str(out),
                "--all-labelled",
                "--iterations",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "reference.json").read_text())["template_cases"] == ["a", "b", "c"]


def test_atlas_build_unknown_case(tiny_manifest, capsys):
    out = tiny_manifest.parent / "ref2"
    assert main(["atlas", "build", str(tiny_manifest), "-o", str(out), "--cases", "zz"]) == 2
    assert "no case(s)" in capsys.readouterr().err and not out.exists()


def test_full_model_trains_and_segments(reference, tmp_path):
    config = _config(tmp_path, "full", FULL, FULL_TRAINING)
    out = tmp_path / "full_model"
    assert main(["train", str(config), "-o", str(out), "--no-progress"]) == 0
    for name in ("reference/template.nii.gz", "reference/atlas.npz", "reference/reference.json", "model_card.md"):
        assert (out / name).is_file(), name
    assert not (out / "reference" / "transforms.json").exists()  # transforms of the training data stay out
    card = (out / "model_card.md").read_text()
    assert "DistBranch" in card and "ProbBranch" in card and "3dBranch" in card and "augmentation" in card
    model = load_model_folder(out)
    assert model.reference is not None and set(model.network.inputs) == {"distances", "atlas", "patches_3d"}
    image = tmp_path / "data" / "c_SS.nii.gz"
    seg_dir = tmp_path / "seg"
    assert main(["segment", str(image), "-o", str(seg_dir), "--model", str(out), "--no-progress"]) == 0
    seg = nib.load(str(seg_dir / "c_SS_seg.nii.gz"))
    src = nib.load(str(image))
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    labels = np.asarray(seg.dataobj)
    brain = np.asarray(nib.load(str(tmp_path / "data" / "c_mask.nii.gz")).dataobj) > 0
    assert not labels[~brain].any() and labels[brain].any()


def test_reference_model_without_reference_is_an_input_error(tiny_manifest, tmp_path, capsys):
    config = _config(tmp_path, "dist", {"landmarks": 3, "distance_width": 8}, {"reference": ""})
    assert main(["train", str(config), "-o", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "training.reference" in capsys.readouterr().err


def test_ablation_prints_table_and_reuses_runs(reference, tmp_path, capsys):
    base = _config(tmp_path, "basenet", {"reference_space": True})
    dist = _config(tmp_path, "dist", {"landmarks": 3, "distance_width": 8})
    out = tmp_path / "ablation"
    assert main(["ablation", str(base), str(dist), "-o", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | Dice | Hausdorff (mm) | MSD (mm) | parameters | paper Dice | paper HD")
    assert lines[1].startswith("| BaseNet |") and "| 0.694 | 40.26 | 1.74 | 1,249,415 |" in lines[1]
    assert lines[2].startswith("| +Dist (conv, no rbf) |") and "| 0.720 | 10.09 | 1.10 | 1,508,511 |" in lines[2]
    assert "Budget per row: 1 epochs x 256 training examples" in table
    assert (out / "ablation.md").read_text() == table
    # the second table: Dice over structures, each row tested against the first one (the default reference)
    assert lines[3].startswith("| model | structures | median Dice | mean Dice |")
    assert lines[4].startswith("| BaseNet | 2 |") and lines[4].endswith("| (reference) | – |")
    assert lines[5].startswith("| +Dist (conv, no rbf) | 2 |") and "against the reference row, BaseNet" in table
    for png in ("dice_by_variant.png", "dice_by_structure.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamp = (out / "basenet" / "weights.safetensors").stat().st_mtime_ns
    record = json.loads((out / "dist" / "ablation_row.json").read_text())
    assert set(record["structure_dice"]) == {"c"} and len(record["structure_dice"]["c"]) == 2
    del record["structure_dice"]  # a row recorded before per-structure Dice was kept: read from validation.csv
    assert record["config"]["training"].pop("precision") == "float32"  # ... and before this setting existed
    (out / "dist" / "ablation_row.json").write_text(json.dumps(record))
    argv = ["ablation", str(base), str(dist), "-o", str(out), "--no-progress", "--reference", "dist"]
    assert main(argv) == 0  # reused, not retrained
    assert (out / "basenet" / "weights.safetensors").stat().st_mtime_ns == stamp
    assert "against the reference row, +Dist (conv, no rbf) (`dist`)" in (out / "ablation.md").read_text()
    capsys.readouterr()
    assert main([*argv[:-1], "nosuch"]) == 2
    assert "--reference 'nosuch' names none of the configs (basenet, dist)" in capsys.readouterr().err

    # A row with the same settings in a sibling study folder is reused too (Table 2 shares a row with Table 1).
    assert main(["ablation", str(dist), "-o", str(tmp_path / "table2"), "--no-progress"]) == 0
    assert not (tmp_path / "table2" / "dist" / "weights.safetensors").exists()
    assert "+Dist (conv, no rbf)" in (tmp_path / "table2" / "ablation.md").read_text()

    # Changing a row's settings under the same name refuses to reuse (or overwrite) the old run.
    dist_stamp = (out / "dist" / "weights.safetensors").stat().st_mtime_ns
    changed = _config(tmp_path, "dist", {"landmarks": 3, "distance_width": 8, "distance_rbf": True})
    capsys.readouterr()
    assert main(["ablation", str(changed), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "dist" in err
    assert (out / "dist" / "weights.safetensors").stat().st_mtime_ns == dist_stamp

    # --validation-cases scores every row on other subjects: a different row, trained anew.
    subset = tmp_path / "subset"
    assert main(["ablation", str(base), "-o", str(subset), "--no-progress", "--validation-cases", "b"]) == 0
    assert "validation cases: b." in (subset / "ablation.md").read_text()
    assert set(json.loads((subset / "basenet" / "ablation_row.json").read_text())["structure_dice"]) == {"b"}


def test_fine_tuning_from_a_model_folder_is_on_the_card(reference, tmp_path):
    base = tmp_path / "base"
    config = _config(tmp_path, "base", {"reference_space": True})
    assert main(["train", str(config), "-o", str(base), "--no-progress", "--no-card"]) == 0
    config = _config(tmp_path, "full", FULL, {**FULL_TRAINING, "init_from": str(base)})
    out = tmp_path / "full"
    assert main(["train", str(config), "-o", str(out), "--no-progress"]) == 0
    card = (out / "model_card.md").read_text()
    assert f"Fine-tuned from the model folder `{base}`" in card
