"""Helper shared by the shipped models' end-to-end tests (importable: pyproject puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.cli.main import main
from brainseg.metrics.overlap import dice_per_class
from brainseg.model_folder import default_model_dir, load_model_folder
from brainseg.reporting import read_volumes_csv

#: The shipped demo subject (MICCAI 2012 subject 1000): ``1000_SS.nii.gz`` and its labels ``1000_glm.nii.gz``.
DEMO = default_model_dir().parent / "demo"


def segment_image(model: str, image: Path, tmp_path: Path) -> tuple[np.ndarray, int]:
    """``brainseg segment`` one scan with a shipped model; checks the run and the output's grid.

    Asserts exit status 0 and a label map on the scan's grid: its first three axes (a trailing singleton
    axis, as IBSR's files have, is not written back) and its affine. Returns the label map as written (the
    model's label numbers) and the number of rows of ``<stem>_volumes.csv``.
    """
    out = tmp_path / "out"
    argv = ["segment", str(image), "-o", str(out), "--model", model, "--no-progress"]
    assert main(argv) == 0
    stem = image.name.removesuffix(".gz").removesuffix(".nii")
    seg, source = nib.load(out / f"{stem}_seg.nii.gz"), nib.load(image)
    assert seg.shape == source.shape[:3]
    np.testing.assert_allclose(seg.affine, source.affine)
    _, rows = read_volumes_csv(out / f"{stem}_volumes.csv")
    return np.asarray(seg.dataobj), len(rows)


def segment_demo(model: str, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``brainseg segment`` the demo subject with a shipped model (:func:`segment_image`), scored.

    Returns the label map as written (the model's label numbers), the Dice of each structure against the
    demo's manual labels (classes 1 ... C-1 of the model's table; NaN where absent from both) and the number
    of rows of ``1000_SS_volumes.csv``.
    """
    predicted, rows = segment_image(model, DEMO / "1000_SS.nii.gz", tmp_path)
    labels = load_model_folder(model).labels
    reference = labels.to_classes(np.asarray(nib.load(DEMO / "1000_glm.nii.gz").dataobj))
    dice = dice_per_class(labels.to_classes(predicted), reference, labels.num_classes)[1:]
    return predicted, dice, rows


def assert_one_mixnetv2_for_three_views(model) -> None:
    """A loaded model folder holds one MixNetv2 shared by the sagittal, coronal and axial views, on T1 alone."""
    from brainseg.families.chen2018 import MixNetViews

    cfg = model.config.model
    assert cfg.name == "mixnet" and cfg.version == 2 and cfg.shared_views
    assert cfg.planes == ("sagittal", "coronal", "axial") and tuple(cfg.modalities) == ("t1",)
    assert isinstance(model.network, MixNetViews) and list(model.network.nets) == ["shared"]
