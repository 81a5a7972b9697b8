"""``brainseg calibrate MODEL_DIR``: choose the strength of the sampling prior's correction on validation cases."""

from __future__ import annotations

import argparse
from pathlib import Path


def _strengths(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected strengths >= 0, got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``calibrate`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "calibrate",
        help="choose the sampling prior's correction strength on a model's validation cases",
        description="Segment the validation cases of a model folder once, score each candidate strength of the "
        "logit adjustment strength * log(brain / sampling class frequency) on them (mean Dice, volumetric "
        "similarity, structures > 1.25x or < 0.8x their reference volume) and write the best (by mean Dice) into "
        "the folder's class_prior.json; the table goes to prior_calibration.csv, and the model card is rescored "
        "with the chosen strength.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a trained model folder (written in place)")
    p.add_argument(
        "--strengths", type=_strengths, default=[0.0, 0.25, 0.5, 0.75, 1.0], metavar="S,S,...", help="candidates"
    )
    p.add_argument("--cases", nargs="+", metavar="ID", help="cases to score (default: the config's validation cases)")
    p.add_argument(
        "--no-card",
        action="store_true",
        help="do not rescore the validation cases and rewrite model_card.md with the chosen strength",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate and print the table.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the arguments :func:`add_parser` declares).

    Returns
    -------
    int
        The exit status, 0 (errors are raised).

    Raises
    ------
    InputError
        If the model folder is unusable, its config names no validation cases (and ``--cases`` is not given),
        a case to score is not a labelled case of its manifest, or, for a folder without ``class_prior.json``,
        a training case cannot be read (:func:`brainseg.training.calibration.calibrate_prior`).
    """
    from brainseg.model_folder import write_checksums
    from brainseg.training.calibration import calibrate_prior
    from brainseg.training.model_card import write_model_card

    chosen, scores = calibrate_prior(args.model, args.strengths, args.cases, progress=not args.no_progress)
    print("strength  mean Dice  mean VS  >1.25x  <0.8x")
    for s in scores:
        mark = "  <- chosen" if s.strength == chosen else ""
        print(
            f"{s.strength:8.2f}  {s.dice:9.4f}  {s.volumetric_similarity:7.4f}  {s.too_large:6.1f}  {s.too_small:5.1f}{mark}"
        )
    if not args.no_card:
        write_model_card(args.model, progress=not args.no_progress)
        write_checksums(args.model)
        print(f"{args.model / 'model_card.md'}: rescored with strength {chosen:g}")
    return 0
