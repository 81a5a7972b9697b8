"""Command-line interface: ``brainseg`` and one module per subcommand."""

from __future__ import annotations

import argparse

#: Help of ``--model``; names the keys of ``brainseg.model_folder.SHIPPED_MODELS`` without importing
#: torch when the parser is built (tested to stay in step).
MODEL_HELP = (
    "model folder, or a shipped model: 'default' (the full model), 'basenet' (faster), "
    "'deepnat' (DeepNAT, 25 structures), 'brebisson2015' (de Brebisson & Montana, 134 structures), "
    "'mixnet' (MixNet, 134 structures; undertrained so far, see its model card) or "
    "'mixnet-tissue' (MixNet, 3 tissues: ventricular CSF, grey and white matter)"
)


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--model DIR|NAME`` (a model folder or a shipped model's name; default: the shipped default).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A subcommand's parser; its ``args.model`` is then the string given, or None
        (:func:`brainseg.model_folder.resolve_model_dir` reads both).
    """
    parser.add_argument("--model", default=None, metavar="DIR|NAME", help=MODEL_HELP)
