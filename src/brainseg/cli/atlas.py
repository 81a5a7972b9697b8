"""``brainseg atlas build MANIFEST -o REFERENCE_DIR``: template, probabilistic atlas and transforms."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``atlas`` parser
        added to it has one action, ``build``, whose parser sets ``run`` as the function
        :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "atlas",
        help="build the reference template and probabilistic atlas",
        description="Reference space for the spatial priors (Ganaye et al. 2018): register the atlas "
        "cases affinely to their iterated mean template, build the probabilistic atlas "
        "from their label maps, and register every case of the manifest to the template (transforms "
        "stored for training and evaluation).",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build a reference folder from a manifest")
    b.add_argument("manifest", type=Path, help="manifest CSV (brainseg manifest)")
    b.add_argument("-o", "--output", type=Path, required=True, help="reference folder to write")
    which = b.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--cases", nargs="+", metavar="ID", help="case ids that build the template and atlas (the training cases)"
    )
    which.add_argument(
        "--all-labelled",
        action="store_true",
        help="build from every labelled case of the manifest (validation cases too: only when none are held out)",
    )
    b.add_argument("--iterations", type=int, default=2, help="template averaging passes (default 2)")
    b.add_argument(
        "--labels",
        default="auto",
        metavar="TSV|auto|miccai2012",
        help="label table of the atlas: a TSV (brainseg labels), a shipped table, or auto (default): every label "
        "number in the atlas cases' label maps; use the table the model will train with",
    )
    b.add_argument("--sigma-mm", type=float, default=1.0, help="atlas smoothing, mm (default 1)")
    b.add_argument("--floor", type=float, default=1e-4, help="atlas probability floor (default 1e-4)")
    b.add_argument("--margin-mm", type=int, default=15, help="template margin around the brains, mm (default 15)")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build and write the reference folder.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the arguments :func:`add_parser` declares, with its ``build`` action).

    Returns
    -------
    int
        The exit status, 0 (errors are raised).

    Raises
    ------
    InputError
        If ``--iterations`` is below 1, the output folder already holds a reference, ``--cases`` names a case
        the manifest lacks, or the manifest, a label table or a case's files are unusable.
    """
    from brainseg.errors import InputError
    from brainseg.io.manifest import read_manifest
    from brainseg.io.nifti import load_volume
    from brainseg.labels import LabelCounts, build_label_table, resolve_label_table
    from brainseg.preprocessing.intensity import IntensityNormalization
    from brainseg.preprocessing.reference import TEMPLATE, build_reference
    from brainseg.training.data import load_prepared_case

    if args.iterations < 1:
        raise InputError(f"--iterations must be at least 1, got {args.iterations}")
    if (args.output / TEMPLATE).exists():
        raise InputError(f"{args.output}: already holds a reference; choose another folder")
    cases = read_manifest(args.manifest)
    atlas_ids = set(args.cases) if args.cases else {c.case_id for c in cases if c.label_map is not None}
    unknown = atlas_ids - {c.case_id for c in cases}
    if unknown:
        raise InputError(f"{args.manifest}: no case(s) {sorted(unknown)}")
    if args.labels == "auto":
        atlas_cases = [c for c in cases if c.case_id in atlas_ids and c.label_map is not None]
        labels = build_label_table(
            LabelCounts.count(load_volume(c.label_map, kind="label_map").data for c in atlas_cases)
        )
    else:
        labels = resolve_label_table(args.labels)
    normalization = IntensityNormalization()
    loaded = []
    for case in cases:
        prepared, classes = load_prepared_case(case, labels, normalization, with_labels=case.case_id in atlas_ids)
        loaded.append((case.case_id, prepared, classes))
    reference = build_reference(
        loaded,
        labels.num_classes,
        sigma_mm=args.sigma_mm,
        floor=args.floor,
        margin_mm=args.margin_mm,
        iterations=args.iterations,
        progress=not args.no_progress,
    )
    reference.save(args.output)
    print(f"{args.output}: template {reference.shape}, atlas of {labels.num_classes} classes, {len(loaded)} transforms")
    return 0
