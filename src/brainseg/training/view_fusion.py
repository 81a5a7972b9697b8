"""MixNet's views alone and fused, scored on validation cases; the fusion weights chosen by validation.

L. Chen, D. Merhof, "MixNet: Multi-modality Mix Network for Brain Segmentation", BrainLes 2018, LNCS
11383, Springer 2019, section 2.3: one network per plane, the three probability maps fused by weights
(1:1:4 for their anisotropic scans; the issue asks for weights chosen by validation on isotropic data).

For a model folder of the ``mixnet`` family with several views, every validation case is prepared as
``brainseg segment`` prepares it, each view's softmax probabilities are computed once
(:func:`brainseg.inference.dense_mixnet.view_probabilities`, the sampling prior's correction applied),
and every candidate weighting is scored from them: the fused arg-max inside the brain mask, brought
back to the case's own grid, against its label file (Dice, HD95, volumetric similarity per structure;
:func:`brainseg.metrics.report.evaluate_label_maps`), exactly as ``brainseg evaluate`` scores a written
label map. A view alone is the weighting with 1 for it and 0 for the others.

The chosen weighting is the fused one (at least two views) with the highest mean Dice over the
structures and cases; ``--write`` stores it as ``model.view_weights`` in the folder's ``config.yaml``.
Choosing on the validation cases and reporting them is optimistic by the size of the differences
between weightings; the table says so.

Usage::

    python -m brainseg.training.view_fusion MODEL_DIR [--weights 1,1,1 --weights 1,1,4 ...] [--cases ...] [--write]

prints a Markdown table and writes ``view_fusion.md`` and ``view_fusion.csv`` into the folder
(``view_fusion.md`` is copied into the model card).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.manifest import read_manifest
from brainseg.io.nifti import load_volume
from brainseg.metrics.report import StructureScore, evaluate_label_maps
from brainseg.model_folder import LoadedModel, load_model_folder, write_checksums

__all__ = ["FusionScore", "candidate_weights", "choose_fusion", "format_fusions", "score_fusions", "write_view_fusion"]

#: Files written into the model folder.
TABLE_FILE, CSV_FILE = "view_fusion.md", "view_fusion.csv"


@dataclass(frozen=True)
class FusionScore:
    """One weighting of the views, scored on every case.

    Attributes
    ----------
    weights : tuple of float
        Per plane, in the network's ``planes`` order (not normalised).
    scores : list of StructureScore
        One per structure and case (on each case's own grid; distances in mm).
    """

    weights: tuple[float, ...]
    scores: list[StructureScore]

    @property
    def views(self) -> int:
        """How many views the weighting reads (weight > 0)."""
        return sum(w > 0 for w in self.weights)

    def mean(self, what: str) -> float:
        """Mean of a :class:`StructureScore` field over structures and cases (finite values).

        Parameters
        ----------
        what : str
            A numeric field: ``'dice'``, ``'hausdorff'``, ``'hd95'``, ``'msd'`` (mm), ``'volumetric_similarity'``.

        Returns
        -------
        float
            NaN when no value is finite (NaN and inf are left out).
        """
        values = [getattr(s, what) for s in self.scores]
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    def by_structure(self, what: str) -> dict[str, float]:
        """Mean of a field per structure name, over cases (finite values).

        Parameters
        ----------
        what : str
            A numeric :class:`StructureScore` field, as in :meth:`mean`.

        Returns
        -------
        dict of str to float
            Structure name -> mean over cases, in the order the structures first appear; NaN where no value is
            finite.
        """
        out: dict[str, list[float]] = {}
        for s in self.scores:
            out.setdefault(s.name, []).append(getattr(s, what))
        return {k: float(np.mean([v for v in vs if math.isfinite(v)] or [float("nan")])) for k, vs in out.items()}


def candidate_weights(planes: Sequence[str]) -> list[tuple[float, ...]]:
    """The default weightings: each view alone, equal weights, each view doubled, and the paper's 1:1:4.

    Parameters
    ----------
    planes : sequence of str
        The network's planes, in order; 1:1:4 (Chen and Merhof 2018, section 2.3) is added only for
        ``('sagittal', 'coronal', 'axial')``.

    Returns
    -------
    list of tuple of float
        One weight per plane each, duplicates removed; with one plane only ``[(1.0,)]``.

    Examples
    --------
    >>> candidate_weights(("sagittal", "coronal", "axial"))[:4]
    [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)]
    """
    n = len(planes)
    out = [tuple(1.0 if j == k else 0.0 for j in range(n)) for k in range(n)]
    if n > 1:
        out.append((1.0,) * n)
        out += [tuple(2.0 if j == k else 1.0 for j in range(n)) for k in range(n)]
    if tuple(planes) == ("sagittal", "coronal", "axial"):
        out.append((1.0, 1.0, 4.0))
    return list(dict.fromkeys(out))


def score_fusions(
    model: LoadedModel,
    weights: Sequence[Sequence[float]] | None = None,
    cases: Sequence[str] | None = None,
    progress: bool = False,
) -> list[FusionScore]:
    """Score each weighting of the views on validation cases (each view run once per case).

    Parameters
    ----------
    model : LoadedModel
        A ``mixnet`` model folder.
    weights : sequence of sequence of float, optional
        Weightings in ``planes`` order (>= 0, not all 0); default :func:`candidate_weights`.
    cases : sequence of str, optional
        Case ids of the config's manifest; default its validation cases.
    progress : bool
        Show progress bars.

    Returns
    -------
    list of FusionScore
        In the order of ``weights``.

    Raises
    ------
    InputError
        If the model is not a MixNet, a weighting is malformed, or a case is unknown or unlabelled.
    """
    from brainseg.families import family_of
    from brainseg.families.chen2018 import MixNetViews
    from brainseg.inference.dense_mixnet import view_probabilities
    from brainseg.training.data import prepare_case

    network = model.network
    if not isinstance(network, MixNetViews):
        raise InputError(f"{model.path}: not a MixNet model folder (model.name: mixnet): it has no views to fuse")
    planes = network.planes
    weights = [tuple(float(w) for w in ws) for ws in (weights or candidate_weights(planes))]
    for ws in weights:
        if len(ws) != len(planes) or min(ws) < 0 or not sum(ws) > 0:
            raise InputError(f"weights {list(ws)}: need one number >= 0 per plane ({', '.join(planes)}), not all 0")
    tc, cfg = model.config.training, model.config.model
    by_id = {c.case_id: c for c in read_manifest(tc.manifest)}
    ids = list(cases) if cases else list(tc.validation_cases)
    unknown = [i for i in ids if i not in by_id or by_id[i].label_map is None]
    if unknown:
        raise InputError(f"{tc.manifest}: no labelled case(s) {unknown}")
    bias = model.prior.logit_bias() if model.prior is not None else None
    scores: list[list[StructureScore]] = [[] for _ in weights]
    for case_id in ids:
        case = by_id[case_id]
        prepared, _ = prepare_case(case, model.normalization, model.modalities)
        reference = load_volume(case.label_map, kind="label_map")  # type: ignore[arg-type]
        inputs = family_of(cfg).case_inputs(
            cfg, prepared.network_image, prepared.mask, np.eye(4), prepared.network_background, None
        )
        used = [k for k in range(len(planes)) if any(ws[k] > 0 for ws in weights)]
        views = {
            k: view_probabilities(network, inputs, prepared.mask, planes[k], logit_bias=bias, progress=progress)
            for k in used
        }
        for ws, out in zip(weights, scores):
            fused = sum((w / sum(ws)) * views[k] for k, w in enumerate(ws) if w > 0)
            classes = np.zeros(prepared.mask.shape, np.uint8)
            classes[prepared.mask] = np.asarray(fused).argmax(axis=0)
            label_map = model.labels.to_labels(prepared.to_source_grid(classes))
            out += evaluate_label_maps(label_map, reference.data, model.labels, reference.spacing, case_id=case_id)
    return [FusionScore(ws, s) for ws, s in zip(weights, scores)]


def choose_fusion(scores: Sequence[FusionScore]) -> FusionScore | None:
    """The fused weighting (two views or more) with the highest mean Dice; None when there is none.

    Parameters
    ----------
    scores : sequence of FusionScore
        From :func:`score_fusions`.

    Returns
    -------
    FusionScore or None
        The first of the best when several tie.
    """
    fused = [s for s in scores if s.views > 1]
    return max(fused, key=lambda s: np.nan_to_num(s.mean("dice"), nan=-np.inf)) if fused else None  # NaN never wins


def _name(score: FusionScore, planes: Sequence[str]) -> str:
    if score.views == 1:
        return f"{planes[int(np.argmax(score.weights))]} alone"
    return "fused " + ":".join(f"{w:g}" for w in score.weights)


def format_fusions(scores: Sequence[FusionScore], planes: Sequence[str], chosen: FusionScore | None = None) -> str:
    """A Markdown table: per weighting, mean Dice / HD95 / VS, and per structure when there are at most 8.

    Parameters
    ----------
    scores : sequence of FusionScore
        One row each, in order; the structure columns are those of the first.
    planes : sequence of str
        The network's planes, naming a single view's row (``"coronal alone"``).
    chosen : FusionScore, optional
        The row marked "(chosen)" (compared by identity).

    Returns
    -------
    str
        The table, ending in a newline; HD95 in mm.

    Examples
    --------
    >>> s = StructureScore("a", 1, "CSF", 0.5, 9.0, 3.0, 1.0, 0.9, 10, 12)
    >>> print(format_fusions([FusionScore((1.0, 0.0), [s])], ("coronal", "axial")).splitlines()[2])
    | coronal alone | 0.500 | 3.00 | 0.900 | 0.500 / 3.00 / 0.900 |
    """
    names = list(dict.fromkeys(s.name for s in scores[0].scores)) if scores else []
    per_structure = len(names) <= 8
    header = "| views | mean Dice | mean HD95 (mm) | mean VS |"
    rule = "|---|---:|---:|---:|"
    if per_structure:
        header += "".join(f" {n}: Dice / HD95 / VS |" for n in names)
        rule += "---:|" * len(names)
    lines = [header, rule]
    for s in scores:
        mark = " (chosen)" if s is chosen else ""
        row = f"| {_name(s, planes)}{mark} | {s.mean('dice'):.3f} | {s.mean('hd95'):.2f} | {s.mean('volumetric_similarity'):.3f} |"
        if per_structure:
            dice, hd95, vs = (s.by_structure(k) for k in ("dice", "hd95", "volumetric_similarity"))
            row += "".join(f" {dice[n]:.3f} / {hd95[n]:.2f} / {vs[n]:.3f} |" for n in names)
        lines.append(row)
    return "\n".join(lines) + "\n"


def _write_view_weights(config_path: Path, weights: Sequence[float]) -> None:
    # the folder's YAML as written, with only model.view_weights replaced
    raw = yaml.safe_load(config_path.read_text())
    raw["model"]["view_weights"] = [float(w) for w in weights]
    atomic_write_text(config_path, yaml.safe_dump(raw, sort_keys=False))


def _parse_weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--weights expects numbers separated by commas (1,1,4), got {text!r}") from None


def write_view_fusion(
    model_dir: str | Path,
    weights: Sequence[Sequence[float]] | None = None,
    cases: Sequence[str] | None = None,
    *,
    write: bool = False,
    progress: bool = False,
) -> tuple[list[FusionScore], FusionScore | None, str]:
    """Score the weightings (:func:`score_fusions`) and write ``view_fusion.md`` and ``view_fusion.csv``.

    Parameters
    ----------
    model_dir : str or Path
        A ``mixnet`` model folder (written in place).
    weights, cases
        As in :func:`score_fusions`.
    write : bool
        Store the chosen weighting as ``model.view_weights`` in ``config.yaml``.
    progress : bool
        Show progress bars.

    Returns
    -------
    scores : list of FusionScore
    chosen : FusionScore or None
        :func:`choose_fusion`.
    text : str
        The Markdown written to ``view_fusion.md``.

    Raises
    ------
    InputError
        As :func:`score_fusions`.
    """
    folder = Path(model_dir)
    model = load_model_folder(folder)
    scores = score_fusions(model, weights, cases, progress=progress)
    planes = model.network.planes  # type: ignore[union-attr]
    chosen = choose_fusion(scores)
    names = sorted({s.case_id for s in scores[0].scores})
    text = (
        f"Views alone and fused (Chen & Merhof 2018, section 2.3) of `{folder}` on {len(names)} case(s) "
        f"({', '.join(names)}), each scored on its own grid; weights in the order {', '.join(planes)}. "
        "The chosen weighting (highest mean Dice among the fused ones) was picked on these same cases, "
        "so its figure is optimistic by about the spread between weightings.\n\n"
        + format_fusions(scores, planes, chosen)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["weights", "case_id", "label", "name", "dice", "hd95", "volumetric_similarity", "chosen"])
    for s in scores:
        for r in s.scores:
            figures = [f"{r.dice:.4f}", f"{r.hd95:.3f}", f"{r.volumetric_similarity:.4f}"]
            writer.writerow([":".join(f"{w:g}" for w in s.weights), r.case_id, r.label, r.name, *figures, s is chosen])
    atomic_write_text(folder / TABLE_FILE, text)
    atomic_write_text(folder / CSV_FILE, buffer.getvalue())
    if write and chosen is not None:
        _write_view_weights(folder / "config.yaml", chosen.weights)
    write_checksums(folder)
    return scores, chosen, text


def main(argv: Sequence[str] | None = None) -> int:
    """Score the weightings on the validation cases; print and write ``view_fusion.md`` and ``.csv``.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments without the program name (``MODEL_DIR [--weights 1,1,4 ...] [--cases ID ...]
        [--write] [--no-progress]``); default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0, or 2 after printing the message of an :class:`~brainseg.errors.InputError`
        (malformed weights, not a MixNet folder, unknown or unlabelled case) to stderr.

    Raises
    ------
    SystemExit
        If the arguments are invalid (argparse).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--weights", action="append", type=str, help="a weighting, e.g. 1,1,4 (repeatable)")
    parser.add_argument("--cases", nargs="+", help="case ids (default: the config's validation cases)")
    parser.add_argument("--write", action="store_true", help="store the chosen weights in config.yaml")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        weights = [_parse_weights(w) for w in args.weights] if args.weights else None
        _, _, text = write_view_fusion(
            args.model_dir, weights, args.cases, write=args.write, progress=not args.no_progress
        )
    except InputError as err:
        print(f"view_fusion: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
