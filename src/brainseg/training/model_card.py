"""Model cards: what a model folder was trained on and how well it does on its validation cases."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from brainseg.config import Config
from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.inference.predictor import Predictor
from brainseg.io.atomic import atomic_write_text
from brainseg.io.manifest import read_manifest
from brainseg.io.nifti import load_volume
from brainseg.labels import LabelTable
from brainseg.metrics.overlap import error_rate
from brainseg.metrics.report import StructureScore, evaluate_label_maps, summarize, write_scores_csv, write_scores_json
from brainseg.model_folder import LoadedModel, load_model_folder
from brainseg.models import count_parameters
from brainseg.preprocessing.reference import load_transforms

__all__ = ["describe_model", "evaluate_validation", "write_model_card"]

CREDIT = (
    "MRI scans originate from the OASIS project; labelled data provided by Neuromorphometrics, Inc. "
    "(neuromorphometrics.com) under academic subscription. Licence CC BY-NC 3.0: the weights are for "
    "non-commercial use."
)


def evaluate_validation(
    model: LoadedModel, progress: bool = False, error_rates: dict[str, float] | None = None
) -> list[StructureScore]:
    """Segment the validation cases of a model folder's config and score every structure.

    Each case is segmented as ``brainseg segment`` would (reference-space
    models in the reference space, then back) and scored **on its own grid
    and voxel spacing** against its label file, distances in mm, exactly as
    ``brainseg evaluate`` scores the written label map. Transforms stored by
    ``brainseg atlas build`` for the cases are used when the training
    reference folder is still there.

    Parameters
    ----------
    model : LoadedModel
    progress : bool
        Show progress bars.
    error_rates : dict, optional
        Filled with each case's error rate (:func:`brainseg.metrics.overlap.error_rate`, over the
        label table's classes), by case id.

    Returns
    -------
    list of StructureScore
        One per structure and case.

    Raises
    ------
    InputError
        If a validation case or its label map cannot be read.
    """
    tc = model.config.training
    by_id = {c.case_id: c for c in read_manifest(tc.manifest)}
    transforms = load_transforms(tc.reference) if tc.reference else {}
    predictor = Predictor(model)
    scores: list[StructureScore] = []
    for case_id in tc.validation_cases:
        case = by_id.get(case_id)
        if case is None:
            raise InputError(f"{tc.manifest}: validation case {case_id} is not in the manifest; add it or drop it")
        if case.label_map is None:
            raise InputError(f"validation case {case_id}: the manifest gives no label_map")
        image = load_volume(case.image)
        others = [load_volume(path) for path in case.images_of(model.modalities)]
        mask = load_volume(case.mask, kind="mask").data if case.mask else None
        reference = load_volume(case.label_map, kind="label_map")
        result = predictor.predict(image, mask, matrix=transforms.get(case_id), progress=progress, others=others)
        scores += evaluate_label_maps(
            result.label_map,
            reference.data,
            model.labels,
            reference.spacing,
            case_id=case_id,
        )
        if error_rates is not None:
            labels = model.labels
            error_rates[case_id] = error_rate(labels.to_classes(result.label_map), labels.to_classes(reference.data))
    return scores


def describe_model(config: Config) -> str:
    """One line naming a configuration's network, inputs, losses and augmentation (its family's description).

    Parameters
    ----------
    config : Config
        A model's configuration.

    Returns
    -------
    str
        :meth:`~brainseg.families.Family.describe` of the configuration's family.
    """
    return family_of(config.model).describe(config)


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def write_model_card(
    model_dir: str | Path,
    progress: bool = False,
    scores: list[StructureScore] | None = None,
    error_rates: dict[str, float] | None = None,
) -> Path:
    """Evaluate on the validation cases and write ``model_card.md``, ``validation.csv`` and ``validation.json``.

    Parameters
    ----------
    model_dir : str or Path
        A trained model folder.
    progress : bool
        Show progress bars.
    scores : list of StructureScore, optional
        Already computed validation scores (skips the evaluation).
    error_rates : dict of str to float, optional
        With ``scores``: the cases' error rates (:func:`evaluate_validation`), shown beside them.

    Returns
    -------
    Path
        ``model_dir / "model_card.md"``, written atomically; its hand-written sections (``## Known limitations``,
        ``## Lineage``) are carried over from the card it replaces.

    Raises
    ------
    InputError
        If the model folder, or (when ``scores`` is not given) a validation case or its label map, cannot be read.

    Notes
    -----
    A ``refinement.md`` in the folder (:mod:`brainseg.training.refinement`: the passes of an iterative
    inference, scored) and a ``view_fusion.md`` (:mod:`brainseg.training.view_fusion`: MixNet's views alone
    and fused) are copied into the card, as is a ``true_centroids.md``.
    """
    model_dir = Path(model_dir)
    model = load_model_folder(model_dir)
    if scores is None:
        error_rates = {}
        scores = evaluate_validation(model, progress, error_rates=error_rates)
    error_rates = error_rates or {}
    write_scores_csv(model_dir / "validation.csv", scores)
    write_scores_json(model_dir / "validation.json", scores)
    mean = summarize(scores)
    per_case = defaultdict(list)
    by_structure = defaultdict(list)
    for s in scores:
        per_case[s.case_id].append(s)
        by_structure[(s.label, s.name)].append(s)
    training = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").exists() else {}
    history = json.loads((model_dir / "history.json").read_text()) if (model_dir / "history.json").exists() else []
    unfinished = bool(history) and not training  # stopped before its end, where training.json is written
    cfg, tc = model.config.model, model.config.training
    lines = [
        f"# Model card: {cfg.name} ({model_dir.name})",
        "",
        f"{family_of(cfg).paper} {describe_model(model.config)}, trained on the cases of "
        f"{Path(tc.manifest).name} ({cfg.num_classes} classes: background + {cfg.num_classes - 1} structures; "
        f"label table {tc.labels if tc.labels in ('auto', 'miccai2012') else Path(tc.labels).name}, in labels.tsv).",
        "",
        "## Data",
        f"- Training cases ({len(tc.train_cases)}): {', '.join(tc.train_cases)}",
        f"- Validation cases ({len(tc.validation_cases)}): {', '.join(tc.validation_cases)}",
        *([f"- {CREDIT}"] if model.labels == LabelTable.miccai2012() else []),
        "",
        "## Training",
        f"- Parameters: {count_parameters(model.network):,} ({family_of(cfg).paper_parameters})",
        f"- {_epochs(history[-1]['epoch'], tc.epochs) if unfinished else _epochs(training.get('epochs', tc.epochs))}"
        f" x {tc.samples_per_epoch:,} {family_of(cfg).training_examples}, batch {tc.batch_size}, sampling '{tc.sampling}'"
        + ("; an unfinished run (training.json is written at its end)" if unfinished else "")
        + (
            f"; stopped when validation mean Dice gained less than {tc.stop_min_gain:g} over {tc.stop_epochs} epochs"
            if tc.stop_min_gain
            else ""
        )
        + (
            f"; the weights are epoch {training['weights_epoch']}'s (best validation mean Dice)"
            if tc.keep_best and "weights_epoch" in training
            else ""
        ),
        f"- SGD {'Nesterov ' if tc.nesterov else ''}momentum {tc.momentum}, learning rate {tc.learning_rate} "
        + (
            f"halved at {', '.join(f'{f:g}' for f in tc.lr_milestones)} of the epochs"
            if tc.lr_milestones
            else f"with poly decay (power {tc.poly_power}) per epoch"
        )
        + f", weight decay {tc.weight_decay}, dropout {cfg.dropout}, batch norm {cfg.batch_norm}, seed {tc.seed}",
        f"- Intensities: {model.normalization.method}",
        "- Training time: "
        + (
            f"{history[-1]['elapsed_s'] / 60:.1f} min so far (history.json)"
            if unfinished
            else f"{training.get('elapsed_s', float('nan')) / 60:.1f} min on {training.get('machine', 'unknown')}"
        ),
    ]
    if model.prior is not None:
        lines.append(
            f"- Sampling prior correction at inference: strength {model.prior.strength:g} of "
            "log(brain / sampling class frequency) added to the logits"
            + (
                " (chosen by `brainseg calibrate` on the validation cases: prior_calibration.csv)"
                if model.prior.strength
                else ""
            )
        )
    if tc.init_from:
        lines.append(
            f"- Fine-tuned from the model folder `{tc.init_from}` (its layers copied, new inputs starting at zero): "
            "the total budget is that model's training plus this one"
        )
    lines += [
        "",
        "| epoch | loss | learning rate | validation mean Dice |",
        "|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(
            f"| {h['epoch']} | {h['loss']:.4f} | {h['lr']:.2e} | {_fmt(h.get('val_mean_dice', float('nan')))} |"
        )
    lines += [
        "",
        "## Validation (whole volumes, dense inference, each case on its own grid and spacing)",
        f"Means over {len(tc.validation_cases)} cases x {cfg.num_classes - 1} structures; distances in mm. "
        f"{mean['missing']} structure scores had a structure missing from one side and are left out of the distance means.",
        "",
        "| metric | mean |",
        "|---|---:|",
        f"| Dice | {_fmt(mean['dice'], 4)} |",
        f"| Hausdorff distance (max) | {_fmt(mean['hausdorff'], 2)} |",
        f"| HD95 | {_fmt(mean['hd95'], 2)} |",
        f"| mean surface distance (d_msd, mean of the two directed means) | {_fmt(mean['msd'], 3)} |",
        f"| volumetric similarity | {_fmt(mean['volumetric_similarity'], 4)} |",
    ]
    rated = bool(error_rates) and all(case in error_rates for case in per_case)
    if rated:
        rate = sum(error_rates[case] for case in per_case) / len(per_case)
        lines.append(f"| error rate (structure voxels misclassified, mean over cases) | {_fmt(rate, 4)} |")
    lines += [
        "",
        "| case | mean Dice | mean HD (mm) | mean MSD (mm) |" + (" error rate |" if rated else ""),
        "|---|---:|---:|---:|" + ("---:|" if rated else ""),
    ]
    for case_id, rows in per_case.items():
        m = summarize(rows)
        lines.append(
            f"| {case_id} | {_fmt(m['dice'], 4)} | {_fmt(m['hausdorff'], 2)} | {_fmt(m['msd'], 3)} |"
            + (f" {_fmt(error_rates[case_id], 4)} |" if rated else "")
        )
    lines += [
        "",
        "### Per structure (mean over validation cases)",
        "",
        "| label | structure | Dice | HD (mm) | HD95 (mm) | MSD (mm) | VS |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (label, name), rows in by_structure.items():
        m = summarize(rows)
        lines.append(
            f"| {label} | {name} | {_fmt(m['dice'])} | {_fmt(m['hausdorff'], 2)} | {_fmt(m['hd95'], 2)} "
            f"| {_fmt(m['msd'])} | {_fmt(m['volumetric_similarity'])} |"
        )
    for name, title in (
        ("refinement.md", "Iterative inference, pass by pass"),
        ("true_centroids.md", "Given the reference's centroids"),
        ("view_fusion.md", "Views alone and fused"),
    ):
        if (model_dir / name).is_file():
            lines += ["", f"## {title}", "", (model_dir / name).read_text().rstrip()]
    path = model_dir / "model_card.md"
    kept = _hand_written_sections(path)
    return atomic_write_text(path, "\n".join(lines + ([""] + kept if kept else [])) + "\n")


#: Sections of a model card written by people, carried over when the card is rewritten.
HAND_WRITTEN_SECTIONS = ("## Known limitations", "## Lineage")


def _epochs(done: int, of: int | None = None) -> str:
    """``'1 epoch'``, ``'8 epochs'``, or with ``of``: ``'46 of 150 epochs'``."""
    total = done if of is None else of
    return f"{done}{'' if of is None else f' of {of}'} epoch{'' if total == 1 else 's'}"


def _hand_written_sections(card: Path) -> list[str]:
    """The lines of an existing card's hand-written sections (:data:`HAND_WRITTEN_SECTIONS`), in their order."""
    if not card.is_file():
        return []
    kept: list[str] = []
    keeping = False
    for line in card.read_text().splitlines():
        if line.startswith("## "):
            keeping = line.strip() in HAND_WRITTEN_SECTIONS
        if keeping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept
