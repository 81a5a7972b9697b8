"""``brainseg info [--model DIR]``: describe a model folder."""

from __future__ import annotations

import argparse

from brainseg.cli import add_model_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``info`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser("info", help="describe a model folder", description="Print a model folder's settings.")
    add_model_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print architecture, parameter count and classes.

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
        If the model folder is unusable (:func:`brainseg.model_folder.load_model_folder`).
    """
    from brainseg.families import family_of
    from brainseg.model_folder import load_model_folder
    from brainseg.models import count_parameters
    from brainseg.training.model_card import describe_model

    model = load_model_folder(args.model)
    cfg = model.config.model
    print(f"model folder: {model.path}")
    print(f"network: {cfg.name}: {describe_model(model.config)}")
    if model.reference is not None:
        print(f"reference template: {model.reference.shape} voxels of 1 mm ({model.path / 'reference'})")
    print(f"parameters: {count_parameters(model.network):,} ({family_of(cfg).paper_parameters})")
    table = model.labels
    examples = ", ".join(f"{table.labels[c]} {table.names[c]}" for c in range(1, min(table.num_classes, 4)))
    print(
        f"classes: {table.num_classes} (background + {table.num_classes - 1} structures; label numbers "
        f"{min(table.labels[1:], default=0)}-{max(table.labels)}: {examples}, ...; {model.path / 'labels.tsv'})"
    )
    print(f"normalisation: {model.normalization.method}")
    return 0
