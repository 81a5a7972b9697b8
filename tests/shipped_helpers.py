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


def segment_demo(model: str, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``brainseg segment`` the demo subject with a shipped model; checks the run and the output's grid.

    Asserts exit status 0 and a label map of the scan's shape and affine. Returns the label map as written
    (the model's label numbers), the Dice of each structure against the demo's manual labels (classes 1 ...
    C-1 of the model's table; NaN where absent from both) and the number of rows of ``1000_SS_volumes.csv``.
    """
    out = tmp_path / "out"
    argv = ["segment", str(DEMO / "1000_SS.nii.gz"), "-o", str(out), "--model", model, "--no-progress"]
    assert main(argv) == 0
    seg, source = nib.load(out / "1000_SS_seg.nii.gz"), nib.load(DEMO / "1000_SS.nii.gz")
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine)
    labels = load_model_folder(model).labels
    predicted = np.asarray(seg.dataobj)
    reference = labels.to_classes(np.asarray(nib.load(DEMO / "1000_glm.nii.gz").dataobj))
    dice = dice_per_class(labels.to_classes(predicted), reference, labels.num_classes)[1:]
    _, rows = read_volumes_csv(out / "1000_SS_volumes.csv")
    return predicted, dice, len(rows)
