"""Benchmark DeepNAT's spectral coordinates on one real 1 mm brain mask.

Prints the wall seconds, CPU seconds and peak RSS of
:func:`brainseg.features.coordinates.spectral_coordinates` on the default
2 mm grid and on the native grid. Each runs in its own process, so the peak
RSS belongs to that run alone. The script also prints how closely the 2 mm
result matches the native one. The machine's load average is printed as well,
because other jobs on the same cores slow every figure down.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_coordinates.py [MASK]

MASK defaults to ../shared/data/miccai2012/1000_mask.nii.gz. Budget on 2 cores:
at most 15 s on the 2 mm grid and 60 s on the native grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MASK = ROOT.parent / "shared" / "data" / "miccai2012" / "1000_mask.nii.gz"


def run_one(mask_path: Path, grid: str, out: Path) -> None:
    """Child process: compute the coordinates once, save them, print the figures as JSON."""
    import nibabel as nib

    from brainseg.features.coordinates import spectral_coordinates

    image = nib.load(str(mask_path))
    mask = np.asanyarray(image.dataobj) > 0
    grid_mm = None if grid == "native" else float(grid)
    t0, c0 = time.perf_counter(), time.process_time()
    coords = spectral_coordinates(mask, image.affine, grid_mm=grid_mm)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(out, coords[:, mask])
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak_gb, "voxels": int(mask.sum())}))


def main() -> None:
    """Run the 2 mm and native solves in child processes and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mask", nargs="?", type=Path, default=MASK)
    parser.add_argument("--one", choices=["2.0", "native"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.mask, args.one, args.out)
        return
    threads = os.environ.get("OMP_NUM_THREADS", "(unset)")
    print(f"command: OMP_NUM_THREADS={threads} python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"mask: {args.mask}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for grid in ("2.0", "native"):
            out = Path(tmp) / f"{grid}.npy"
            cmd = [sys.executable, __file__, str(args.mask), "--one", grid, "--out", str(out)]
            figures = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            results[grid] = np.load(out)
            label = "2 mm grid" if grid == "2.0" else "native grid"
            print(
                f"{label:12s} {figures['wall_s']:7.1f} s wall {figures['cpu_s']:7.1f} s CPU "
                f"peak RSS {figures['peak_rss_gb']:.2f} GB ({figures['voxels']:,} mask voxels)"
            )
    coarse, native = results["2.0"], results["native"]
    corr = [np.corrcoef(coarse[k], native[k])[0, 1] for k in range(3)]
    diff = np.abs(coarse - native).max(axis=1)
    print(f"2 mm vs native: correlation {', '.join(f'{c:.5f}' for c in corr)}; max |difference| {diff.round(3)}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
