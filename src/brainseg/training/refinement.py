"""The effect of each pass of the iterative two-stage inference on validation cases (de Brébisson and Montana 2015, §3.4).

For a model folder whose network is a :class:`~brainseg.models.brebisson2015.BrebissonTwoStage`, each
validation case is segmented as ``brainseg segment`` does (same preparation, same sampling-prior
correction), keeping the first stage's segmentation and every pass of the full network; each is
scored against the reference on the working grid (the scan resampled to 1 mm, RAS+): mean Dice over
the structures present in the reference or the prediction, the error rate
(:func:`~brainseg.metrics.overlap.error_rate`), the fraction of brain voxels the pass changed and the
number of regions missing from the segmentation its centroids were measured on.

Usage::

    python -m brainseg.training.refinement MODEL_DIR [--cases 1000 1008] [--max-iterations 5]

prints the table and writes it to ``MODEL_DIR/refinement.md``. With ``--true-centroids`` each case is
instead segmented by one pass of the full network given the centroids of its reference label map (how
the paper's Table 1 scored its centroid-only network), written to ``MODEL_DIR/true_centroids.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.manifest import read_manifest
from brainseg.metrics.overlap import dice_per_class, error_rate
from brainseg.model_folder import LoadedModel, load_model_folder

__all__ = ["PassScore", "format_passes", "score_passes"]


@dataclass(frozen=True)
class PassScore:
    """One segmentation of the iterative inference, scored.

    Attributes
    ----------
    case_id : str
    step : int
        0 for the first stage, ``k`` for the ``k``-th pass of the full network, -1 for the one
        pass given the reference's centroids.
    mean_dice : float
        Over the structures in the reference or the prediction (working grid).
    error_rate : float
        Fraction of the reference's structure voxels given another class.
    changed : float
        Fraction of brain voxels whose class this pass changed (NaN for the first stage).
    missing : int
        Regions absent from the segmentation this pass's centroids came from (-1 for the first stage).
    """

    case_id: str
    step: int
    mean_dice: float
    error_rate: float
    changed: float
    missing: int


def score_passes(
    model: LoadedModel,
    cases: Sequence[str] | None = None,
    max_iterations: int | None = None,
    progress: bool = False,
    true_centroids: bool = False,
) -> list[PassScore]:
    """Segment validation cases keeping every pass of the iterative inference and score each.

    Parameters
    ----------
    model : LoadedModel
        A model folder of the ``brebisson2015`` family with the centroid pathway.
    cases : sequence of str, optional
        Case ids of the config's manifest; default its validation cases.
    max_iterations : int, optional
        Override the config's ``max_iterations`` (the tolerance stays the config's).
    progress : bool
        Show progress bars.
    true_centroids : bool
        Instead of the loop, one pass of the full network given the centroids of the case's
        reference label map (step -1; ``missing`` counts the regions absent from the reference).

    Returns
    -------
    list of PassScore
        Case by case, the first stage then each pass (or the one true-centroid pass).

    Raises
    ------
    InputError
        If the model has no two-stage inference, or a case is unknown or has no label map.
    """
    from brainseg.families import family_of
    from brainseg.features.centroids import RegionCentroids
    from brainseg.inference.dense_brebisson import predict_brebisson
    from brainseg.models.brebisson2015 import BrebissonTwoStage
    from brainseg.training.data import load_prepared_case

    if not isinstance(model.network, BrebissonTwoStage):
        raise InputError(f"{model.path}: not a two-stage de Brébisson model (no centroid pathway): nothing to iterate")
    tc, cfg = model.config.training, model.config.model
    by_id = {c.case_id: c for c in read_manifest(tc.manifest)}
    ids = list(cases) if cases else list(tc.validation_cases)
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise InputError(f"{tc.manifest}: no case(s) {unknown}")
    bias = model.prior.logit_bias() if model.prior is not None else None
    scores = []
    for case_id in ids:
        prepared, classes = load_prepared_case(by_id[case_id], model.labels, model.normalization)
        assert classes is not None
        inputs = family_of(cfg).case_inputs(cfg, prepared.image, prepared.mask, np.eye(4), prepared.background, None)
        truth = RegionCentroids.of(classes, inputs.affine, inputs.num_regions) if true_centroids else None
        _, _, result = predict_brebisson(
            model.network,  # type: ignore[arg-type]
            inputs,
            prepared.mask,
            logit_bias=bias,
            max_iterations=max_iterations,
            progress=progress,
            keep_passes=True,
            centroids=truth,
        )
        assert result is not None
        steps = [-1] if truth is not None else range(len(result.passes))  # -1: the one true-centroid pass
        for step, predicted in zip(steps, result.passes):
            dices = dice_per_class(predicted, classes, model.labels.num_classes)[1:]
            present = (
                np.bincount(np.concatenate([predicted.ravel(), classes.ravel()]), minlength=len(dices) + 1)[1:] > 0
            )
            scores.append(
                PassScore(
                    case_id,
                    step,
                    float(np.mean(dices[present])),
                    error_rate(predicted, classes),
                    result.changed[step - 1] if step > 0 else float("nan"),
                    -1 if step == 0 else result.missing[max(step - 1, 0)],
                )
            )
    return scores


def format_passes(scores: Sequence[PassScore]) -> str:
    """A Markdown table: per step, the mean over cases of mean Dice, error rate and changed fraction.

    Parameters
    ----------
    scores : sequence of PassScore
        From :func:`score_passes`.

    Returns
    -------
    str
        One row per step in increasing order (true centroids, first stage, pass 1, ...), with the number of
        cases and the mean number of regions missing; ends in a newline.

    Examples
    --------
    >>> rows = [PassScore("a", 0, 0.5, 0.3, float("nan"), -1), PassScore("a", 1, 0.6, 0.2, 0.1, 2),
    ...         PassScore("b", 0, 0.7, 0.1, float("nan"), -1)]
    >>> print(format_passes(rows).splitlines()[3])
    | pass 1 | 1 | 0.6000 | 0.2000 | 0.1000 | 2.0 |
    """
    lines = [
        "| segmentation | cases | mean Dice | error rate | changed fraction | regions missing |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step in sorted({s.step for s in scores}):
        rows = [s for s in scores if s.step == step]
        name = "first stage" if step == 0 else "true centroids" if step < 0 else f"pass {step}"
        changed = "–" if step <= 0 else f"{np.mean([s.changed for s in rows]):.4f}"
        missing = "–" if step == 0 else f"{np.mean([s.missing for s in rows]):.1f}"
        lines.append(
            f"| {name} | {len(rows)} | {np.mean([s.mean_dice for s in rows]):.4f} "
            f"| {np.mean([s.error_rate for s in rows]):.4f} | {changed} | {missing} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Score the passes of a model folder's validation cases; print and write ``refinement.md``.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments without the program name (``MODEL_DIR [--cases ID ...] [--max-iterations N]
        [--true-centroids] [--no-progress]``); default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status, 0 (``true_centroids.md`` is written instead with ``--true-centroids``).

    Raises
    ------
    InputError
        If the model folder cannot be loaded, has no two-stage inference, or a case is unknown or unlabelled.
    SystemExit
        If the arguments are invalid (argparse).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--cases", nargs="+", help="case ids (default: the config's validation cases)")
    parser.add_argument("--max-iterations", type=int, help="override the config's max_iterations")
    parser.add_argument(
        "--true-centroids",
        action="store_true",
        help="one pass of the full network given each reference label map's centroids (the paper's Table 1 "
        "scoring of the centroid row), written to true_centroids.md",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    model = load_model_folder(args.model_dir)
    scores = score_passes(
        model, args.cases, args.max_iterations, progress=not args.no_progress, true_centroids=args.true_centroids
    )
    cases = len({s.case_id for s in scores})
    if args.true_centroids:
        text = (
            f"`{args.model_dir}` given each case's reference centroids (one pass of the full network, no first "
            f"stage; de Brébisson & Montana 2015, Table 1) on {cases} case(s), scored on the working grid (1 mm); "
            "regions missing: absent from the reference.\n\n" + format_passes(scores)
        )
    else:
        text = (
            f"Iterative two-stage inference (de Brébisson & Montana 2015, section 3.4) of `{args.model_dir}` on "
            f"{cases} case(s), scored on the working grid (1 mm); a pass's changed fraction "
            f"is over brain voxels; tolerance {model.config.model.tolerance:g}.\n\n" + format_passes(scores)
        )
    name = "true_centroids.md" if args.true_centroids else "refinement.md"
    atomic_write_text(args.model_dir / name, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
