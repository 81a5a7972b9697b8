"""``brainseg segment INPUT [INPUT ...] -o OUTDIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainseg.cli import add_model_option

#: ``brainseg.preprocessing.skull_strip.SKULL_STRIP_MODES``, named here so that building the parser imports no torch.
SKULL_STRIP_CHOICES = ("auto", "always", "never")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``segment`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "segment",
        help="segment T1 images (skull-stripped or whole-head)",
        description="Segment T1-weighted images. Writes NAME_seg.nii.gz (label numbers on the input grid), "
        "NAME_brain_mask.nii.gz, NAME_volumes.csv, NAME_qc.png and the completion record NAME_seg.json per input; "
        "a batch also writes segment_summary.csv. Exit status: 0 all done, 1 some cases of a batch failed, "
        "2 bad input or arguments (nothing written).",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="image(s) (.nii, .nii.gz, .mgz), quoted glob patterns, a manifest .csv or a .txt list of paths",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder")
    add_model_option(p)
    p.add_argument(
        "--skull-strip",
        choices=SKULL_STRIP_CHOICES,
        default="auto",
        help="brain extraction with deepbet: auto (default) detects whether each image is already "
        "skull-stripped; always; never (the image is taken as skull-stripped)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs are already complete")
    p.add_argument("--probabilities", action="store_true", help="also write NAME_probabilities.nii.gz")
    p.add_argument(
        "--crf",
        action="store_true",
        help="refine with the 3-D fully connected CRF (DeepNAT section 2.5), with the model folder's crf settings; "
        "--probabilities then writes the CRF's marginals",
    )
    p.add_argument(
        "--crf-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one CRF setting (repeatable): appearance_weight, smoothness_weight, position_sigma_mm, "
        "intensity_sigma, smoothness_sigma_mm, iterations, top_k",
    )
    p.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a multi-modal model's other image of the one INPUT, co-registered with it (repeatable, e.g. "
        "--modality t1c=sub_t1c.nii.gz); a manifest .csv gives them in image_NAME columns",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--timings", action="store_true", help="print each case's seconds per pipeline stage on stderr")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Segment, print the written label maps; 1 if a case of a batch failed.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the arguments :func:`add_parser` declares).

    Returns
    -------
    int
        The exit status: 0 when every case is done (or was already complete), 1 when a case of a batch
        failed (the others are still written; ``segment_summary.csv`` names the failure).

    Raises
    ------
    InputError
        If a ``--crf-param`` is not ``NAME=VALUE`` or comes without ``--crf``, a ``--modality`` is not
        ``NAME=PATH`` or is given twice, or as :func:`brainseg.inference.segment.segment` (bad arguments, an
        unusable model or output folder, or the case of a single input failing).
    """
    from brainseg.errors import InputError
    from brainseg.inference.segment import segment

    crf_settings = {}
    for item in args.crf_param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--crf-param expects NAME=VALUE, got {item!r}")
        crf_settings[name.strip()] = value.strip()
    if crf_settings and not args.crf:
        raise InputError("--crf-param needs --crf")
    modalities = {}
    for item in args.modality:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"--modality expects NAME=PATH, got {item!r}")
        if name.strip() in modalities:
            raise InputError(f"--modality {name.strip()} is given twice")
        modalities[name.strip()] = Path(value.strip())
    results = segment(
        args.images,
        args.output,
        model=args.model,
        probabilities=args.probabilities,
        skull_strip=args.skull_strip,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        num_threads=args.threads,
        crf=args.crf,
        crf_settings=crf_settings,
        modalities=modalities,
    )
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.status != "failed":
            print(r.outputs.label_map)
        if args.timings and r.timings:
            from brainseg.timing import format_timings

            print(f"timings {r.outputs.image}: {format_timings(r.timings)}", file=sys.stderr)
    if failed:
        print(
            f"brainseg segment: {len(failed)} of {len(results)} cases failed; see {args.output / 'segment_summary.csv'}",
            file=sys.stderr,
        )
        return 1
    return 0
