"""DeepNAT's int8 labels against float32 on real scans: time, relabelled voxels, the int8 logit error.

For each case, prepares the scan once as ``brainseg segment`` does, then labels it twice with the same
inputs: :func:`brainseg.inference.dense3d.segment_dense3d` (float32) and
:func:`brainseg.inference.dense3d_int8.segment_dense3d_int8` (int8 fully connected layers, doubtful
voxels checked in float32). Prints the seconds of each, the brain voxels whose label differs, the
voxels checked in float32, the largest change of any structure's Dice against the manual labels, and
the int8 heads' logit error ``delta`` at 20,000 random brain voxels (largest and 99.99th percentile;
labels are safe where ``delta`` stays under ``INT8_MARGIN / 4``, ``/ 8`` for a hierarchy).

Issue H's rule for a lower precision: faster, at most 0.1 % of brain voxels relabelled and no
structure's Dice moved by more than 0.002.

Usage: OMP_NUM_THREADS=2 python benchmarks/bench_deepnat_int8.py [MODEL_DIR] [--cases 1000 1008 ...] [--sweep 0 0.1 0.5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from brainseg.inference.dense3d import extract_patches3d, segment_dense3d
from brainseg.inference.dense3d_int8 import INT8_MARGIN, GrownTile, log_gap, segment_dense3d_int8, tile_runner, tiles
from brainseg.inference.dense3d_network import DenseHead
from brainseg.inference.int8 import Int8Report
from brainseg.inference.predictor import Predictor
from brainseg.io.manifest import read_manifest
from brainseg.io.nifti import load_volume
from brainseg.metrics.report import evaluate_label_maps
from brainseg.model_folder import resolve_model_dir
from brainseg.models.wachinger2018 import DeepNATCascade
from brainseg.preprocessing.pipeline import prepare_image


@torch.no_grad()
def logit_error(network, image, mask, coordinates, background, n=20_000) -> np.ndarray:
    """Largest |int8 - float32| logit of each head's output at ``n`` random brain voxels, per voxel."""
    voxels = np.argwhere(mask)
    voxels = voxels[np.random.default_rng(0).choice(len(voxels), min(n, len(voxels)), replace=False)]
    members = [network.foreground, network.structures] if isinstance(network, DeepNATCascade) else [network]
    int8_heads = [DenseHead(member, int8=True) for member in members]  # quantised once, not per batch
    errors = []
    for start in range(0, len(voxels), 1024):
        batch = voxels[start : start + 1024]
        patches = torch.from_numpy(extract_patches3d(image, batch, background=background))
        coords = (
            None
            if coordinates is None
            else torch.from_numpy(coordinates[:, batch[:, 0], batch[:, 1], batch[:, 2]].T.copy())
        )
        worst = torch.zeros(len(batch))
        for member, int8_head in zip(members, int8_heads):
            features = member.features(patches)
            exact = member.head(features, coords)
            fast = int8_head(features, coords)
            worst = torch.maximum(worst, (fast - exact).abs().amax(dim=(1, 2)))
        errors.append(worst.numpy())
    return np.concatenate(errors)


@torch.no_grad()
def sweep(network, image, mask, coordinates, background, bias, margins) -> list[tuple[float, int, int, int]]:
    """Per margin: targets checked in float32, sources computed again, labels that would differ from float32's.

    One pass computes both the int8 and the float32 per-task probabilities of every source, so the
    figures for every margin come from the same numbers (a label differs where int8's arg-max is not
    float32's and the int8 gap is at least the margin).
    """
    runner, reach = tile_runner(network, image, mask, coordinates, None, 1024 * 2**20, background, bias)
    int8_heads = [DenseHead(member, int8=True) for member in runner.members]
    counts = np.zeros((len(margins), 3), np.int64)
    for lo, hi in tiles(runner):
        tile = GrownTile(runner, lo, hi, reach)
        fast, exact = tile.probabilities(int8_heads, 4096), tile.probabilities(runner.heads, 4096)
        gaps, differ = [], []
        for start in range(0, len(tile.targets), 4096):
            which = np.arange(start, min(start + 4096, len(tile.targets)))
            means = tile.means(fast, which)
            gaps.append(log_gap(means).numpy())
            differ.append((means.argmax(1) != tile.means(exact, which).argmax(1)).numpy())
        gap, changed = np.concatenate(gaps), np.concatenate(differ)
        for k, margin in enumerate(margins):
            doubt = gap < margin
            again = np.unique(tile.sources[doubt])
            counts[k] += (doubt.sum(), (again >= 0).sum(), (changed & ~doubt).sum())
    return [(m, *map(int, c)) for m, c in zip(margins, counts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="deepnat", help="model folder or shipped model name")
    parser.add_argument("--cases", nargs="*", help="case ids (default: the model's validation cases)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sweep", type=float, nargs="*", help="also print, for these margins, voxels checked and relabelled"
    )
    args = parser.parse_args()
    predictor = Predictor.from_model_dir(resolve_model_dir(args.model), args.threads)
    model = predictor.model
    network = model.network.eval()
    training = model.config.training
    cases = {c.case_id: c for c in read_manifest(training.manifest)}
    bias = model.prior.logit_bias() if model.prior is not None else None
    print(f"model {args.model}, int8 margin {INT8_MARGIN}, {torch.get_num_threads()} threads")
    print(
        "case   float32 s  int8 s  relabelled voxels (%)   checked in float32 (%)   max |dDice|   "
        "logit error max / 99.99 %"
    )
    for case_id in args.cases or training.validation_cases:
        case = cases[case_id]
        volume = load_volume(case.image)
        mask = load_volume(case.mask, kind="mask").data if case.mask else None
        manual = load_volume(case.label_map, kind="label_map")
        prepared = prepare_image(volume, mask, model.normalization)
        inputs, working_mask, _ = predictor.working_inputs(prepared)
        coordinates = inputs.coordinates if len(inputs.coordinates) else None
        report = Int8Report()
        runs = {}
        for name in ("float32", "int8"):
            start = time.perf_counter()
            if name == "float32":
                classes, _ = segment_dense3d(
                    network, inputs.image, working_mask, coordinates, background=inputs.background, logit_bias=bias
                )
            else:
                classes = segment_dense3d_int8(
                    network,
                    inputs.image,
                    working_mask,
                    coordinates,
                    background=inputs.background,
                    logit_bias=bias,
                    report=report,
                )
            seconds = time.perf_counter() - start
            label_map = model.labels.to_labels(prepared.to_source_grid(classes))
            scores = evaluate_label_maps(label_map, manual.data, model.labels, manual.spacing, case_id=case_id)
            runs[name] = (classes, seconds, {s.name: s.dice for s in scores})
        (fp32, t32, dice32), (int8, t8, dice8) = runs["float32"], runs["int8"]
        brain = int(working_mask.sum())
        changed = int(np.count_nonzero(fp32[working_mask] != int8[working_mask]))
        shift = max(abs(dice32[k] - dice8[k]) for k in dice32 if np.isfinite(dice32[k]))
        error = logit_error(network, inputs.image, working_mask, coordinates, inputs.background)
        print(
            f"{case_id:6s} {t32:9.1f} {t8:7.1f}  {changed:8d} ({100 * changed / brain:.4f} %)"
            f"   {report.recomputed:8d} ({100 * report.recomputed / brain:.1f} %)"
            f"   {shift:.5f}   {error.max():.3f} / {np.quantile(error, 0.9999):.3f}"
        )
        if args.sweep:
            rows = sweep(network, inputs.image, working_mask, coordinates, inputs.background, bias, args.sweep)
            print("  margin   checked in float32 (%)   sources computed again (%)   relabelled voxels (%)")
            for margin, checked, again, relabelled in rows:
                print(
                    f"  {margin:6.3f}   {checked:9d} ({100 * checked / brain:5.1f} %)"
                    f"   {again:9d} ({100 * again / brain:5.1f} %)   {relabelled:7d} ({100 * relabelled / brain:.4f} %)"
                )


if __name__ == "__main__":
    main()
