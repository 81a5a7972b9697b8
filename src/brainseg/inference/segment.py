"""``brainseg.segment``: segment image files and write label maps, volumes and QC figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import InputError
from brainseg.inference.predictor import Predictor
from brainseg.io.nifti import is_volume_path, load_volume, output_stem, save_volume
from brainseg.reporting import qc_figure, save_qc_png, structure_volumes, write_volumes_csv

__all__ = ["SegmentOutputs", "segment", "check_inputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOutputs:
    """Files written for one input."""

    image: Path
    label_map: Path
    volumes: Path
    qc: Path
    probabilities: Path | None


def output_paths(image: Path, output_dir: Path, probabilities: bool) -> SegmentOutputs:
    """Where ``segment`` writes the outputs of ``image``."""
    stem = output_stem(image)
    return SegmentOutputs(
        image,
        output_dir / f"{stem}_seg.nii.gz",
        output_dir / f"{stem}_volumes.csv",
        output_dir / f"{stem}_qc.png",
        output_dir / f"{stem}_probabilities.nii.gz" if probabilities else None,
    )


def check_inputs(images: list[Path], output_dir: Path, probabilities: bool = False) -> list[SegmentOutputs]:
    """Validate every input and output path before anything is written.

    Raises
    ------
    InputError
        If an input is not a readable 3-D NIfTI/MGZ image, the output folder
        is an existing file, two inputs would write the same outputs, or an
        output would overwrite an input.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: output folder is an existing file; give a folder with -o")
    planned = []
    inputs = {p.resolve() for p in images}
    for image in images:
        if image.is_file() and not is_volume_path(image):
            raise InputError(f"{image}: not a .nii, .nii.gz or .mgz file; convert it to NIfTI first")
        load_volume(image)  # raises InputError with the reason
        outputs = output_paths(image, output_dir, probabilities)
        for path in (outputs.label_map, outputs.volumes, outputs.qc, outputs.probabilities):
            if path is not None and path.resolve() in inputs:
                raise InputError(f"{path}: would overwrite an input; choose another output folder")
        planned.append(outputs)
    names = [p.label_map.name for p in planned]
    if len(set(names)) != len(names):
        raise InputError(
            "two inputs share a file name and would write the same outputs; segment them into separate folders"
        )
    return planned


def segment(
    images: list[str | Path],
    output_dir: str | Path,
    *,
    model: str | Path | None = None,
    probabilities: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> list[SegmentOutputs]:
    """Segment skull-stripped T1 images and write the results.

    For each input ``NAME.nii.gz`` this writes, on the input's grid:
    ``NAME_seg.nii.gz`` (int16 protocol label numbers), ``NAME_volumes.csv``
    (label, name, voxels, volume in mm^3), ``NAME_qc.png`` (overlays through the
    brain centre) and, with ``probabilities``, ``NAME_probabilities.nii.gz``
    (4-D, one volume per class, uint8 scaled by 1/255).

    Parameters
    ----------
    images : list of path
        Input images (.nii, .nii.gz, .mgz).
    output_dir : path
        Output folder, created if missing.
    model : path or str, optional
        Model folder, or the name of a shipped model (``'default'``,
        ``'basenet'``); None for the default.
    probabilities : bool
        Also write class probabilities.
    progress : bool
        Show progress bars.
    num_threads : int, optional
        Torch threads.

    Returns
    -------
    list of SegmentOutputs

    Raises
    ------
    InputError
        On bad inputs (checked before anything is written).
    """
    from tqdm import tqdm

    paths = [Path(p) for p in images]
    output_dir = Path(output_dir)
    planned = check_inputs(paths, output_dir, probabilities)
    predictor = Predictor.from_model_dir(model, num_threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    for outputs in tqdm(planned, desc="images", unit="image", disable=not progress or len(planned) < 2):
        volume = load_volume(outputs.image)
        result = predictor.predict(volume, probabilities=probabilities, progress=progress)
        save_volume(outputs.label_map, result.label_map, result.grid, dtype=np.int16)
        write_volumes_csv(outputs.volumes, structure_volumes(result.label_map, result.labels, volume.affine))
        save_qc_png(outputs.qc, qc_figure(volume.data, result.label_map, result.spacing))
        if outputs.probabilities is not None and result.probabilities is not None:
            scaled = np.round(result.probabilities.astype(np.float32) * 255).astype(np.uint8)
            save_volume(outputs.probabilities, scaled, result.grid, slope=1 / 255)
        log.info("%s -> %s", outputs.image, outputs.label_map)
    return planned
