"""Ablation studies: train and evaluate a list of configs and tabulate them like Ganaye et al. (2018), Tables 1-2.

Each config is trained into ``OUTPUT/<config name>`` (resumed if interrupted,
skipped if a row with the same settings was already trained and scored, here
or in a sibling study folder), scored on its validation
cases on their own grids (:func:`~brainseg.training.model_card.evaluate_validation`),
and summarised as the mean +- standard deviation over validation subjects of
each subject's mean Dice, Hausdorff distance and mean surface distance over
structures, with the parameter count beside the paper's where the paper gives
one.

A second table and two box plots compare the rows structure by structure, as Wachinger et al. (2018)
compare DeepNAT's variants in their Fig. 4: the median and mean over structures of each structure's
mean Dice over cases, and a two-sided Wilcoxon signed-rank test of each row against a reference row,
paired by structure (:mod:`brainseg.training.ablation_stats`, :mod:`brainseg.training.ablation_figures`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainseg.config import Config, config_from_dict, config_to_dict, load_config
from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.io.atomic import atomic_write_text
from brainseg.metrics.report import StructureScore, summarize, write_scores_csv, write_scores_json
from brainseg.model_folder import load_model_folder
from brainseg.models import count_parameters
from brainseg.training.ablation_stats import format_structure_table, read_structure_dice, summarize_structures
from brainseg.training.model_card import evaluate_validation, write_model_card
from brainseg.training.trainer import train, with_overrides

__all__ = ["AblationRow", "format_table", "row_label", "run_ablation"]


@dataclass(frozen=True)
class AblationRow:
    """One trained and evaluated configuration.

    Attributes
    ----------
    name : str
        Config file stem (the run folder's name).
    label : str
        Row label from :func:`row_label`.
    per_case : dict of str to dict of str to float
        Per validation case, the mean ``dice``, ``hausdorff`` and ``msd`` over structures.
    parameters : int
        Trainable parameters.
    train_minutes : float
        Training wall time.
    structure_dice : dict of str to dict of str to float
        Per validation case, the Dice of every structure by name (NaN where the structure is absent
        from both maps); empty for rows scored before it was recorded whose ``validation.csv`` is gone.
    """

    name: str
    label: str
    per_case: dict[str, dict[str, float]]
    parameters: int
    train_minutes: float
    structure_dice: dict[str, dict[str, float]] = field(default_factory=dict)

    def stat(self, metric: str) -> tuple[float, float]:
        """Mean and (population) standard deviation over cases of a per-case metric.

        Parameters
        ----------
        metric : str
            A key of every case's entry in :attr:`per_case`: ``'dice'``, ``'hausdorff'``, ``'msd'`` (mm), or
            ``'error_rate'`` where recorded.

        Returns
        -------
        mean, std : float
            Over the validation cases (NaN when there are none).

        Raises
        ------
        KeyError
            If a case has no ``metric``.
        """
        values = np.array([case[metric] for case in self.per_case.values()], float)
        return float(values.mean()), float(values.std())


def row_label(config: Config) -> str:
    """The name of a configuration's row in its paper's ablation table.

    Its family's :meth:`~brainseg.families.Family.row_label`, with ``", bfloat16 steps"`` appended when
    ``training.precision`` is not float32 (a setting of every family).

    Parameters
    ----------
    config : Config
        The row's configuration.

    Returns
    -------
    str
        E.g. ``"BaseNet"`` or ``"BaseNet, bfloat16 steps"``.
    """
    label = family_of(config.model).row_label(config)
    if config.training.precision != "float32":
        label += f", {config.training.precision} steps"
    return label


def _per_case(
    scores: list[StructureScore], error_rates: Mapping[str, float] | None = None
) -> dict[str, dict[str, float]]:
    groups: dict[str, list[StructureScore]] = defaultdict(list)
    for s in scores:
        groups[s.case_id].append(s)
    out = {}
    for case_id, rows in groups.items():
        m = summarize(rows)
        out[case_id] = {"dice": m["dice"], "hausdorff": m["hausdorff"], "msd": m["msd"]}
        if error_rates and case_id in error_rates:
            out[case_id]["error_rate"] = float(error_rates[case_id])
    return out


def _row_settings(config: Config) -> dict:
    # What a row means: every setting except the torch thread count (speed only).
    settings = config_to_dict(config)
    settings["training"].pop("num_threads")
    return settings


def _find_result(result: Path, output: Path, settings: dict) -> tuple[Path, dict] | None:
    # A finished row with exactly these settings: this run's, or one in a sibling study folder
    # (Table 2's distance + conv row is Table 1's +Dist row).
    # Records are compared after reading them back as configs, so that a setting added since a row was
    # recorded (absent from its record) counts as its default.
    candidates = [result] + sorted(output.parent.glob("*/*/ablation_row.json"))
    for path in candidates:
        if path.is_file():
            record = json.loads(path.read_text())
            try:
                recorded = _row_settings(config_from_dict(record.get("config") or {}, str(path)))
            except InputError:  # a record from another brainseg: not this row
                continue
            if recorded == settings:
                return path, record
    return None


def _structure_dice(scores: list[StructureScore]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in scores:
        out.setdefault(s.case_id, {})[s.name] = s.dice
    return out


def _cached_structure_dice(path: Path, record: dict) -> dict[str, dict[str, float]]:
    # Rows recorded before per-structure Dice was kept: read it from the row's validation.csv.
    if "structure_dice" in record:
        return {c: {s: math.nan if d is None else d for s, d in v.items()} for c, v in record["structure_dice"].items()}
    csv_path = path.parent / "validation.csv"
    return read_structure_dice(csv_path) if csv_path.is_file() else {}


def _json_dice(structure_dice: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    return {c: {s: d if math.isfinite(d) else None for s, d in v.items()} for c, v in structure_dice.items()}


def run_ablation(
    configs: Sequence[str | Path],
    output: str | Path,
    *,
    epochs: int | None = None,
    samples_per_epoch: int | None = None,
    num_threads: int | None = None,
    validation_cases: Sequence[str] | None = None,
    reference: str | None = None,
    progress: bool = True,
) -> list[AblationRow]:
    """Train (or reuse) and evaluate every config; write ``ablation.md``, ``ablation.json`` and box plots.

    ``ablation.md`` holds the table of :func:`format_table` and, below it, the comparison over
    structures of :func:`~brainseg.training.ablation_stats.format_structure_table`;
    ``dice_by_variant.png`` and ``dice_by_structure.png`` beside it show the same Dice as box plots
    (:mod:`brainseg.training.ablation_figures`).

    Parameters
    ----------
    configs : sequence of path
        YAML configs; each is trained into ``output/<stem>``.
    output : str or Path
        Folder of the runs and the tables.
    epochs, samples_per_epoch : int, optional
        Override the configs' training budget (the same for every row).
    num_threads : int, optional
        Override the configs' torch threads (does not change results' meaning,
        only speed; it is left out of the settings compared for reuse).
    validation_cases : sequence of str, optional
        Override the configs' validation cases (the subjects every row is scored on), e.g. a
        subset of them when scoring whole volumes is what the budget cannot afford.
    reference : str, optional
        The row (config stem) the others are tested against, structure by structure; default: the
        first config.
    progress : bool
        Show progress bars.

    Returns
    -------
    list of AblationRow

    Raises
    ------
    InputError
        If ``output/<stem>`` already holds a run trained with other settings
        (it is never reused nor overwritten), a config is unusable, or
        ``reference`` names none of the configs.
    """
    names = [Path(path).stem for path in configs]
    if reference is not None and reference not in names:
        raise InputError(f"--reference {reference!r} names none of the configs ({', '.join(names)})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    overrides = {
        k: v
        for k, v in (
            ("epochs", epochs),
            ("samples_per_epoch", samples_per_epoch),
            ("validation_cases", tuple(validation_cases) if validation_cases else None),
        )
        if v
    }
    rows = []
    for path in configs:
        name = Path(path).stem
        config = load_config(path)
        if overrides:
            config = with_overrides(config, **overrides)
        run = output / name
        result = run / "ablation_row.json"
        settings = _row_settings(config)
        if num_threads:
            config = with_overrides(config, num_threads=num_threads)
        found = _find_result(result, output, settings)
        if found is not None:
            where, cached = found
            dice = _cached_structure_dice(where, cached)
            # the label from the config, so that rows recorded by an older brainseg read as today's table names them
            row = AblationRow(
                name, row_label(config), cached["per_case"], cached["parameters"], cached["minutes"], dice
            )
            rows.append(row)
            continue
        if (run / "config.yaml").is_file():
            if _row_settings(load_config(run / "config.yaml")) != settings:
                raise InputError(
                    f"{run}: holds a run trained with other settings than {path}; "
                    "remove that folder or choose another output folder"
                )
        done = (run / "training.json").is_file() and (run / "config.yaml").is_file()
        if not done:
            train(config, run, resume=(run / "checkpoint.pt").is_file(), progress=progress)
        model = load_model_folder(run)
        error_rates: dict[str, float] = {}
        scores = evaluate_validation(model, progress=progress, error_rates=error_rates)
        write_scores_csv(run / "validation.csv", scores)
        write_scores_json(run / "validation.json", scores)
        write_model_card(run, scores=scores, error_rates=error_rates)
        minutes = json.loads((run / "training.json").read_text())["elapsed_s"] / 60
        row = AblationRow(
            name,
            row_label(config),
            _per_case(scores, error_rates),
            count_parameters(model.network),
            minutes,
            _structure_dice(scores),
        )
        record = {
            "label": row.label,
            "per_case": row.per_case,
            "parameters": row.parameters,
            "minutes": minutes,
            "config": settings,
            "structure_dice": _json_dice(row.structure_dice),
        }
        atomic_write_text(result, json.dumps(record, indent=2) + "\n")
        rows.append(row)
    first = load_config(configs[0]) if configs else None
    budget = ""
    if first is not None:
        tc = with_overrides(first, **overrides).training if overrides else first.training
        budget = (
            f"Budget per row: {tc.epochs} epochs x {tc.samples_per_epoch:,} training examples (batch {tc.batch_size}), "
            f"learning rate {tc.learning_rate}, on this machine's CPU; validation cases: "
            f"{', '.join(tc.validation_cases)}."
        )
    family = family_of(first.model) if first is not None else None
    table = format_table(
        rows,
        budget,
        family.paper_results if family is not None else None,
        family.paper_error_rates if family is not None else None,
    )
    if rows and all(r.structure_dice for r in rows):
        table += "\n" + _compare_structures(rows, reference or rows[0].name, output)
    elif rows:
        lacking = ", ".join(r.name for r in rows if not r.structure_dice)
        table += f"\nNo comparison over structures: no per-structure scores for {lacking} (validation.csv gone).\n"
    atomic_write_text(output / "ablation.md", table)
    atomic_write_text(
        output / "ablation.json",
        json.dumps(
            [
                {
                    "name": r.name,
                    "label": r.label,
                    "per_case": r.per_case,
                    "parameters": r.parameters,
                    "train_minutes": r.train_minutes,
                    "structure_dice": _json_dice(r.structure_dice),
                }
                for r in rows
            ],
            indent=2,
        )
        + "\n",
    )
    return rows


def _compare_structures(rows: Sequence[AblationRow], reference: str, output: Path) -> str:
    # The second table of ablation.md and the box plots beside it (Wachinger et al. 2018, Fig. 4).
    from brainseg.training.ablation_figures import plot_dice_by_structure, plot_dice_by_variant

    summaries = summarize_structures(rows, reference)
    plot_dice_by_variant(rows, output / "dice_by_variant.png", summaries, reference)
    plot_dice_by_structure(rows, output / "dice_by_structure.png")
    cases = {len(r.structure_dice) for r in rows}
    text = format_structure_table(summaries, reference, cases.pop() if len(cases) == 1 else None)
    return (
        text
        + "\nBox plots: `dice_by_variant.png` (per row, over structures), `dice_by_structure.png` (per structure, over cases).\n"
    )


def _pm(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(
    rows: Sequence[AblationRow],
    budget: str = "",
    paper_results: Mapping[str, tuple[float | None, float | None, float | None, int | None]] | None = None,
    paper_error_rates: Mapping[str, float] | None = None,
) -> str:
    """A Markdown table shaped like the paper's: Dice, Hausdorff, MSD (mean ± std over subjects), parameters.

    The paper's columns come from ``paper_results`` (the family's
    :attr:`~brainseg.families.Family.paper_results`, by row label; "–" where
    its table has no such figure). With ``paper_error_rates`` (a family whose paper reports error
    rates, :attr:`~brainseg.families.Family.paper_error_rates`) two columns follow: the row's
    validation error rate (mean ± std over subjects; "n/a" for rows scored without it) and the paper's.

    Parameters
    ----------
    rows : sequence of AblationRow
        One table row each, in order.
    budget : str
        A sentence printed below the table (the training budget); none if empty.
    paper_results : mapping of str to (float or None, float or None, float or None, int or None), optional
        By row label: the paper's Dice, Hausdorff distance (mm), MSD (mm) and parameter count.
    paper_error_rates : mapping of str to float, optional
        By row label: the paper's error rate; when given (non-empty), the two error-rate columns are added.

    Returns
    -------
    str
        The Markdown table (and the budget line), ending in a newline. Distances in mm, training time in minutes.

    Examples
    --------
    >>> from brainseg.families.ganaye2018 import PAPER_RESULTS
    >>> row = AblationRow("basenet", "BaseNet", {"a": {"dice": 0.7, "hausdorff": 30.0, "msd": 1.5},
    ...                                          "b": {"dice": 0.8, "hausdorff": 20.0, "msd": 1.0}}, 1000, 5.0)
    >>> print(format_table([row], paper_results=PAPER_RESULTS).splitlines()[2])
    | BaseNet | 0.750 ± 0.050 | 25.00 ± 5.00 | 1.250 ± 0.250 | 1,000 | 0.694 | 40.26 | 1.74 | 1,249,415 | 5 |
    """
    lines = [
        "| model | Dice | Hausdorff (mm) | MSD (mm) | parameters | paper Dice | paper HD (mm) | paper MSD (mm) "
        "| paper parameters | training (min) |" + (" error rate | paper error rate |" if paper_error_rates else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if paper_error_rates else ""),
    ]
    for r in rows:
        paper = [
            "–" if v is None else format(v, f)
            for v, f in zip((paper_results or {}).get(r.label, (None,) * 4), (".3f", ".2f", ".2f", ","))
        ]
        line = (
            f"| {r.label} | {_pm(*r.stat('dice'), 3)} | {_pm(*r.stat('hausdorff'), 2)} | {_pm(*r.stat('msd'), 3)} "
            f"| {r.parameters:,} | {' | '.join(paper)} | {r.train_minutes:.0f} |"
        )
        if paper_error_rates:
            has = all("error_rate" in case for case in r.per_case.values())
            paper_rate = paper_error_rates.get(r.label)
            line += f" {_pm(*r.stat('error_rate'), 3) if has else 'n/a'} | {'–' if paper_rate is None else f'{paper_rate:.3f}'} |"
        lines.append(line)
    if budget:
        lines += ["", budget]
    return "\n".join(lines) + "\n"
