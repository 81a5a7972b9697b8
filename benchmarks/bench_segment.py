"""Benchmark whole-volume segmentation on one real 1 mm subject.

Prints (1) wall seconds and peak RSS of ``brainseg segment`` run as a separate
process, and (2) dense against patch-by-patch inference on the same voxels
(all brain voxels of a few central slices), their time ratio and their largest
probability difference.

Usage::

    python benchmarks/bench_segment.py [IMAGE] [--model DIR] [--slices N]

IMAGE defaults to ../shared/data/miccai2012/1000_SS.nii.gz, else the shipped demo scan.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainseg.inference.dense import predict_dense_at, predict_patches
from brainseg.inference.predictor import Predictor
from brainseg.io import load_volume
from brainseg.model_folder import load_model_folder
from brainseg.preprocessing.pipeline import prepare_image
from brainseg.sampling.patches import to_plane

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "miccai2012" / "1000_SS.nii.gz"
DEMO = ROOT / "src" / "brainseg" / "data" / "demo" / "1000_SS.nii.gz"


def bench_cli(image: Path, model: Path | None) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one ``brainseg segment`` process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "brainseg", "segment", str(image), "-o", out, "--no-progress"]
        if model:
            cmd += ["--model", str(model)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kb / 1024**2


def bench_dense_vs_patches(image: Path, model_dir: Path | None, n_slices: int) -> None:
    """Time dense and patch-by-patch inference on the brain voxels of central slices."""
    model = load_model_folder(model_dir)
    cfg = model.config.model
    prepared = prepare_image(load_volume(image), None, model.normalization)
    t0 = time.perf_counter()
    stack, mask, spatial, registered = Predictor(model).working_inputs(prepared)
    if registered is not None:
        print(f"registration to the reference template + resampling: {time.perf_counter() - t0:.1f} s")
    mask_p = to_plane(mask, cfg.plane)
    centre = int(np.argwhere(mask_p).mean(axis=0)[0])
    chosen = np.zeros_like(mask_p)
    lo = centre - n_slices // 2
    chosen[lo : lo + n_slices] = mask_p[lo : lo + n_slices]
    indices = np.argwhere(chosen)
    t0 = time.perf_counter()
    dense = predict_dense_at(model.network, stack, indices, spatial=spatial)
    t_dense = time.perf_counter() - t0

    t0 = time.perf_counter()
    patches = predict_patches(model.network, stack, indices, spatial=spatial, batch_size=1024)
    t_patch = time.perf_counter() - t0
    diff = float(np.abs(dense - patches).max())
    print(f"model: {model.path} ({', '.join(('BaseNet',) + model.network.inputs)})")
    print(f"dense vs patch-by-patch on {len(indices):,} brain voxels of {n_slices} {cfg.plane} slices:")
    print(f"  dense          {t_dense:8.2f} s  ({len(indices) / t_dense:,.0f} voxels/s)")
    print(f"  patch-by-patch {t_patch:8.2f} s  ({len(indices) / t_patch:,.0f} voxels/s)")
    print(f"  speed-up       {t_patch / t_dense:8.1f} x   max |dense - patch| = {diff:.2e}")


def main() -> None:
    """Parse arguments and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, default=SHARED if SHARED.exists() else DEMO)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--slices", type=int, default=8)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"image: {args.image}")
    wall, rss = bench_cli(args.image, args.model)
    print(f"brainseg segment: {wall:.1f} s wall, peak RSS {rss:.2f} GB")
    bench_dense_vs_patches(args.image, args.model, args.slices)


if __name__ == "__main__":
    main()
