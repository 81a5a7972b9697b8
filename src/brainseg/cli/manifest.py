"""``brainseg manifest FOLDER -o MANIFEST.csv``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser(
        "manifest",
        help="write a case manifest for a data folder",
        description="List the cases of a folder laid out like MICCAI 2012 (ID_SS.nii.gz, ID_glm.nii.gz, "
        "ID_mask.nii.gz) in a CSV with columns case_id,image,label_map,mask.",
    )
    p.add_argument("folder", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="manifest CSV to write")
    p.add_argument(
        "--pattern", default=r"(?P<case_id>.+)_SS\.nii(\.gz)?$", help="regex of image names with a case_id group"
    )
    p.add_argument("--label-suffix", default="_glm", help="label map name: CASE_ID + suffix + extension")
    p.add_argument("--mask-suffix", default="_mask", help="mask name: CASE_ID + suffix + extension")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Scan and write."""
    from brainseg.errors import InputError
    from brainseg.io.manifest import scan_folder, write_manifest

    if args.output.is_dir():
        raise InputError(f"{args.output}: is a folder; give the CSV file to write")
    cases = scan_folder(args.folder, args.pattern, args.label_suffix, args.mask_suffix)
    write_manifest(args.output, cases)
    print(f"{args.output}: {len(cases)} cases")
    return 0
