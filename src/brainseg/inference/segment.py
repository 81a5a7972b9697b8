"""``brainseg.segment``: segment image files and write label maps, brain masks, volumes and QC figures.

One input goes: load and validate (:func:`brainseg.io.load_volume`) -> skull
stripping where needed (:mod:`brainseg.preprocessing.skull_strip`) -> the
model (:class:`~brainseg.inference.predictor.Predictor`) -> outputs on the
input's grid, each written to a temporary file and renamed, then the case's
completion record (:mod:`brainseg.inference.batch`).

A batch (several inputs) goes on past a failed case: the failure is reported
in ``segment_summary.csv`` and the log, and the case leaves no output. A
re-run skips complete cases unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from brainseg import __version__
from brainseg.allocator import release_freed_memory
from brainseg.errors import InputError
from brainseg.inference.batch import (
    SUMMARY,
    CaseResult,
    SegmentInput,
    SegmentOutputs,
    expand_inputs,
    is_complete,
    plan_outputs,
    remove_stale_temporaries,
    sha256_file,
    write_record,
    write_summary,
)
from brainseg.inference.predictor import Predictor, Segmentation
from brainseg.io.nifti import Volume, load_volume, save_volume
from brainseg.io.validation import check_brain_mask
from brainseg.postprocessing.dense_crf import CRFParameters
from brainseg.preprocessing.skull_strip import SKULL_STRIP_MODES, BrainExtractor, SkullStripping, skull_strip
from brainseg.reporting import qc_figure, save_qc_png, structure_volumes, write_volumes_csv
from brainseg.reporting.volumes import voxel_volume_mm3
from brainseg.timing import record, stage

__all__ = ["CaseResult", "SegmentOutputs", "check_modalities", "segment", "segment_case"]

log = logging.getLogger(__name__)


class _Extractor:
    """deepbet, loaded on first use and kept for the rest of the batch."""

    def __init__(self) -> None:
        self._extractor: BrainExtractor | None = None

    def get(self) -> BrainExtractor:
        if self._extractor is None:
            self._extractor = BrainExtractor()
        return self._extractor


def segment_case(
    outputs: SegmentOutputs,
    predictor: Predictor,
    *,
    skull_strip_mode: str = "auto",
    extractor: BrainExtractor | None = None,
    header: list[str] | None = None,
    progress: bool = False,
    crf: CRFParameters | None = None,
) -> str:
    """Segment one image file and write its outputs (not its completion record).

    Parameters
    ----------
    outputs : SegmentOutputs
        Where to write; ``outputs.probabilities`` None to skip them.
    predictor : Predictor
        The loaded model.
    skull_strip_mode : {'auto', 'always', 'never'}
        See :func:`brainseg.preprocessing.skull_strip.skull_strip`.
    extractor : BrainExtractor, optional
        deepbet, reused across cases (loaded here when needed and not given).
    header : list of str, optional
        Comment lines for the top of the volumes CSV.
    progress : bool
        Show the network's progress bar.
    crf : CRFParameters, optional
        Refine with the dense CRF (:meth:`brainseg.inference.predictor.Predictor.predict`).

    Returns
    -------
    str
        The skull-stripping line (also logged and written in the volumes CSV header).

    Raises
    ------
    InputError
        If the image fails the validation gate or deepbet finds no brain.
    """
    image = outputs.image
    with stage("load"):
        volume = load_volume(image)
        others = [load_volume(path) for path in _other_images(outputs, predictor.model.modalities)]
    voxel_ml = voxel_volume_mm3(volume.affine) / 1000
    if skull_strip_mode != "never" and extractor is None:
        extractor = BrainExtractor()
    try:
        with stage("skull strip"):
            stripping = skull_strip(volume.data, voxel_ml, skull_strip_mode, extractor)
    except InputError as err:
        raise InputError(f"{image}: {err}") from None
    release_freed_memory()  # deepbet's transient arrays, kept by keep_freed_memory()
    line = stripping.describe()
    log.info("%s: %s", image, line)
    check_brain_mask(image, volume.data, stripping.mask, voxel_ml)
    brain = volume
    if stripping.extracted:
        brain = Volume(np.where(stripping.mask, volume.data, 0).astype(np.float32), volume.affine, volume.grid)
        others = [Volume(np.where(stripping.mask, o.data, 0).astype(np.float32), o.affine, o.grid) for o in others]
    try:
        result = predictor.predict(
            brain,
            stripping.mask,
            probabilities=outputs.probabilities is not None,
            progress=progress,
            crf=crf,
            others=others,
        )
    except InputError as err:
        if not others:
            raise
        raise InputError(f"{image}: {err}") from None
    with stage("write"):
        _write_outputs(outputs, volume, stripping, result, header, line)
    log.info("%s -> %s", image, outputs.label_map)
    return line


def _other_images(outputs: SegmentOutputs, modalities: tuple[str, ...]) -> list[Path]:
    """The images of a model's modalities after the first, from the input's (checked by :func:`segment`)."""
    given = dict(outputs.modalities)
    return [given[name] for name in modalities[1:]]


def check_modalities(planned: list[SegmentOutputs], modalities: tuple[str, ...]) -> None:
    """Refuse inputs that lack a multi-modal model's other images, or give images a T1 model cannot read.

    Parameters
    ----------
    planned : list of SegmentOutputs
        The planned cases, each with its other modalities (``outputs.modalities``).
    modalities : tuple of str
        The model's modalities, the first being the main image's
        (:attr:`~brainseg.model_folder.LoadedModel.modalities`).

    Raises
    ------
    InputError
        Naming the missing modality and how to give it (``--modality`` or a manifest column), or the
        images the model does not read.
    """
    for outputs in planned:
        given = dict(outputs.modalities)
        missing = [name for name in modalities[1:] if name not in given]
        if missing:
            raise InputError(
                f"{outputs.image}: the model reads modalities {', '.join(modalities)}; give "
                + " and ".join(f"--modality {name}=PATH" for name in missing)
                + " (one input), or a manifest .csv with the column(s) "
                + ", ".join(f"image_{name}" for name in missing)
            )
        extra = sorted(set(given) - set(modalities[1:]))
        if extra:
            raise InputError(
                f"{outputs.image}: the model reads {', '.join(modalities)} and no {', '.join(extra)}; "
                "leave those images out or choose the model trained on them"
            )


def _write_outputs(
    outputs: SegmentOutputs,
    volume: Volume,
    stripping: SkullStripping,
    result: Segmentation,
    header: list[str] | None,
    line: str,
) -> None:
    # The case's files: label map, brain mask, volumes CSV, QC image, probabilities.
    image = outputs.image
    outputs.label_map.parent.mkdir(parents=True, exist_ok=True)
    save_volume(outputs.label_map, result.label_map, result.grid, dtype=np.int16)
    save_volume(outputs.brain_mask, stripping.mask.astype(np.uint8), result.grid, dtype=np.uint8)
    comments = [*(header or []), f"input: {image}", line]
    write_volumes_csv(outputs.volumes, structure_volumes(result.label_map, result.labels, volume.affine), comments)
    save_qc_png(
        outputs.qc,
        qc_figure(volume.data, result.label_map, result.spacing, outline=stripping.mask, labels=result.labels),
    )
    if outputs.probabilities is not None and result.probabilities is not None:
        result.probabilities.save(outputs.probabilities, result.grid)


def crf_settings_of(defaults: CRFParameters, changes: dict[str, str | float] | None) -> CRFParameters:
    """The model folder's CRF settings with ``changes`` applied (``--crf-param NAME=VALUE``).

    Parameters
    ----------
    defaults : CRFParameters
        The model folder's settings.
    changes : dict of str to str or float, or None
        Field name of :class:`~brainseg.postprocessing.dense_crf.CRFParameters` -> new value, converted to
        the field's type (``int`` or ``float``).

    Returns
    -------
    CRFParameters
        A new object; ``defaults`` is unchanged.

    Raises
    ------
    InputError
        If a name is not a CRF setting or a value is refused.
    """
    changes = dict(changes or {})
    fields = {f.name: f for f in dataclasses.fields(CRFParameters)}
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise InputError(f"--crf-param: unknown setting(s) {unknown}; known: {sorted(fields)}")
    try:
        typed = {k: float(v) for k, v in changes.items()}
        for name, value in typed.items():
            if fields[name].type == "int":
                if not value.is_integer():  # int(2.7) would quietly run 2 iterations
                    raise ValueError(f"{name} must be a whole number, got {changes[name]!r}")
                typed[name] = int(value)
        return dataclasses.replace(defaults, **typed)
    except (TypeError, ValueError) as err:
        raise InputError(f"--crf-param: {err}") from None


def _remove_outputs(outputs: SegmentOutputs) -> None:
    for path in [outputs.record, *outputs.files()]:
        path.unlink(missing_ok=True)
    remove_stale_temporaries(outputs)


def segment(
    images: list[str | Path],
    output_dir: str | Path,
    *,
    model: str | Path | None = None,
    probabilities: bool = False,
    skull_strip: str = "auto",
    overwrite: bool = False,
    keep_going: bool | None = None,
    progress: bool = True,
    num_threads: int | None = None,
    crf: bool = False,
    crf_settings: dict[str, str | float] | None = None,
    modalities: dict[str, str | Path] | None = None,
) -> list[CaseResult]:
    """Segment T1 images (skull-stripped or whole-head) and write the results.

    For each input ``NAME.nii.gz`` this writes, on the input's grid:
    ``NAME_seg.nii.gz`` (int16 protocol label numbers), ``NAME_brain_mask.nii.gz``
    (uint8, the mask segmented inside), ``NAME_volumes.csv`` (``#`` comment
    lines saying what was done, then label, name, voxels, volume in mm^3),
    ``NAME_qc.png`` (overlays through the brain centre, brain mask outlined),
    with ``probabilities`` ``NAME_probabilities.nii.gz`` (4-D, one volume per
    class, uint8 scaled by 1/255), and last ``NAME_seg.json``, the completion
    record. A batch also writes ``segment_summary.csv``
    (case, input, status, message, seconds).

    Parameters
    ----------
    images : list of path or str
        Image files (.nii, .nii.gz, .mgz), glob patterns, manifest ``.csv``
        files or ``.txt`` lists of paths (:func:`brainseg.inference.batch.expand_inputs`).
    output_dir : path
        Output folder, created if missing.
    model : path or str, optional
        Model folder, or the name of a shipped model (``'default'``,
        ``'basenet'``); None for the default.
    probabilities : bool
        Also write class probabilities.
    skull_strip : {'auto', 'always', 'never'}
        Brain extraction (:mod:`brainseg.preprocessing.skull_strip`): ``auto``
        detects whether each image is already skull-stripped.
    overwrite : bool
        Redo cases whose outputs are complete (default: skip them).
    keep_going : bool, optional
        Go on past a failed case. Default: True for several inputs, False for one.
    progress : bool
        Show progress bars.
    num_threads : int, optional
        Torch threads.
    crf : bool
        Refine every segmentation with the dense CRF
        (:mod:`brainseg.postprocessing.dense_crf`), with the model folder's ``crf`` settings;
        the probabilities written are then the CRF's marginals.
    crf_settings : dict, optional
        Values that replace the model folder's CRF settings, by
        :class:`~brainseg.postprocessing.dense_crf.CRFParameters` field name.
    modalities : dict of str to path, optional
        A multi-modal model's other images of the one input, by modality name (``--modality
        NAME=PATH``); a manifest ``.csv`` input gives them in its ``image_NAME`` columns instead.

    Returns
    -------
    list of CaseResult
        One per input, in order.

    Raises
    ------
    InputError
        On bad arguments, an unusable model folder or output folder (before
        anything is written), and on a failed case when not ``keep_going``.
    """
    from tqdm import tqdm

    if skull_strip not in SKULL_STRIP_MODES:
        raise InputError(f"--skull-strip must be one of {', '.join(SKULL_STRIP_MODES)}, got {skull_strip!r}")
    items: list[SegmentInput] = expand_inputs(list(images))
    if modalities:
        if len(items) != 1:
            raise InputError(
                "--modality goes with one input image; for a batch, give a manifest .csv with image_NAME columns"
            )
        items = [dataclasses.replace(items[0], modalities=tuple((k, Path(v)) for k, v in modalities.items()))]
    output_dir = Path(output_dir)
    planned = plan_outputs(items, output_dir, probabilities)
    batch = len(planned) > 1
    keep_going = batch if keep_going is None else keep_going
    predictor = Predictor.from_model_dir(model, num_threads)
    check_modalities(planned, predictor.model.modalities)
    weights = sha256_file(predictor.model.path / "weights.safetensors")
    settings = {"brainseg": __version__, "model_sha256": weights, "probabilities": probabilities}
    settings["skull_strip"] = skull_strip
    crf_parameters = crf_settings_of(predictor.model.config.crf, crf_settings) if crf else None
    settings["crf"] = dataclasses.asdict(crf_parameters) if crf_parameters is not None else None
    header = [f"brainseg {__version__}", f"model: {predictor.model.path}"]
    if predictor.model.prior is not None:
        header.append(f"sampling prior correction: strength {predictor.model.prior.strength:g}")
    if crf_parameters is not None:
        header.append("dense CRF: " + ", ".join(f"{k} {v:g}" for k, v in settings["crf"].items()))
    extractor = _Extractor()
    results: list[CaseResult] = []
    for outputs in tqdm(planned, desc="images", unit="image", disable=not progress or not batch):
        start = time.perf_counter()
        try:
            identity = {**settings, "input_sha256": sha256_file(outputs.image)} if outputs.image.is_file() else None
            if identity is not None and outputs.modalities:
                identity["modalities_sha256"] = {
                    name: sha256_file(path) if path.is_file() else None for name, path in outputs.modalities
                }
            if identity is not None and not overwrite and is_complete(outputs, identity):
                results.append(CaseResult(outputs, "skipped", "complete outputs kept", time.perf_counter() - start))
                log.info("%s: complete outputs kept (use --overwrite to redo)", outputs.image)
            else:
                if identity is None:
                    load_volume(outputs.image)  # raises the gate's message for a missing file
                outputs.record.unlink(missing_ok=True)
                remove_stale_temporaries(outputs)
                with record() as times:
                    line = segment_case(
                        outputs,
                        predictor,
                        skull_strip_mode=skull_strip,
                        extractor=extractor.get() if skull_strip != "never" else None,
                        header=header,
                        progress=progress and not batch,
                        crf=crf_parameters,
                    )
                write_record(outputs, identity, line)  # type: ignore[arg-type]
                results.append(CaseResult(outputs, "ok", line, time.perf_counter() - start, dict(times)))
        except Exception as err:  # one failed case must not stop a batch
            _remove_outputs(outputs)
            if not keep_going:
                if isinstance(err, (InputError, OSError)):
                    raise InputError(_failure(outputs, err)) from None
                raise
            log.debug("case %s failed", outputs.image, exc_info=True)
            log.error("%s", _failure(outputs, err))
            results.append(CaseResult(outputs, "failed", _failure(outputs, err), time.perf_counter() - start))
        if batch:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_summary(output_dir / SUMMARY, results)
    return results


def _failure(outputs: SegmentOutputs, err: BaseException) -> str:
    """One line for a failed case (InputError messages already name the file)."""
    if isinstance(err, InputError):
        return str(err)
    if isinstance(err, OSError):
        where = err.filename or outputs.label_map.parent
        return f"{where}: cannot write ({err.strerror or err}); free disk space or check permissions and re-run"
    return f"{outputs.image}: failed ({type(err).__name__}: {err}); run with -v for details and report it"
