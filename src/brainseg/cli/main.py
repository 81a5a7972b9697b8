"""The ``brainseg`` command: one subcommand per task.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args) -> int``.
Bad input is reported in one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from brainseg import __version__
from brainseg.cli import ablation, atlas, calibrate, evaluate, info, labels, manifest, segment, train, tune_crf
from brainseg.errors import InputError, TrainingDiverged

__all__ = ["main"]

COMMANDS = (segment, evaluate, train, labels, calibrate, tune_crf, atlas, ablation, manifest, info)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg", description="Segment T1-weighted brain MRI into anatomical structures."
    )
    parser.add_argument("--version", action="version", version=f"brainseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 training diverged, 2 bad input).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    int
        The subcommand's own status (0 done; ``segment``: 1 when a case of a batch failed), or 1 when it
        raised :class:`~brainseg.errors.TrainingDiverged`, 2 when it raised
        :class:`~brainseg.errors.InputError` (the message on stderr, in one line), 130 on Ctrl-C.

    Raises
    ------
    SystemExit
        From :mod:`argparse`: status 2 for arguments it cannot parse (the usage on stderr), 0 after
        ``--help`` or ``--version``.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # nibabel reports the header fields it repairs on its own stderr handler; brainseg's validation gate
    # judges those headers itself, so its notes go through brainseg's log, shown with -v.
    nibabel_log = logging.getLogger("nibabel.global")
    nibabel_log.handlers.clear()
    nibabel_log.propagate = True
    nibabel_log.setLevel(logging.INFO if args.verbose else logging.ERROR + 1)
    try:
        return int(args.run(args) or 0)
    except InputError as err:
        print(f"brainseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"brainseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("brainseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
