"""``brainseg manifest FOLDER -o MANIFEST.csv``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``manifest`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "manifest",
        help="write a case manifest for a data folder",
        description="Write a CSV with columns case_id,image,label_map,mask listing the cases of: a folder laid "
        "out like MICCAI 2012 (ID_SS.nii.gz, ID_glm.nii.gz, ID_mask.nii.gz); images and label maps matched by "
        "glob patterns (--images, --labels, --masks; the case id is what the wildcards matched in the file "
        "name); or a BIDS dataset (--bids: sub-*/[ses-*/]anat/*_T1w.nii[.gz] with the *_dseg label maps of "
        "derivatives/).",
    )
    p.add_argument("folder", type=Path, nargs="?", help="data folder (MICCAI 2012 layout, or a BIDS root with --bids)")
    p.add_argument("--images", metavar="PATTERN", help="glob of the images, e.g. 'imgs/*_T1w.nii.gz' (quoted)")
    p.add_argument("--labels", metavar="PATTERN", help="glob of the label maps, e.g. 'labs/*_dseg.nii.gz'")
    p.add_argument("--masks", metavar="PATTERN", help="glob of the brain masks")
    p.add_argument("--bids", action="store_true", help="FOLDER is a BIDS dataset (T1w images, dseg label maps)")
    p.add_argument("--derivatives", metavar="NAME", help="with --bids: the derivatives folder holding the label maps")
    p.add_argument("-o", "--output", type=Path, required=True, help="manifest CSV to write")
    p.add_argument(
        "--pattern", default=r"(?P<case_id>.+)_SS\.nii(\.gz)?$", help="regex of image names with a case_id group"
    )
    p.add_argument("--label-suffix", default="_glm", help="label map name: CASE_ID + suffix + extension")
    p.add_argument("--mask-suffix", default="_mask", help="mask name: CASE_ID + suffix + extension")
    p.add_argument(
        "--relative",
        action="store_true",
        help="write paths relative to the CSV's folder (a manifest that moves with the data); absolute by default",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Scan and write.

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
        If ``--output`` is a folder, the arguments mix or lack the ways to name the data (FOLDER, ``--bids``,
        ``--images``; ``--labels`` or ``--masks`` without ``--images``), or the scan finds no usable cases
        (:func:`brainseg.io.discovery.scan_folder`, :func:`~brainseg.io.discovery.scan_bids`,
        :func:`~brainseg.io.discovery.pair_by_patterns`).
    """
    from brainseg.errors import InputError
    from brainseg.io.discovery import pair_by_patterns, scan_bids, scan_folder
    from brainseg.io.manifest import write_manifest

    if args.output.is_dir():
        raise InputError(f"{args.output}: is a folder; give the CSV file to write")
    if args.images:
        if args.folder or args.bids:
            raise InputError("give either FOLDER (with --bids for a BIDS dataset) or --images PATTERN, not both")
        cases = pair_by_patterns(args.images, args.labels, args.masks)
    elif args.labels or args.masks:
        raise InputError("--labels and --masks patterns need --images PATTERN")
    elif args.folder is None:
        raise InputError("give a data FOLDER, a BIDS root with --bids, or --images PATTERN [--labels PATTERN]")
    elif args.bids:
        cases = scan_bids(args.folder, args.derivatives)
    else:
        cases = scan_folder(args.folder, args.pattern, args.label_suffix, args.mask_suffix)
    write_manifest(args.output, cases, relative=args.relative)
    print(f"{args.output}: {len(cases)} cases")
    return 0
