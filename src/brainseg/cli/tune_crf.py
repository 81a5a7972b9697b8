"""``brainseg tune-crf MODEL_DIR``: choose the dense CRF's settings on a model's validation cases."""

from __future__ import annotations

import argparse
from pathlib import Path


def _grid_entry(text: str) -> tuple[str, list[float]]:
    name, sep, values = text.partition("=")
    try:
        numbers = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        numbers = []
    if not sep or not name.strip() or not numbers:
        raise argparse.ArgumentTypeError(f"expected NAME=V,V,... (e.g. appearance_weight=1,3), got {text!r}")
    return name.strip(), numbers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``tune-crf`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "tune-crf",
        help="choose the dense CRF's settings on a model's validation cases",
        description="Segment the validation cases of a model folder once, run the dense CRF with each setting "
        "of a grid on the network's probabilities and score the labels (mean Dice, HD95, MSD) against the "
        "manual label maps. A setting qualifies when it does not lower the network's mean Dice and lowers its "
        "mean HD95; the qualifying setting with the lowest mean HD95 is written into the folder's config.yaml "
        "(crf: section), which `brainseg segment --crf` then uses. The table goes to crf_tuning.csv.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a trained model folder (written in place)")
    p.add_argument(
        "--grid",
        type=_grid_entry,
        action="append",
        metavar="NAME=V,V,...",
        help="candidates of one CRF setting (repeatable; the grid is their product over the folder's settings; "
        "default: appearance_weight=1,3 position_sigma_mm=1.5,3 intensity_sigma=0.2,0.4 smoothness_weight=1)",
    )
    p.add_argument("--cases", nargs="+", metavar="ID", help="cases to score (default: the config's validation cases)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Tune and print the table.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the arguments :func:`add_parser` declares).

    Returns
    -------
    int
        The exit status, 0 (also when no setting qualifies and ``config.yaml`` is left as it was).

    Raises
    ------
    InputError
        If the model folder is unusable, a ``--grid`` entry names an unknown CRF setting or a refused value,
        the config names no validation cases (and ``--cases`` is not given), or a case to score is not a
        labelled case of the manifest (:func:`brainseg.training.crf_tuning.tune_crf`).
    """
    from brainseg.training.crf_tuning import tune_crf

    grid = dict(args.grid) if args.grid else None
    chosen, scores = tune_crf(args.model, grid, args.cases, progress=not args.no_progress)
    print("  v1   v2  sa mm  sb   iters  top_k  mean Dice  HD95 mm  MSD mm  changed  CRF s")
    for s in scores:
        p = s.settings
        head = (
            "  no CRF" + " " * 31
            if p is None
            else (
                f"{p.appearance_weight:4g} {p.smoothness_weight:4g} {p.position_sigma_mm:6g} {p.intensity_sigma:4g}"
                f" {p.iterations:6d} {p.top_k:6d}"
            )
        )
        mark = "  <- chosen" if s is chosen else ""
        print(f"{head}  {s.dice:9.4f}  {s.hd95:7.3f}  {s.msd:6.3f}  {s.changed:7.4f}  {s.seconds:5.1f}{mark}")
    if chosen is None:
        print(f"{args.model}: no setting kept the mean Dice and lowered the mean HD95; config.yaml left as it was")
    else:
        print(f"{args.model / 'config.yaml'}: crf settings written; `brainseg segment --crf` uses them")
    return 0
