"""Validation scores of a MixNet model folder in float32 and in bfloat16 (docs/mixnet.md, "bfloat16").

Segments the folder's validation cases twice the way ``brainseg evaluate`` scores them
(:func:`brainseg.training.model_card.evaluate_validation`: each case on its own grid against its label
file), first with :data:`brainseg.inference.dense_mixnet.BFLOAT16` off, then on, and prints each pass's
time and mean scores, and how far each structure's Dice moved. On a CPU without native bfloat16
products the second pass runs through oneDNN's emulation (slow; same scores).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_mixnet_bfloat16_scores.py MODEL_DIR
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


def main() -> None:
    """Score the validation cases in both precisions and print the figures."""
    from brainseg.inference import dense_mixnet
    from brainseg.inference.bfloat16 import bfloat16_available
    from brainseg.metrics.report import summarize
    from brainseg.model_folder import load_model_folder
    from brainseg.training.model_card import evaluate_validation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a mixnet model folder with validation cases")
    args = parser.parse_args()
    model = load_model_folder(args.model)
    print(f"native bfloat16 products on this CPU: {bfloat16_available()}")
    dice = {}
    for bf16 in (False, True):
        dense_mixnet.BFLOAT16 = bf16
        start = time.perf_counter()
        scores = evaluate_validation(model)
        seconds = time.perf_counter() - start
        mean = summarize(scores)
        figures = ", ".join(f"{k} {v:.4f}" for k, v in mean.items() if isinstance(v, float))
        print(f"{'bfloat16' if bf16 else 'float32 '} {seconds:6.0f} s  {figures}", flush=True)
        dice[bf16] = {(s.case_id, s.name): s.dice for s in scores}
    moved = [dice[True][k] - d for k, d in dice[False].items() if math.isfinite(d)]
    print(
        f"per-structure Dice change over {len(moved)} (case, structure) pairs: mean {sum(moved) / len(moved):+.5f}, "
        f"largest {max(abs(m) for m in moved):.5f}"
    )


if __name__ == "__main__":
    main()
