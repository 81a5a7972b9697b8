"""Dice over structures for an ablation study: medians, means and paired tests, as in Wachinger et al. (2018), Fig. 4.

DeepNAT's paper compares its variants by the distribution of Dice over the 25 structures (box plots),
not by one mean per variant. The figures here are built the same way for any family's rows:

1. per structure ``s`` and row ``r``: ``d_r(s)``, the mean Dice of ``s`` over the validation cases
   (cases where ``s`` is absent from both the prediction and the reference, Dice NaN, are left out;
   a structure NaN in every case is left out of the row);
2. per row: the median and the mean of ``d_r(s)`` over its structures;
3. per row against a reference row: a two-sided Wilcoxon signed-rank test of the pairs
   ``(d_r(s), d_ref(s))`` over the structures both rows score (:func:`wilcoxon_p`), with the median of
   the differences ``d_r(s) - d_ref(s)``.

Structures are matched by name. Each structure enters the test once (its mean over cases), so the test
asks whether one variant beats the other structure by structure, not case by case.

References
----------
.. [1] C. Wachinger, M. Reuter, T. Klein, "DeepNAT: Deep convolutional neural network for segmenting
   neuroanatomy", NeuroImage 170:434-445, 2018. doi:10.1016/j.neuroimage.2017.02.035
.. [2] F. Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1(6):80-83, 1945.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainseg.errors import InputError

if TYPE_CHECKING:
    from brainseg.training.ablation import AblationRow

__all__ = [
    "StructureSummary",
    "format_structure_table",
    "read_structure_dice",
    "structure_means",
    "summarize_structures",
    "wilcoxon_p",
]


@dataclass(frozen=True)
class StructureSummary:
    """One row's Dice over structures, and its test against the reference row.

    Attributes
    ----------
    name, label : str
        The row's config stem and table label.
    structures : int
        Structures with a Dice in at least one case.
    median_dice, mean_dice : float
        Median and mean over those structures of the mean Dice over cases.
    paired : int
        Structures scored by both this row and the reference row.
    median_difference : float
        Median over the paired structures of (this row - reference row); 0 for the reference itself.
    p_value : float
        Two-sided Wilcoxon signed-rank p-value over the paired structures; NaN for the reference row
        itself and when no structure is paired.
    """

    name: str
    label: str
    structures: int
    median_dice: float
    mean_dice: float
    paired: int
    median_difference: float
    p_value: float


def structure_means(structure_dice: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per structure, the mean Dice over cases (NaN cases skipped; all-NaN structures left out).

    Parameters
    ----------
    structure_dice : dict of str to dict of str to float
        Case id -> structure name -> Dice (:attr:`AblationRow.structure_dice`).

    Returns
    -------
    dict of str to float
        Structure name -> mean Dice, in the order the structures first appear.

    Examples
    --------
    >>> structure_means({"a": {"x": 0.5, "y": float("nan")}, "b": {"x": 1.0, "y": 0.25}})
    {'x': 0.75, 'y': 0.25}
    """
    values: dict[str, list[float]] = {}
    for scores in structure_dice.values():
        for structure, dice in scores.items():
            values.setdefault(structure, [])
            if dice is not None and math.isfinite(dice):
                values[structure].append(float(dice))
    return {s: float(np.mean(v)) for s, v in values.items() if v}


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (:func:`scipy.stats.wilcoxon`).

    Zero differences are dropped before ranking (Wilcoxon's convention, scipy's
    ``zero_method='wilcox'``); no nonzero difference at all gives 1.0. scipy computes the exact
    distribution for up to 50 pairs without ties, else the normal approximation.

    Parameters
    ----------
    x, y : sequence of float, same length
        Paired values (here: two rows' mean Dice of the same structures).

    Returns
    -------
    float
        The p-value; NaN when there are no pairs.

    Raises
    ------
    ValueError
        If the lengths differ.

    Examples
    --------
    Five structures, all better in ``x``: the smallest possible rank sum, p = 2 / 2**5.

    >>> wilcoxon_p([0.80, 0.75, 0.90, 0.60, 0.70], [0.78, 0.70, 0.84, 0.52, 0.69])
    0.0625
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.shape} and {y.shape}")
    if not x.size:
        return float("nan")
    differences = x - y
    differences = differences[differences != 0]
    if not differences.size:
        return 1.0
    return float(wilcoxon(differences, alternative="two-sided").pvalue)


def summarize_structures(rows: Sequence[AblationRow], reference: str) -> list[StructureSummary]:
    """Median and mean Dice over structures per row, and each row's test against the ``reference`` row.

    Parameters
    ----------
    rows : sequence of AblationRow
        Rows with per-case, per-structure Dice (:attr:`AblationRow.structure_dice`).
    reference : str
        Name (config stem) of the row the others are tested against.

    Returns
    -------
    list of StructureSummary
        One per row, in order.

    Raises
    ------
    InputError
        If no row is named ``reference``.
    """
    by_name = {r.name: r for r in rows}
    if reference not in by_name:
        raise InputError(f"--reference {reference!r} names no row; the rows are {', '.join(by_name)}")
    ref = structure_means(by_name[reference].structure_dice)
    out = []
    for row in rows:
        means = structure_means(row.structure_dice)
        values = np.array(list(means.values()), float)
        common = [s for s in means if s in ref]
        x = np.array([means[s] for s in common], float)
        y = np.array([ref[s] for s in common], float)
        nan = float("nan")
        p = nan if row.name == reference else wilcoxon_p(x, y)
        out.append(
            StructureSummary(
                row.name,
                row.label,
                len(values),
                float(np.median(values)) if len(values) else nan,
                float(values.mean()) if len(values) else nan,
                len(common),
                float(np.median(x - y)) if common else nan,
                p,
            )
        )
    return out


def _fmt(value: float, spec: str) -> str:
    return "n/a" if not math.isfinite(value) else format(value, spec)


def format_structure_table(summaries: Sequence[StructureSummary], reference: str, cases: int | None = None) -> str:
    """A Markdown table of :func:`summarize_structures`: median and mean Dice over structures, Wilcoxon p.

    The comparison of Wachinger et al. (2018, Fig. 4) as a table.

    Parameters
    ----------
    summaries : sequence of StructureSummary
        One table row each, in order.
    reference : str
        Name (config stem) of the reference row: its difference and p-value columns read "(reference)" and "–".
    cases : int, optional
        Number of validation cases, named in the note below the table.

    Returns
    -------
    str
        The Markdown table and a note on how it was computed, ending in a newline.

    Examples
    --------
    >>> s = [StructureSummary("a", "A", 3, 0.8, 0.75, 3, 0.0, float("nan")),
    ...      StructureSummary("b", "B", 3, 0.7, 0.7, 3, -0.05, 0.25)]
    >>> print(format_structure_table(s, "a", cases=5).splitlines()[3])
    | B | 3 | 0.700 | 0.700 | -0.050 | 0.25 |
    """
    label = next((s.label for s in summaries if s.name == reference), reference)
    lines = [
        "| model | structures | median Dice | mean Dice | median difference to reference | Wilcoxon p |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        if s.name == reference:
            difference, p = "(reference)", "–"
        else:
            difference, p = _fmt(s.median_difference, "+.3f"), _fmt(s.p_value, ".3g")
        lines.append(
            f"| {s.label} | {s.structures} | {_fmt(s.median_dice, '.3f')} | {_fmt(s.mean_dice, '.3f')} "
            f"| {difference} | {p} |"
        )
    over = f"the {cases} validation cases" if cases else "the validation cases"
    lines += [
        "",
        f"Per structure: its mean Dice over {over}; median and mean over structures. Wilcoxon: two-sided "
        f"signed-rank test against the reference row, {label} (`{reference}`), paired by structure.",
    ]
    return "\n".join(lines) + "\n"


def read_structure_dice(path: str | Path) -> dict[str, dict[str, float]]:
    """Per case and structure Dice from a ``validation.csv`` (:func:`brainseg.metrics.report.write_scores_csv`).

    Parameters
    ----------
    path : str or Path
        The CSV file.

    Returns
    -------
    dict of str to dict of str to float
        Case id -> structure name -> Dice (NaN where the structure is absent from both maps); the
        final ``mean`` row is skipped.

    Raises
    ------
    InputError
        If the file is missing or lacks the columns ``case_id``, ``name``, ``dice``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such validation scores file (written by 'brainseg ablation')")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"case_id", "name", "dice"} <= set(rows[0]):
        raise InputError(f"{path}: expected the columns case_id, name and dice")
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["case_id"] == "mean" and r.get("label") == "":
            continue
        out.setdefault(r["case_id"], {})[r["name"]] = float(r["dice"]) if r["dice"] else float("nan")
    return out
