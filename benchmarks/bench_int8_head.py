"""The default model's int8 head against float32 on the validation subjects: time, labels, Dice.

For each validation case of the model (its ``config.yaml``), prepares and registers the scan once,
then runs :func:`brainseg.inference.dense.predict_dense` twice on the same inputs: with the int8 head
(``int8_margin`` = :data:`~brainseg.inference.dense.INT8_MARGIN`, what ``brainseg segment`` does without
``--probabilities``) and in float32 throughout (``int8_margin=None``). Prints per case the seconds of
each, the brain voxels whose label differs, the voxels the int8 head computed again in float32, the
largest change of any structure's Dice against the manual labels, and both mean Dice values (the
structures of the manual label map, background excluded, on the reference grid).

Issue H's rule for a lower precision: faster, at most 0.1 % of brain voxels relabelled and no
structure's Dice moved by more than 0.002.

Usage: OMP_NUM_THREADS=2 python benchmarks/bench_int8_head.py [MODEL_DIR] [--cases 1000 1008 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from brainseg.allocator import keep_freed_memory
from brainseg.inference import dense
from brainseg.inference.int8 import Int8Report
from brainseg.inference.predictor import Predictor
from brainseg.io.manifest import read_manifest
from brainseg.io.nifti import load_volume
from brainseg.metrics.report import evaluate_label_maps
from brainseg.model_folder import default_model_dir
from brainseg.preprocessing.pipeline import prepare_image
from brainseg.preprocessing.reference import load_transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=default_model_dir())
    parser.add_argument("--cases", nargs="*", help="case ids (default: the model's validation cases)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    predictor = Predictor.from_model_dir(args.model, args.threads)
    model = predictor.model
    training = model.config.training
    cases = {c.case_id: c for c in read_manifest(training.manifest)}
    count = Int8Report()
    bias = model.prior.logit_bias() if model.prior is not None else None
    print(f"model {args.model}, int8 margin {dense.INT8_MARGIN}, {torch.get_num_threads()} threads")
    print("case   float32 s  int8 s  relabelled voxels (%)   recomputed (%)   max |dDice|  mean Dice fp32 / int8")
    totals = np.zeros(4)
    transforms = load_transforms(training.reference) if training.reference else {}
    for case_id in args.cases or training.validation_cases:
        case = cases[case_id]
        volume = load_volume(case.image)
        mask = load_volume(case.mask, kind="mask").data if case.mask else None
        manual = load_volume(case.label_map, kind="label_map")
        prepared = prepare_image(volume, mask, model.normalization)
        inputs, working_mask, registered = predictor.working_inputs(prepared, transforms.get(case_id))
        runs = {}
        for name, margin in (("float32", None), ("int8", dense.INT8_MARGIN)):
            start = time.perf_counter()
            classes, _ = dense.predict_dense(
                model.network,  # type: ignore[arg-type]
                inputs.stack,
                working_mask,
                spatial=inputs.spatial,
                logit_bias=bias,
                int8_margin=margin,
                int8_report=count,
            )
            seconds = time.perf_counter() - start
            native = classes if registered is None else registered.to_native(classes)
            label_map = model.labels.to_labels(prepared.to_source_grid(native))
            scores = evaluate_label_maps(label_map, manual.data, model.labels, manual.spacing, case_id=case_id)
            runs[name] = (classes, seconds, {s.name: s.dice for s in scores})
        (fp32, t32, dice32), (int8, t8, dice8) = runs["float32"], runs["int8"]
        brain = int(working_mask.sum())
        changed = int(np.count_nonzero(fp32[working_mask] != int8[working_mask]))
        shift = max(abs(dice32[k] - dice8[k]) for k in dice32 if np.isfinite(dice32[k]))
        mean32 = np.nanmean(list(dice32.values()))
        mean8 = np.nanmean(list(dice8.values()))
        totals += (t32, t8, changed / brain, shift)
        print(
            f"{case_id:6s} {t32:9.1f} {t8:7.1f}  {changed:8d} ({100 * changed / brain:.4f} %)"
            f"   {count.recomputed:8d} ({100 * count.recomputed / brain:.1f} %)"
            f"   {shift:.5f}     {mean32:.5f} / {mean8:.5f}"
        )
    n = len(args.cases or training.validation_cases)
    print(
        f"mean   {totals[0] / n:9.1f} {totals[1] / n:7.1f}  relabelled {100 * totals[2] / n:.4f} % of brain voxels, "
        f"mean of the largest |dDice| {totals[3] / n:.5f}"
    )


if __name__ == "__main__":
    main()
