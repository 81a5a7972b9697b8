"""``brainseg labels MANIFEST -o labels.tsv [--lut FILE] [--ignore N,...] [--merge SRC:DST ...]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _numbers(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected label numbers separated by commas, got {text!r}") from None


def _merge(text: str) -> tuple[list[int], int]:
    source, sep, destination = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return _numbers(source), int(destination)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected SRC[,SRC...]:DST label numbers, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``labels`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "labels",
        help="build a label table from the label maps of a manifest",
        description="Read the label maps of a manifest's cases, list every label number present (voxels, and how "
        "many cases hold it), name them from a FreeSurfer-style colour table when given ('label N' otherwise) and "
        "write the table a training config names with training.labels.",
    )
    p.add_argument("manifest", type=Path, help="manifest CSV (brainseg manifest)")
    p.add_argument("-o", "--output", type=Path, required=True, help="label table TSV to write")
    p.add_argument("--lut", type=Path, help="colour table: 'number name R G B A' lines (e.g. FreeSurferColorLUT.txt)")
    p.add_argument("--ignore", type=_numbers, default=[], metavar="N,N,...", help="label numbers to map to background")
    p.add_argument(
        "--merge",
        type=_merge,
        action="append",
        default=[],
        metavar="SRC[,SRC]:DST",
        help="map label numbers SRC to the class of DST (repeatable)",
    )
    p.add_argument("--cases", nargs="+", metavar="ID", help="only these cases (default: every case with a label map)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Count, build and write the table; print a summary.

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
        If ``--output`` is a folder, ``--cases`` names a case that is not a labelled case of the manifest, no
        case has a label map, ``--ignore`` and ``--merge`` conflict (:func:`brainseg.labels.build_label_table`),
        or the manifest, the colour table or a label map is unusable.
    """
    from tqdm import tqdm

    from brainseg.errors import InputError
    from brainseg.io import load_volume, read_manifest
    from brainseg.labels import LabelCounts, build_label_table, read_lut

    if args.output.is_dir():
        raise InputError(f"{args.output}: is a folder; give the TSV file to write")
    cases = [c for c in read_manifest(args.manifest) if c.label_map is not None]
    if args.cases:
        unknown = sorted(set(args.cases) - {c.case_id for c in cases})
        if unknown:
            raise InputError(f"{args.manifest}: no labelled case(s) {unknown}")
        cases = [c for c in cases if c.case_id in set(args.cases)]
    if not cases:
        raise InputError(f"{args.manifest}: no case has a label_map; give a manifest of labelled cases")
    lut = read_lut(args.lut) if args.lut else None
    maps = (load_volume(c.label_map, kind="label_map").data for c in cases)
    counts = LabelCounts.count(tqdm(maps, total=len(cases), desc="label maps", disable=args.no_progress))
    table = build_label_table(counts, lut, args.ignore, [tuple(m) for m in args.merge])
    voxels = [sum(counts.voxels.get(n, 0) for n in table.sources(c)) for c in range(table.num_classes)]
    holding = [max((counts.cases.get(n, 0) for n in table.sources(c)), default=0) for c in range(table.num_classes)]
    table.to_tsv(args.output, extra={"voxels": voxels, "cases": holding})
    rare = [table.labels[c] for c in range(1, table.num_classes) if holding[c] < len(cases)]
    print(
        f"{args.output}: {table.num_classes} classes (background + {table.num_classes - 1}) from {len(cases)} label maps"
        + (f"; {len(rare)} label(s) missing from some cases: {', '.join(map(str, rare[:10]))}" if rare else "")
    )
    return 0
