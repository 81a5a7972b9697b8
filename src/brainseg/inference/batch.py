"""Batches for ``brainseg segment``: which inputs, which outputs, which cases are already done.

Inputs (:func:`expand_inputs`) may be image files, glob patterns
(``'data/*/anat/*_T1w.nii.gz'``, quoted so that brainseg expands them), a
manifest CSV (``case_id,image,...``, see ``brainseg manifest``; outputs are
named by case id) or a text file with one image path per line (``#`` starts a
comment; relative paths are relative to the text file).

A case is *complete* when its completion record ``NAME_seg.json`` exists, was
written for the same input bytes, model weights and settings, and every output
it lists exists with the recorded sha256. The record is written last, after
every output has been renamed into place, so a run killed at any moment leaves
only whole files behind and a re-run redoes exactly the incomplete cases.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text, sha256_file
from brainseg.io.manifest import read_manifest
from brainseg.io.nifti import is_volume_path, output_stem

__all__ = [
    "CaseResult",
    "SegmentInput",
    "SegmentOutputs",
    "expand_inputs",
    "is_complete",
    "output_paths",
    "remove_stale_temporaries",
    "sha256_file",
    "write_record",
    "write_summary",
]

LIST_SUFFIXES = (".txt", ".list", ".lst")
SUMMARY = "segment_summary.csv"


@dataclass(frozen=True)
class SegmentInput:
    """One image to segment and the name of its outputs (file stem or manifest case id).

    ``modalities`` are a multi-modal model's other images by name (manifest columns ``image_NAME``, or
    ``--modality NAME=PATH``), co-registered with ``image``.

    Attributes
    ----------
    image : Path
        The image file (may not exist: a missing file becomes a failed case).
    name : str
        Stem of the output file names (``NAME_seg.nii.gz`` and so on).
    modalities : tuple of (str, Path)
        ``(NAME, PATH)`` of each other modality; empty for a single-image model.
    """

    image: Path
    name: str
    modalities: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class SegmentOutputs:
    """Files written for one input (``probabilities`` None unless asked for).

    Attributes
    ----------
    image : Path
        The input image.
    label_map : Path
        ``NAME_seg.nii.gz``, the label map.
    volumes : Path
        ``NAME_volumes.csv``, the structure volumes.
    qc : Path
        ``NAME_qc.png``, the quality-control picture.
    brain_mask : Path
        ``NAME_brain_mask.nii.gz``.
    record : Path
        ``NAME_seg.json``, the completion record (written last, see the module docstring).
    probabilities : Path or None
        ``NAME_probabilities.nii.gz``, or None when not asked for.
    modalities : tuple of (str, Path)
        The input's other modalities, as in :class:`SegmentInput`.
    """

    image: Path
    label_map: Path
    volumes: Path
    qc: Path
    brain_mask: Path
    record: Path
    probabilities: Path | None
    modalities: tuple[tuple[str, Path], ...] = ()

    def files(self) -> list[Path]:
        """The outputs proper (not the record), in the order they are written.

        Returns
        -------
        list of Path
            ``label_map``, ``brain_mask``, ``volumes``, ``qc`` and, when asked for, ``probabilities``.
        """
        paths = [self.label_map, self.brain_mask, self.volumes, self.qc, self.probabilities]
        return [p for p in paths if p is not None]


@dataclass(frozen=True)
class CaseResult:
    """What became of one input.

    Attributes
    ----------
    outputs : SegmentOutputs
    status : {'ok', 'skipped', 'failed'}
        ``'skipped'``: complete outputs from an earlier run were kept.
    message : str
        Empty, the skull-stripping line, or why the case failed.
    seconds : float
        Wall time spent on the case.
    timings : dict of str to float
        Wall seconds per pipeline stage of a segmented case (:mod:`brainseg.timing`); empty otherwise.
    """

    outputs: SegmentOutputs
    status: str
    message: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(arguments: list[str | Path]) -> list[SegmentInput]:
    """Turn command-line inputs into the list of images to segment.

    Parameters
    ----------
    arguments : list of str or Path
        Image files, glob patterns, manifest ``.csv`` files or ``.txt``/``.list``
        files of paths.

    Returns
    -------
    list of SegmentInput
        In the given order (globs sorted); missing image files are kept, to be
        reported as failed cases.

    Raises
    ------
    InputError
        If a pattern matches nothing, a folder is given, or a list or manifest
        cannot be read.
    """
    inputs: list[SegmentInput] = []
    for argument in arguments:
        text = str(argument)
        path = Path(text)
        if not path.exists() and _has_glob(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: no file matches this pattern; check the path and quote the pattern")
            inputs += [SegmentInput(Path(m), output_stem(m)) for m in matches]
        elif path.is_dir():
            raise InputError(
                f"{path}: is a folder; give image files, a quoted pattern such as '{path}/*.nii.gz', "
                "a manifest .csv or a .txt list of paths"
            )
        elif text.lower().endswith(".csv"):
            inputs += [SegmentInput(case.image, case.case_id, case.modalities) for case in read_manifest(path)]
        elif text.lower().endswith(LIST_SUFFIXES):
            inputs += _read_list(path)
        else:
            inputs.append(SegmentInput(path, output_stem(path)))
    if not inputs:
        raise InputError("no input images given")
    return inputs


def _read_list(path: Path) -> list[SegmentInput]:
    if not path.is_file():
        raise InputError(f"{path}: no such list of images; give a text file with one image path per line")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        raise InputError(f"{path}: cannot read it as a text list of image paths") from None
    out = []
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not is_volume_path(line):
            raise InputError(
                f"{path}: line {number} ({line[:40]!r}) is not a .nii, .nii.gz or .mgz path; "
                "a .txt input is read as a list of image paths, one per line"
            )
        image = Path(line) if Path(line).is_absolute() else path.parent / line
        out.append(SegmentInput(image, output_stem(image)))
    if not out:
        raise InputError(f"{path}: lists no image paths")
    return out


def output_paths(item: SegmentInput, output_dir: Path, probabilities: bool) -> SegmentOutputs:
    """Where ``segment`` writes the outputs of one input.

    Parameters
    ----------
    item : SegmentInput
        The input; its ``name`` is the stem of every output.
    output_dir : Path
        The output folder (not created or checked here).
    probabilities : bool
        Whether a probability map is written too.

    Returns
    -------
    SegmentOutputs
        ``output_dir / NAME_seg.nii.gz`` and so on.
    """
    name = item.name
    return SegmentOutputs(
        item.image,
        output_dir / f"{name}_seg.nii.gz",
        output_dir / f"{name}_volumes.csv",
        output_dir / f"{name}_qc.png",
        output_dir / f"{name}_brain_mask.nii.gz",
        output_dir / f"{name}_seg.json",
        output_dir / f"{name}_probabilities.nii.gz" if probabilities else None,
        item.modalities,
    )


def plan_outputs(items: list[SegmentInput], output_dir: Path, probabilities: bool) -> list[SegmentOutputs]:
    """Output paths of every input, checked before anything runs.

    Parameters
    ----------
    items : list of SegmentInput
        The inputs, from :func:`expand_inputs`.
    output_dir : Path
        The output folder; need not exist yet.
    probabilities : bool
        Whether probability maps are written too.

    Returns
    -------
    list of SegmentOutputs
        One per input, in the order of ``items``.

    Raises
    ------
    InputError
        If the output folder is an existing file, an input is not a NIfTI/MGZ
        name, two inputs would write the same outputs, or an output would
        overwrite an input.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: output folder is an existing file; give a folder with -o")
    inputs = {p.image.resolve() for p in items} | {path.resolve() for p in items for _, path in p.modalities}
    planned = []
    for item in items:
        if item.image.is_file() and not is_volume_path(item.image):
            raise InputError(f"{item.image}: not a .nii, .nii.gz or .mgz file; convert it to NIfTI first")
        outputs = output_paths(item, output_dir, probabilities)
        for path in [*outputs.files(), outputs.record]:
            if path.resolve() in inputs:
                raise InputError(f"{path}: would overwrite an input; choose another output folder")
        planned.append(outputs)
    names = [p.label_map.name for p in planned]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[0]
        raise InputError(
            f"two inputs would both write {twice}; segment them into separate folders "
            "or list them in a manifest .csv with distinct case ids"
        )
    return planned


def write_record(outputs: SegmentOutputs, identity: dict[str, object], message: str) -> None:
    """Write the completion record of a case (after all its outputs are in place).

    Parameters
    ----------
    outputs : SegmentOutputs
    identity : dict
        What the outputs were made from (input and model sha256, settings);
        :func:`is_complete` compares it.
    message : str
        The skull-stripping line.
    """
    record = {
        "identity": identity,
        "outputs": {p.name: sha256_file(p) for p in outputs.files()},
        "skull_strip": message,
    }
    atomic_write_text(outputs.record, json.dumps(record, indent=2, sort_keys=True) + "\n")


def is_complete(outputs: SegmentOutputs, identity: dict[str, object]) -> bool:
    """Whether the case's outputs from an earlier run are complete, valid and made the same way.

    Parameters
    ----------
    outputs : SegmentOutputs
        The case's planned outputs.
    identity : dict
        What this run would make them from (as given to :func:`write_record`).

    Returns
    -------
    bool
        True when the record exists with the same ``identity``, lists exactly the planned outputs, and every one
        of them exists with the recorded sha256; False otherwise, also when the record is unreadable.
    """
    try:
        record = json.loads(outputs.record.read_text())
        if record.get("identity") != identity:
            return False
        listed = record["outputs"]
        expected = {p.name for p in outputs.files()}
        if set(listed) != expected:
            return False
        return all(sha256_file(outputs.record.parent / name) == digest for name, digest in listed.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def remove_stale_temporaries(outputs: SegmentOutputs) -> None:
    """Delete temporary files (``.NAME.*``) a killed run left beside this case's outputs.

    Parameters
    ----------
    outputs : SegmentOutputs
        The case's outputs; the temporaries of each of them and of its record are removed.
    """
    for path in [*outputs.files(), outputs.record]:
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
            tmp.unlink(missing_ok=True)


def write_summary(path: str | Path, results: list[CaseResult]) -> Path:
    """Write ``case,input,status,message,seconds`` rows atomically (one per input).

    Parameters
    ----------
    path : str or Path
        The CSV file (usually ``OUTPUT_DIR/segment_summary.csv``); replaced if it exists.
    results : list of CaseResult
        One per input; the case is its label map's name without ``_seg.nii.gz``, seconds with one decimal.

    Returns
    -------
    Path
        ``path``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "input", "status", "message", "seconds"])
    for r in results:
        name = r.outputs.label_map.name[: -len("_seg.nii.gz")]
        writer.writerow([name, str(r.outputs.image), r.status, r.message, f"{r.seconds:.1f}"])
    return atomic_write_text(path, buf.getvalue())
