"""Benchmark DeepNAT's dense 3-D inference over one real 1 mm brain.

Runs :func:`brainseg.inference.dense3d.segment_dense3d` over every voxel of a
real brain mask with the paper's network (Table 1 widths, 7 tasks, 6
coordinates) in the variant asked for: the hierarchy (two networks, 2 and
25 structures + background, the default) or one step (one network), with
random weights (the time does not depend on them). Each run is its own
process, so its peak RSS is its own. Prints wall seconds, voxels per second,
peak RSS and the tile size for each conv-stage memory budget, and the paper's
figure beside them (about 1 h per scan on a GPU, with the CRF; section 4).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_deepnat_dense.py [MASK] [--one-step] [--budgets-mib 256 1024]

MASK defaults to ../shared/data/miccai2012/1000_mask.nii.gz, else the mask of
the shipped demo scan (its non-zero voxels). Target on 2 cores: at most
3 min and 3 GB for a whole 1 mm brain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MASK = ROOT.parent / "shared" / "data" / "miccai2012" / "1000_mask.nii.gz"
DEMO = ROOT / "src" / "brainseg" / "data" / "demo" / "1000_SS.nii.gz"


def run_one(mask_path: Path, one_step: bool, budget_mib: int) -> None:
    """Child process: one dense segmentation; prints its figures as JSON."""
    import nibabel as nib
    import torch

    from brainseg.inference.dense3d import segment_dense3d
    from brainseg.inference.dense3d_network import choose_tile_size
    from brainseg.models.wachinger2018 import DeepNAT, DeepNATCascade

    mask = np.asanyarray(nib.load(str(mask_path)).dataobj) > 0
    rng = np.random.default_rng(0)
    image = np.where(mask, rng.normal(1.0, 0.3, mask.shape), 0).astype(np.float32)
    coordinates = np.where(mask, rng.uniform(-1, 1, (6,) + mask.shape), 0).astype(np.float32)
    torch.manual_seed(0)
    network = DeepNAT(26) if one_step else DeepNATCascade(26)
    network.eval()
    width = int(np.ptp(np.nonzero(mask.any(axis=(0, 1)))[0])) + 1
    t0 = time.perf_counter()
    classes, _ = segment_dense3d(network, image, mask, coordinates, memory_bytes=budget_mib * 2**20)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    tile = choose_tile_size(width, memory_bytes=budget_mib * 2**20)
    out = {"wall_s": wall, "peak_rss_gb": peak_gb, "voxels": int(mask.sum()), "tile": tile}
    print(json.dumps(out))


def main() -> None:
    """Run each budget in a child process and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mask", nargs="?", type=Path, default=MASK if MASK.exists() else DEMO)
    parser.add_argument("--one-step", action="store_true", help="one network instead of the hierarchy")
    parser.add_argument("--budgets-mib", type=int, nargs="+", default=[1024], help="conv-stage memory budgets")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        run_one(args.mask, args.one_step, args.one)
        return
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    variant = "one step" if args.one_step else "hierarchy (2 networks)"
    print(f"DeepNAT dense inference, {variant}, mask {args.mask}")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, load {os.getloadavg()[0]:.2f}")
    print(f"{'budget MiB':>10} {'tile':>5} {'voxels':>10} {'wall s':>8} {'voxels/s':>9} {'peak RSS GB':>12}")
    for budget in args.budgets_mib:
        cmd = [sys.executable, __file__, str(args.mask), "--one", str(budget)] + (
            ["--one-step"] if args.one_step else []
        )
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(
            f"{budget:>10} {r['tile']:>5} {r['voxels']:>10,} {r['wall_s']:>8.1f} "
            f"{r['voxels'] / r['wall_s']:>9,.0f} {r['peak_rss_gb']:>12.2f}"
        )
    print("paper (section 4): about 1 h per scan on a GPU, 3-D CRF included; targets here: <= 180 s, <= 3 GB")


if __name__ == "__main__":
    main()
