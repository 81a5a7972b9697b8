"""Box plots of an ablation study's Dice per structure, shaped like Wachinger et al.'s (2018) box plots.

:func:`plot_dice_by_variant` draws one box per row over its structures (each structure's mean Dice over
the validation cases; Fig. 4 compares DeepNAT's variants this way); :func:`plot_dice_by_structure` draws,
for every structure, one box per row over the validation cases (as the paper compares methods
structure by structure).
matplotlib is used through its object interface with the Agg canvas: no pyplot, no global backend, no
display needed.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainseg.io.atomic import atomic_path
from brainseg.training.ablation_stats import StructureSummary, structure_means

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from brainseg.training.ablation import AblationRow

__all__ = ["plot_dice_by_structure", "plot_dice_by_variant"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_dice_by_variant(
    rows: Sequence[AblationRow],
    path: str | Path,
    summaries: Sequence[StructureSummary] | None = None,
    reference: str | None = None,
) -> Path:
    """One box per row over its structures' mean Dice (Fig. 4), the Wilcoxon p-value above each box.

    Parameters
    ----------
    rows : sequence of AblationRow
        Rows with :attr:`~brainseg.training.ablation.AblationRow.structure_dice`.
    path : str or Path
        The PNG to write (atomically).
    summaries : sequence of StructureSummary, optional
        :func:`~brainseg.training.ablation_stats.summarize_structures` of the rows: their p-values
        are written above the boxes.
    reference : str, optional
        Name of the reference row of ``summaries`` ("reference" is written above its box).

    Returns
    -------
    Path
        ``path``.
    """
    figure = _figure(max(5.0, 1.3 * len(rows) + 1.5), 4.5)
    axes = figure.add_subplot()
    data = [np.array(list(structure_means(r.structure_dice).values()), float) for r in rows]
    positions = [i + 1 for i, values in enumerate(data) if len(values)]
    boxes = axes.boxplot(
        [values for values in data if len(values)],
        positions=positions,
        widths=0.6,
        patch_artist=True,
        medianprops={"color": "black"},
    )
    for patch, color in zip(boxes["boxes"], _colors(len(positions))):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    for i, values in enumerate(data):
        axes.plot(np.full(len(values), i + 1.0), values, ".", color="0.2", markersize=3)
    if summaries is not None:
        for i, s in enumerate(summaries):
            text = "reference" if s.name == reference else ("p n/a" if math.isnan(s.p_value) else f"p={s.p_value:.2g}")
            axes.text(i + 1, 1.02, text, ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(1, len(rows) + 1))
    axes.set_xticklabels([textwrap.fill(r.label, 18) for r in rows], fontsize=8)
    axes.set_xlim(0.4, len(rows) + 0.6)
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("Dice (mean over validation cases)")
    axes.set_title("Dice per structure, by variant", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_dice_by_structure(rows: Sequence[AblationRow], path: str | Path, *, per_panel: int = 25) -> Path:
    """For every structure, one box per row over the validation cases; ``per_panel`` structures a panel.

    Parameters
    ----------
    rows : sequence of AblationRow
        Rows with :attr:`~brainseg.training.ablation.AblationRow.structure_dice`.
    path : str or Path
        The PNG to write (atomically).
    per_panel : int
        Structures per panel (panels are stacked; 134 structures make 6 panels).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``per_panel`` < 1.
    """
    if per_panel < 1:
        raise ValueError(f"per_panel must be >= 1, got {per_panel}")
    structures: list[str] = []
    for r in rows:
        for scores in r.structure_dice.values():
            structures += [s for s in scores if s not in structures]
    panels = max(1, math.ceil(len(structures) / per_panel))
    slot = len(rows) + 1
    width = max(6.0, 0.13 * min(per_panel, max(len(structures), 1)) * slot + 2.5)
    figure = _figure(width, 4.0 * panels + 0.6)
    colors = _colors(len(rows))
    for p in range(panels):
        axes = figure.add_subplot(panels, 1, p + 1)
        names = structures[p * per_panel : (p + 1) * per_panel]
        for j, (row, color) in enumerate(zip(rows, colors)):
            data, positions = [], []
            for i, name in enumerate(names):
                values = [row.structure_dice[c].get(name, math.nan) for c in row.structure_dice]
                values = [v for v in values if v is not None and math.isfinite(v)]
                if values:
                    data.append(values)
                    positions.append(i * slot + j)
            if data:
                boxes = axes.boxplot(
                    data,
                    positions=positions,
                    widths=0.8,
                    patch_artist=True,
                    showfliers=False,
                    medianprops={"color": "black"},
                )
                for patch in boxes["boxes"]:
                    patch.set_facecolor(color)
                    patch.set_alpha(0.7)
        axes.set_xticks([i * slot + (len(rows) - 1) / 2 for i in range(len(names))])
        axes.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        axes.set_xlim(-1, max(len(names), 1) * slot - 1)
        axes.set_ylim(0, 1)
        axes.set_ylabel("Dice")
        axes.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    figure.legend(
        handles=[Patch(facecolor=c, alpha=0.7, label=r.label) for r, c in zip(rows, colors)],
        loc="outside upper center",
        ncols=min(len(rows), 4),
        fontsize=8,
    )
    return _save(figure, path)
