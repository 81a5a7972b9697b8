"""``brainseg segment IMAGE [IMAGE ...] -o OUTDIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainseg.cli import add_model_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser(
        "segment",
        help="segment skull-stripped T1 images",
        description="Segment skull-stripped T1 images. Writes NAME_seg.nii.gz (label numbers on the input grid), "
        "NAME_volumes.csv and NAME_qc.png per input.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help=".nii, .nii.gz or .mgz image(s)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder")
    add_model_option(p)
    p.add_argument("--probabilities", action="store_true", help="also write NAME_probabilities.nii.gz")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Segment and print the written label maps."""
    from brainseg.inference.segment import segment

    outputs = segment(
        args.images,
        args.output,
        model=args.model,
        probabilities=args.probabilities,
        progress=not args.no_progress,
        num_threads=args.threads,
    )
    for out in outputs:
        print(out.label_map)
    return 0
