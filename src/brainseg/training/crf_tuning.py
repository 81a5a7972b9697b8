"""Choosing the dense CRF's settings of a model folder on its validation cases.

Each validation case is segmented once, keeping the class probabilities on the network's grid (with
the folder's prior correction, as ``brainseg segment`` uses them); every candidate setting of
:class:`~brainseg.postprocessing.dense_crf.CRFParameters` then runs the CRF on those probabilities,
maps the labels back to the case's own grid exactly as ``brainseg segment --crf`` does, and scores
them there against the manual label map (:func:`brainseg.metrics.report.evaluate_label_maps`: Dice,
HD95 and mean surface distance per structure, averaged over structures, then over cases). The
network's own labels (no CRF) are scored the same way.

The rule (issue G): a setting qualifies when its mean Dice is not below the network's and its mean
HD95 is below the network's; of those, the one with the lowest mean HD95 is written into the
folder's ``config.yaml`` (its ``crf:`` section; checksums rewritten), so that ``segment --crf`` uses
it. When none qualifies, the config is left alone. Every row goes to ``crf_tuning.csv``.

Scoring takes hours on a laptop CPU (one CRF per case and setting), so every (case, setting) is
appended to ``crf_tuning_cases.jsonl`` as soon as it is scored, under an identity of the folder's
weights, prior, labels, normalisation and reference: a rerun (with the same or another grid) scores
only what is missing, and a retrained folder starts afresh.

The settings are chosen on the cases they are then reported on: the chosen row's figures are
slightly optimistic.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from brainseg.errors import InputError
from brainseg.inference.predictor import Predictor
from brainseg.io.atomic import atomic_write_text, sha256_file
from brainseg.io.nifti import load_volume, voxel_spacing
from brainseg.metrics.report import evaluate_label_maps, summarize
from brainseg.model_folder import PAYLOAD, LoadedModel, load_model_folder, write_checksums
from brainseg.postprocessing.dense_crf import CRFParameters, dense_crf
from brainseg.training.calibration import validation_setup
from brainseg.training.data import prepare_case

__all__ = [
    "CASES_FILE",
    "DEFAULT_GRID",
    "TUNING_FILE",
    "CRFScores",
    "choose_crf",
    "crf_grid",
    "score_crf_settings",
    "tune_crf",
]

TUNING_FILE = "crf_tuning.csv"
#: Per case and setting, one JSON line as each is scored: the record, and what a rerun resumes from.
CASES_FILE = "crf_tuning_cases.jsonl"

#: Issue G's small grid over (sa, sb, v1): 2 x 2 x 2 settings around DeepNAT's (mapped) defaults,
#: with the smoothness weight v2 = 1 (DeepNAT's 3 lowered the default model's Dice on validation
#: subject 1000 by 0.003, docs/crf.md).
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "appearance_weight": (1.0, 3.0),
    "position_sigma_mm": (1.5, 3.0),
    "intensity_sigma": (0.2, 0.4),
    "smoothness_weight": (1.0,),
}


@dataclass(frozen=True)
class CRFScores:
    """Validation figures of one CRF setting (or of none), averaged over structures, then cases.

    Attributes
    ----------
    settings : CRFParameters or None
        None: the network's labels, without the CRF.
    dice, hd95, msd : float
        Mean Dice; mean 95th-percentile Hausdorff distance and mean surface distance, mm
        (structures missing from the prediction or the reference left out, as in
        :func:`brainseg.metrics.report.summarize`).
    changed : float
        Mean fraction of the brain voxels (the scan's 1 mm grid) whose label the CRF changed.
    seconds : float
        Mean CRF time per case, s.
    """

    settings: CRFParameters | None
    dice: float
    hd95: float
    msd: float
    changed: float
    seconds: float


def crf_grid(base: CRFParameters, grid: dict[str, Sequence[float]]) -> list[CRFParameters]:
    """Every combination of ``grid``'s values over ``base`` (the folder's settings).

    Parameters
    ----------
    base : CRFParameters
        Settings the grid does not name keep these values.
    grid : dict of str to sequence of float
        :class:`~brainseg.postprocessing.dense_crf.CRFParameters` field name -> candidate values.

    Returns
    -------
    list of CRFParameters
        In the order of :func:`itertools.product` over ``grid``'s items.

    Raises
    ------
    InputError
        If a name is not a setting or a value is invalid for it.

    Examples
    --------
    >>> [p.appearance_weight for p in crf_grid(CRFParameters(), {"appearance_weight": [1, 5]})]
    [1.0, 5.0]
    """
    fields = {f.name: f.type for f in dataclasses.fields(CRFParameters)}
    unknown = sorted(set(grid) - set(fields))
    if unknown:
        raise InputError(f"--grid: unknown CRF setting(s) {unknown}; known: {sorted(fields)}")
    out = []
    for values in itertools.product(*grid.values()):
        changes = {}
        for name, value in zip(grid, values):
            changes[name] = int(value) if fields[name] in ("int", int) else float(value)
        try:
            out.append(dataclasses.replace(base, **changes))
        except ValueError as err:
            raise InputError(f"--grid: {err}") from None
    return out


def _figures(prediction: np.ndarray, reference: np.ndarray, model: LoadedModel, spacing, case_id: str) -> dict:
    scores = evaluate_label_maps(prediction, reference, model.labels, spacing, case_id=case_id)
    # structures the reference lacks are not scored (NaN Dice; their distances are inf)
    present = [s for s in scores if s.reference_voxels > 0]
    return summarize(present)


def _model_identity(folder: Path) -> str:
    # what the probabilities depend on: every payload file but config.yaml (whose crf: section tuning writes)
    digest = hashlib.sha256()
    for name in PAYLOAD:
        if name != "config.yaml" and (folder / name).is_file():
            digest.update(f"{name} {sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def _key(case_id: str, params: CRFParameters | None) -> str:
    return json.dumps([case_id, None if params is None else dataclasses.asdict(params)], sort_keys=True)


class _CaseLog:
    """The append-only ``crf_tuning_cases.jsonl``: read what a previous run scored, add as we go."""

    def __init__(self, path: Path | None, identity: str) -> None:
        self.path, self.identity, self.scored = path, identity, {}
        if path is None:
            return
        lines = path.read_text().splitlines() if path.is_file() else []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        if entries and entries[0].get("identity") == identity:
            self.scored = {e["key"]: e["figures"] for e in entries[1:] if "key" in e}
        else:  # absent, or another model's: start afresh
            atomic_write_text(path, json.dumps({"identity": identity}) + "\n")

    def add(self, key: str, case_id: str, figures: list[float]) -> None:
        self.scored[key] = figures
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": key, "case": case_id, "figures": figures}) + "\n")


def score_crf_settings(
    model: LoadedModel,
    settings: Sequence[CRFParameters],
    case_ids: Sequence[str] | None = None,
    progress: bool = False,
    log: str | Path | None = None,
) -> list[CRFScores]:
    """Validation figures of the network alone and of each CRF setting (see the module docstring).

    Parameters
    ----------
    model : LoadedModel
        A trained model folder.
    settings : sequence of CRFParameters
        Candidates.
    case_ids : sequence of str, optional
        Default: the validation cases of the model's config.
    progress : bool
        Show a progress bar.
    log : str or Path, optional
        A ``crf_tuning_cases.jsonl`` to resume from and append to (see the module docstring).

    Returns
    -------
    list of CRFScores
        The network alone (``settings`` None) first, then ``settings`` in order.

    Raises
    ------
    InputError
        If the config names no validation cases, or a case or its label map is missing.
    """
    tc = model.config.training
    by_id, case_ids, transforms = validation_setup(model, case_ids)
    predictor = Predictor(model)
    rows = [None, *settings]
    figures = np.zeros((len(rows), len(case_ids), 5))
    bar = tqdm(total=len(rows) * len(case_ids), desc="CRF settings x cases", disable=not progress)
    scored = _CaseLog(Path(log) if log is not None else None, _model_identity(Path(model.path)))
    for k, case_id in enumerate(case_ids):
        case = by_id.get(case_id)
        if case is None or case.label_map is None:
            raise InputError(f"{tc.manifest}: no labelled case {case_id!r}")
        keys = [_key(case_id, params) for params in rows]
        if all(key in scored.scored for key in keys):  # scored by an earlier run
            figures[:, k] = [scored.scored[key] for key in keys]
            bar.update(len(rows))
            continue
        reference = load_volume(case.label_map, kind="label_map").data
        prepared, image = prepare_case(case, model.normalization, model.modalities)
        network_classes, probs, registered = predictor.segment_prepared(
            prepared, matrix=transforms.get(case_id), probabilities=True
        )
        if registered is None:  # the CRF runs where segment_prepared runs it
            working, spacing = prepared.image, (1.0, 1.0, 1.0)
        else:
            working, spacing = registered.image, voxel_spacing(registered.reference_affine)
        for j, params in enumerate(rows):
            if keys[j] in scored.scored:
                figures[j, k] = scored.scored[keys[j]]
                bar.update()
                continue
            t0 = time.perf_counter()
            if params is None:
                classes, seconds = network_classes, 0.0
            else:
                working_classes, _ = dense_crf(probs, working, spacing, params)
                seconds = time.perf_counter() - t0
                classes = registered.to_native(working_classes) if registered is not None else working_classes
            label_map = model.labels.to_labels(prepared.to_source_grid(classes))
            summary = _figures(label_map, reference, model, image.spacing, case_id)
            changed = float((classes != network_classes).sum()) / max(1, int(prepared.mask.sum()))
            figures[j, k] = summary["dice"], summary["hd95"], summary["msd"], changed, seconds
            scored.add(keys[j], case_id, [float(v) for v in figures[j, k]])
            bar.update()
        del probs
    bar.close()
    mean = figures.mean(axis=1)
    return [CRFScores(params, *map(float, mean[j])) for j, params in enumerate(rows)]


def choose_crf(scores: Sequence[CRFScores]) -> CRFScores | None:
    """The setting to ship: mean Dice not below the network's, mean HD95 below it, lowest HD95.

    Parameters
    ----------
    scores : sequence of CRFScores
        The network alone first (``settings`` None), then the candidates.

    Returns
    -------
    CRFScores or None
        None when no candidate qualifies.

    Examples
    --------
    >>> none = CRFScores(None, 0.70, 5.0, 1.0, 0.0, 0.0)
    >>> a = CRFScores(CRFParameters(appearance_weight=1.0), 0.70, 4.0, 1.0, 0.01, 9.0)
    >>> b = CRFScores(CRFParameters(appearance_weight=3.0), 0.69, 3.0, 1.0, 0.02, 9.0)
    >>> choose_crf([none, a, b]).settings.appearance_weight  # b lowers the Dice
    1.0
    """
    network = scores[0]
    qualified = [s for s in scores[1:] if s.dice >= network.dice and s.hd95 < network.hd95]
    return min(qualified, key=lambda s: s.hd95) if qualified else None


def _write_crf_section(config_path: Path, params: CRFParameters) -> None:
    # the folder's YAML as written, with only its crf: section replaced (paths and the rest unchanged)
    raw = yaml.safe_load(config_path.read_text())
    raw["crf"] = dataclasses.asdict(params)
    atomic_write_text(config_path, yaml.safe_dump(raw, sort_keys=False))


def tune_crf(
    model_dir: str | Path,
    grid: dict[str, Sequence[float]] | None = None,
    case_ids: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[CRFScores | None, list[CRFScores]]:
    """Score the grid on the validation cases and write the chosen setting into the model folder.

    Parameters
    ----------
    model_dir : str or Path
        A trained model folder (written in place: ``config.yaml``'s ``crf:`` section,
        ``crf_tuning.csv``, ``crf_tuning_cases.jsonl``, checksums). A rerun resumes from
        ``crf_tuning_cases.jsonl``.
    grid : dict of str to sequence of float, optional
        Setting name -> candidates (default :data:`DEFAULT_GRID`) over the folder's settings.
    case_ids : sequence of str, optional
        Default: the config's validation cases.
    progress : bool
        Show a progress bar.

    Returns
    -------
    chosen : CRFScores or None
        See :func:`choose_crf`; None leaves the config as it was.
    scores : list of CRFScores
        The network alone, then every candidate.

    Raises
    ------
    InputError
        As :func:`crf_grid` and :func:`score_crf_settings`.
    """
    model = load_model_folder(model_dir)
    settings = crf_grid(model.config.crf, DEFAULT_GRID if grid is None else grid)
    folder = Path(model.path)
    scores = score_crf_settings(model, settings, case_ids, progress, log=folder / CASES_FILE)
    chosen = choose_crf(scores)
    names = [f.name for f in dataclasses.fields(CRFParameters)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["crf", *names, "dice", "hd95", "msd", "changed", "seconds", "chosen"])
    for s in scores:
        values = ["" for _ in names] if s.settings is None else [getattr(s.settings, n) for n in names]
        figures = [f"{s.dice:.4f}", f"{s.hd95:.3f}", f"{s.msd:.3f}", f"{s.changed:.5f}", f"{s.seconds:.1f}"]
        writer.writerow(["no" if s.settings is None else "yes", *values, *figures, "yes" if s is chosen else ""])
    if chosen is not None and chosen.settings is not None:
        _write_crf_section(folder / "config.yaml", chosen.settings)
    atomic_write_text(folder / TUNING_FILE, buffer.getvalue())
    write_checksums(folder)
    return chosen, scores
