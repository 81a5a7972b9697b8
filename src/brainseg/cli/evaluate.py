"""``brainseg evaluate PREDICTION REFERENCE`` or ``brainseg evaluate --manifest M --predictions DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainseg.cli import add_model_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommands of the ``brainseg`` parser (``ArgumentParser.add_subparsers()``); the ``evaluate`` parser
        added to it sets ``run`` as the function :func:`brainseg.cli.main.main` calls.
    """
    p = subparsers.add_parser(
        "evaluate",
        help="score label maps against references",
        description="Per-structure Dice, Hausdorff distance, HD95, mean surface distance (mm) and volumetric "
        "similarity. Either one PREDICTION and REFERENCE, or --manifest with --predictions DIR holding "
        "CASE_ID_seg.nii.gz or IMAGE-NAME_seg.nii.gz files.",
    )
    p.add_argument("prediction", type=Path, nargs="?", help="predicted label map")
    p.add_argument("reference", type=Path, nargs="?", help="reference label map on the same grid")
    p.add_argument("--manifest", type=Path, help="manifest CSV: evaluate every case with a label_map")
    p.add_argument("--predictions", type=Path, help="folder of predicted label maps (with --manifest)")
    p.add_argument(
        "--labels",
        metavar="TSV|auto|miccai2012",
        help="label table scored: a TSV (brainseg labels, or a model folder's labels.tsv), a shipped table, or auto: "
        "every label number in the reference label maps (default: the table of --model)",
    )
    add_model_option(p)
    p.add_argument("-o", "--output", type=Path, help="CSV to write (one row per structure and case, then a mean row)")
    p.add_argument("--json", type=Path, help="JSON to write")
    p.add_argument("--no-distances", action="store_true", help="Dice and volume similarity only")
    p.set_defaults(run=run)


def _pairs(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    from brainseg.errors import InputError
    from brainseg.io.manifest import read_manifest
    from brainseg.io.nifti import output_stem

    if args.manifest:
        if args.prediction or args.reference or not args.predictions:
            raise InputError("with --manifest give --predictions DIR and no positional label maps")
        pairs = []
        for case in read_manifest(args.manifest):
            if case.label_map is None:
                continue
            candidates = [
                args.predictions / f"{case.case_id}_seg.nii.gz",
                args.predictions / f"{output_stem(case.image)}_seg.nii.gz",
            ]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise InputError(
                    f"{args.predictions}: no prediction for case {case.case_id} (looked for {candidates[0].name}, {candidates[1].name})"
                )
            pairs.append((case.case_id, found, case.label_map))
        return pairs
    if not (args.prediction and args.reference):
        raise InputError("give PREDICTION and REFERENCE, or --manifest and --predictions")
    return [(output_stem(args.prediction), args.prediction, args.reference)]


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the means and write the tables.

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
        If ``--output`` or ``--json`` is a folder, the label maps to compare are not given (or a prediction
        of a manifest case is missing), a prediction is not on its reference's grid, or a label map, the
        label table or the model folder is unusable.
    """
    import numpy as np

    from brainseg.errors import InputError
    from brainseg.io.nifti import load_volume
    from brainseg.labels import LabelCounts, LabelTable, build_label_table, resolve_label_table
    from brainseg.metrics.report import evaluate_label_maps, summarize, write_scores_csv, write_scores_json
    from brainseg.model_folder import resolve_model_dir, verify_model_folder

    for out in (args.output, args.json):
        if out is not None and out.is_dir():
            raise InputError(f"{out}: is a folder; give a file name")
    pairs = _pairs(args)
    if args.labels == "auto":
        references = (load_volume(ref_path, kind="label_map").data for _, _, ref_path in pairs)
        labels = build_label_table(LabelCounts.count(references))
    elif args.labels:
        labels = resolve_label_table(args.labels)
    else:
        folder = resolve_model_dir(args.model)
        verify_model_folder(folder)
        labels = LabelTable.from_tsv(folder / "labels.tsv")
    scores = []
    for case_id, pred_path, ref_path in pairs:
        prediction = load_volume(pred_path, kind="label_map")
        reference = load_volume(ref_path, kind="label_map")
        if prediction.data.shape != reference.data.shape or not np.allclose(
            prediction.affine, reference.affine, atol=1e-3
        ):
            raise InputError(f"{pred_path}: not on the grid of {ref_path}; resample it onto the reference grid first")
        scores += evaluate_label_maps(
            prediction.data, reference.data, labels, reference.spacing, case_id=case_id, distances=not args.no_distances
        )
    mean = summarize(scores)
    distances = (
        "distances not computed (--no-distances)"
        if args.no_distances
        else f"HD {mean['hausdorff']:.2f} mm, HD95 {mean['hd95']:.2f} mm, MSD {mean['msd']:.3f} mm"
    )
    print(
        f"mean over {mean['structures']} structure scores: Dice {mean['dice']:.4f}, {distances}, "
        f"VS {mean['volumetric_similarity']:.4f} ({mean['missing']} missing from one side)"
    )
    if args.output:
        write_scores_csv(args.output, scores)
    if args.json:
        write_scores_json(args.json, scores)
    return 0
