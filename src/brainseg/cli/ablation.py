"""``brainseg ablation CONFIG... -o RUNS_DIR``: train, evaluate and tabulate a list of configs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``ablation`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "ablation",
        help="train and evaluate several configs and print a table like the paper's",
        description="Train each config into RUNS_DIR/<config name> (resuming interrupted runs and reusing "
        "finished ones), score it on its validation cases, and print a Markdown table of Dice, Hausdorff "
        "distance and mean surface distance (mean +- std over validation subjects) with parameter counts "
        "beside the paper's (Ganaye et al. 2018, Tables 1-2), then a second table comparing the rows structure by "
        "structure (median and mean Dice over structures, two-sided Wilcoxon signed-rank test against the "
        "reference row; Wachinger et al. 2018, Fig. 4). Also writes RUNS_DIR/ablation.md and .json and the box "
        "plots RUNS_DIR/dice_by_variant.png and dice_by_structure.png.",
    )
    p.add_argument("configs", nargs="+", type=Path, help="YAML configs, one table row each")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the runs and the table")
    p.add_argument("--epochs", type=int, help="override every config's training.epochs")
    p.add_argument("--samples-per-epoch", type=int, help="override every config's training.samples_per_epoch")
    p.add_argument("--threads", type=int, help="override every config's training.num_threads")
    p.add_argument(
        "--validation-cases",
        nargs="+",
        metavar="CASE",
        help="override every config's training.validation_cases (the subjects each row is scored on)",
    )
    p.add_argument(
        "--reference",
        metavar="NAME",
        help="the row the others are tested against, by config name (file stem); default: the first config",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the study and print the table.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the arguments :func:`add_parser` declares).

    Returns
    -------
    int
        The exit status: 0 once the table is printed; 2 if it has no row (no config given).

    Raises
    ------
    InputError
        If a config file does not exist, or as :func:`brainseg.training.ablation.run_ablation` (a run folder
        trained with other settings, an unusable config, a ``--reference`` that names no config).
    TrainingDiverged
        If a row's training stops on a loss or weights that are not finite
        (:func:`brainseg.training.trainer.train`).
    """
    from brainseg.errors import InputError
    from brainseg.training.ablation import run_ablation

    missing = [str(c) for c in args.configs if not c.is_file()]
    if missing:
        raise InputError(f"no such config file(s): {', '.join(missing)}")
    rows = run_ablation(
        args.configs,
        args.output,
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        num_threads=args.threads,
        validation_cases=args.validation_cases,
        reference=args.reference,
        progress=not args.no_progress,
    )
    print((args.output / "ablation.md").read_text(), end="")
    return 0 if rows else 2
