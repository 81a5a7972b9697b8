"""Choosing the strength of the sampling prior's correction on a model's validation cases.

Each validation case is segmented once, keeping the class probabilities on the network's grid;
every candidate strength then only re-weights those probabilities
(:func:`brainseg.postprocessing.prior.adjust_probabilities`), takes the arg-max, maps the classes
back to the case's own grid exactly as ``brainseg segment`` does, and scores them there. The
strength with the highest mean Dice is written into the model folder's ``class_prior.json``
(checksums rewritten), and every strength's figures into ``prior_calibration.csv``.

The strength is chosen on the validation cases it is then reported on, so the model card's
validation figures after calibration are slightly optimistic (one number fitted to five subjects).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainseg.errors import InputError
from brainseg.inference.predictor import Predictor
from brainseg.io.atomic import atomic_write_text
from brainseg.io.manifest import read_manifest
from brainseg.io.nifti import load_volume
from brainseg.metrics.overlap import dice_per_class
from brainseg.model_folder import LoadedModel, load_model_folder, write_checksums
from brainseg.postprocessing.prior import PRIOR_FILE, ClassPrior
from brainseg.preprocessing.reference import load_transforms
from brainseg.training.data import prepare_case

__all__ = [
    "CALIBRATION_FILE",
    "StrengthScores",
    "calibrate_prior",
    "prior_from_training_cases",
    "score_strengths",
    "validation_setup",
]

CALIBRATION_FILE = "prior_calibration.csv"


@dataclass(frozen=True)
class StrengthScores:
    """Validation figures of one strength, averaged over structures and cases.

    Attributes
    ----------
    strength : float
    dice : float
        Mean Dice over structures present in the reference, then over cases.
    volumetric_similarity : float
        Mean volumetric similarity, same averaging.
    too_large, too_small : float
        Mean number per case of structures whose predicted / reference volume
        ratio is above 1.25 or below 0.8.
    """

    strength: float
    dice: float
    volumetric_similarity: float
    too_large: float
    too_small: float


def _case_figures(predicted: np.ndarray, reference: np.ndarray, num_classes: int) -> tuple[float, float, int, int]:
    dice = dice_per_class(predicted, reference, num_classes)[1:]
    p = np.bincount(predicted.ravel(), minlength=num_classes)[1:num_classes].astype(float)
    r = np.bincount(reference.ravel(), minlength=num_classes)[1:num_classes].astype(float)
    present = r > 0
    vs = 1 - np.abs(p - r)[present] / (p + r)[present]
    ratio = p[present] / r[present]
    return float(np.nanmean(dice[present])), float(vs.mean()), int((ratio > 1.25).sum()), int((ratio < 0.8).sum())


def validation_setup(
    model: LoadedModel, case_ids: Sequence[str] | None = None
) -> tuple[dict, list[str], dict[str, np.ndarray]]:
    """The manifest's cases by id, the cases to score and the reference space's stored transforms.

    Parameters
    ----------
    model : LoadedModel
    case_ids : sequence of str, optional
        Default: the validation cases of the model's config.

    Returns
    -------
    by_id : dict of str to Case
    case_ids : list of str
    transforms : dict of str to ndarray, shape (4, 4)
        Known template mm -> scan mm transforms (empty without a reference space).

    Raises
    ------
    InputError
        If there are no cases to score.
    """
    tc = model.config.training
    by_id = {c.case_id: c for c in read_manifest(tc.manifest)}
    case_ids = list(case_ids or tc.validation_cases)
    if not case_ids:
        raise InputError(f"{model.path}: the config names no validation cases; pass --cases")
    transforms = load_transforms(tc.reference) if tc.reference else {}
    return by_id, case_ids, transforms


def score_strengths(
    model: LoadedModel, strengths: Sequence[float], case_ids: Sequence[str] | None = None, progress: bool = False
) -> list[StrengthScores]:
    """Validation figures of each strength (see the module docstring).

    Parameters
    ----------
    model : LoadedModel
        With a :class:`~brainseg.postprocessing.prior.ClassPrior` (its own
        strength is ignored).
    strengths : sequence of float
        Candidates.
    case_ids : sequence of str, optional
        Default: the validation cases of the model's config.
    progress : bool
        Show progress bars.

    Returns
    -------
    list of StrengthScores
        In the order of ``strengths``.

    Raises
    ------
    InputError
        If the model has no class prior, or a case or its label map is missing.
    """
    if model.prior is None:
        raise InputError(f"{model.path}: no {PRIOR_FILE}; train with brainseg >= 0.2 or write one first")
    by_id, case_ids, transforms = validation_setup(model, case_ids)
    unadjusted = Predictor(LoadedModel(**{**model.__dict__, "prior": model.prior.with_strength(0.0)}))
    weights = [np.exp(model.prior.logit_bias(s)).astype(np.float32) for s in strengths]
    figures = np.zeros((len(strengths), len(case_ids), 4))
    for k, case_id in enumerate(tqdm(case_ids, desc="validation cases", disable=not progress)):
        case = by_id.get(case_id)
        if case is None or case.label_map is None:
            raise InputError(f"{model.config.training.manifest}: no labelled case {case_id!r}")
        reference = model.labels.to_classes(load_volume(case.label_map, kind="label_map").data)
        prepared, _ = prepare_case(case, model.normalization, model.modalities)
        _, probs, registered = unadjusted.segment_prepared(
            prepared, matrix=transforms.get(case_id), probabilities=True, probability_dtype=np.float32
        )
        inside = registered.mask if registered is not None else prepared.mask  # brain voxels of the working grid
        grid = probs.shape[1:]
        brain = probs[:, inside]  # (classes, brain voxels): a fifth of the volume's probabilities, kept alone
        del probs
        for j, w in enumerate(weights):
            classes = np.zeros(grid, np.uint8)
            classes[inside] = np.argmax(brain * w[:, None], axis=0)
            if registered is not None:
                classes = registered.to_native(classes)
            figures[j, k] = _case_figures(prepared.to_source_grid(classes), reference, model.labels.num_classes)
    mean = figures.mean(axis=1)
    return [StrengthScores(float(s), *map(float, mean[j])) for j, s in enumerate(strengths)]


def prior_from_training_cases(model: LoadedModel, progress: bool = False) -> ClassPrior:
    """The class frequencies of a model's training cases and sampler, for a folder trained without them.

    The cases are loaded as the trainer loads them (registered to the
    model's reference space when it has one), so the frequencies are those
    of the grid the network was trained on.

    Parameters
    ----------
    model : LoadedModel
        The model folder; its config's manifest, training cases and ``training.sampling`` are read.
    progress : bool
        Show a progress bar over the training cases.

    Returns
    -------
    ClassPrior
        :func:`~brainseg.training.setup.sampling_prior` of the training cases.

    Raises
    ------
    InputError
        If the config's manifest or a training case cannot be read.
    """
    from brainseg.training.data import load_training_case
    from brainseg.training.setup import sampling_prior

    tc = model.config.training
    by_id = {c.case_id: c for c in read_manifest(tc.manifest)}
    missing = [i for i in tc.train_cases if i not in by_id]
    if missing:
        raise InputError(f"{tc.manifest}: no training case(s) {missing}")
    cases = [
        load_training_case(by_id[i], model.labels, model.config.model, model.normalization, model.reference)
        for i in tqdm(tc.train_cases, desc="training cases", disable=not progress)
    ]
    return sampling_prior(cases, model.labels.num_classes, tc.sampling)


def calibrate_prior(
    model_dir: str | Path, strengths: Sequence[float], case_ids: Sequence[str] | None = None, progress: bool = False
) -> tuple[float, list[StrengthScores]]:
    """Choose the strength with the highest validation mean Dice and write it into the model folder.

    A folder without ``class_prior.json`` (trained by brainseg < 0.2) gets
    one from :func:`prior_from_training_cases` first.

    Parameters
    ----------
    model_dir : str or Path
        The model folder; ``class_prior.json``, ``prior_calibration.csv`` and the checksums are (re)written.
    strengths : sequence of float
        Candidate strengths of the prior's correction (non-empty).
    case_ids : sequence of str, optional
        Cases to score; default: the validation cases of the model's config.
    progress : bool
        Show progress bars.

    Returns
    -------
    strength : float
        The chosen strength (written into ``class_prior.json``).
    scores : list of StrengthScores
        Every candidate's figures (also written to ``prior_calibration.csv``).

    Raises
    ------
    InputError
        If ``strengths`` is empty, or the folder, the manifest, a case or its label map cannot be read, or
        there are no cases to score.
    """
    if not len(strengths):  # before any case is segmented
        raise InputError("no prior strengths to try; give at least one (e.g. --strengths 0,0.5,1)")
    model = load_model_folder(model_dir)
    if model.prior is None:
        model.prior = prior_from_training_cases(model, progress)
    scores = score_strengths(model, strengths, case_ids, progress)
    best = max(scores, key=lambda s: np.nan_to_num(s.dice, nan=-np.inf))  # a NaN never wins, as in choose_fusion
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["strength", "dice", "volumetric_similarity", "too_large", "too_small", "chosen"])
    for s in scores:
        row = [
            s.strength,
            f"{s.dice:.4f}",
            f"{s.volumetric_similarity:.4f}",
            f"{s.too_large:.1f}",
            f"{s.too_small:.1f}",
        ]
        writer.writerow([*row, "yes" if s is best else ""])
    folder = Path(model.path)
    model.prior.with_strength(best.strength).save(folder / PRIOR_FILE)  # type: ignore[union-attr]
    atomic_write_text(folder / CALIBRATION_FILE, buffer.getvalue())
    write_checksums(folder)
    return best.strength, scores
