"""``brainseg train CONFIG.yaml -o MODEL_DIR [--resume]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``train`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train a model on the cases of a manifest and write a model folder "
        "(config.yaml, labels.tsv, normalization.json, weights.safetensors, model_card.md). Exit status: 0 done, "
        "1 the loss or weights stopped being finite (the last finite epoch's checkpoint is kept), 2 bad input.",
    )
    p.add_argument("config", type=Path, help="YAML config with model: and training: sections")
    p.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--threads", type=int, help="override training.num_threads")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device the network trains on: cpu (default), cuda, cuda:1, ... (validation and the model "
        "card run on the CPU)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that draw the batches ahead of the training step (Linux; the same batches for any N >= 1, "
        "each step seeded on its own; 0, the default, draws them in the training loop)",
    )
    p.add_argument("--no-card", action="store_true", help="skip the final evaluation and model card")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train, then evaluate on the validation cases and write the model card.

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
        If the config or the data are unusable, or the output folder already holds a run and ``--resume`` is
        not given (:func:`brainseg.config.load_config`, :func:`brainseg.training.trainer.train`).
    TrainingDiverged
        If a step's loss or an epoch's weights are not finite; the last finite epoch's checkpoint is kept.
    """
    from brainseg.config import load_config
    from brainseg.training.model_card import write_model_card
    from brainseg.training.trainer import train

    overrides: dict = {"training": {}}
    if args.epochs is not None:
        overrides["training"]["epochs"] = args.epochs
    if args.threads is not None:
        overrides["training"]["num_threads"] = args.threads
    config = load_config(args.config, overrides)
    folder = train(
        config, args.output, resume=args.resume, progress=not args.no_progress, device=args.device, workers=args.workers
    )
    if not args.no_card:
        write_model_card(folder, progress=not args.no_progress)
    print(folder)
    return 0
