"""Where a model's structure-volume errors come from: a global bias, or each subject's own size?

Reads a model folder's ``validation.csv`` (written with the model card: per case and structure, the
predicted and reference voxel counts) and prints, over the structures scored in every case:

- how many structure-cases are predicted more than 1.25x or less than 0.8x their manual volume;
- how many of those are cases whose manual volume lies below (above) that structure's geometric
  mean over the cases: a model that predicts each structure at its usual size, whatever the subject,
  makes exactly these errors;
- the median slope of log(predicted volume) on log(manual volume) within a structure across cases
  (1: the prediction follows the subject; 0: it is the same volume for everyone);
- how many structures, their volumes summed over the cases, lie within 0.8-1.25x the manual volume,
  and the structures furthest from it either way.

Usage: python benchmarks/volume_error.py [MODEL_DIR]   (default: the shipped default model)
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from brainseg.model_folder import default_model_dir


def main(model_dir: Path) -> None:
    with open(model_dir / "validation.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["case_id"] != "mean" and r["name"] != "all"]
    volumes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    summed: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # predicted, manual over all cases
    for r in rows:
        predicted, reference = float(r["prediction_voxels"]), float(r["reference_voxels"])
        if reference > 0 and predicted > 0:
            volumes[r["name"]].append((predicted, reference))
        summed[r["name"]][0] += predicted
        summed[r["name"]][1] += reference
    cases = max(len(v) for v in volumes.values())
    large = large_below = small = small_above = 0
    slopes = []
    for values in volumes.values():
        if len(values) < cases:
            continue
        v = np.log(np.array(values))
        typical = v[:, 1].mean()
        ratio = v[:, 0] - v[:, 1]
        large += int((ratio > np.log(1.25)).sum())
        large_below += int(((ratio > np.log(1.25)) & (v[:, 1] < typical)).sum())
        small += int((ratio < np.log(0.8)).sum())
        small_above += int(((ratio < np.log(0.8)) & (v[:, 1] > typical)).sum())
        if v[:, 1].std() > 0:
            slopes.append(np.polyfit(v[:, 1], v[:, 0], 1)[0])
    print(f"{model_dir}: {len(slopes)} structures x {cases} validation cases")
    print(f"more than 1.25x the manual volume: {large} structure-cases; {large_below} of them where the manual")
    print("  volume is below that structure's geometric mean over the cases")
    print(f"less than 0.8x: {small}; {small_above} of them where the manual volume is above it")
    print(f"median slope of log predicted on log manual volume within a structure: {np.median(slopes):.2f}")
    ratios = {name: p / m for name, (p, m) in summed.items() if m > 0}
    within = sum(0.8 <= q <= 1.25 for q in ratios.values())
    ordered = sorted(ratios, key=ratios.get)
    print(f"summed over the cases: {within} of {len(ratios)} structures within 0.8-1.25x their manual volume")
    print("  smallest ratios: " + ", ".join(f"{n} {ratios[n]:.2f}x" for n in ordered[:4]))
    print("  largest ratios: " + ", ".join(f"{n} {ratios[n]:.2f}x" for n in ordered[::-1][:4]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_dir", nargs="?", type=Path, help="a model folder with validation.csv (default: the shipped default)"
    )
    args = parser.parse_args()
    main(args.model_dir or default_model_dir())
