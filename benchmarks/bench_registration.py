"""Benchmark affine registration of one real 1 mm brain to another (issue B goal: <= 15 s on 2 cores).

Usage::

    python benchmarks/bench_registration.py [MOVING] [REFERENCE]

Defaults: MICCAI 2012 subjects 1008 -> 1000 from ../shared/data, else the demo scan onto a
rotated copy of itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from brainseg.io import load_volume
from brainseg.preprocessing.registration import register_affine, resample_to_reference, rotation_angle_deg

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "miccai2012"
DEMO = ROOT / "src" / "brainseg" / "data" / "demo" / "1000_SS.nii.gz"


def main() -> None:
    """Register and print the time, the transform's rotation angle and scale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("moving", nargs="?", type=Path, help="T1 image to register (default: subject 1008)")
    parser.add_argument("reference", nargs="?", type=Path, help="fixed image (default: subject 1000)")
    args = parser.parse_args()
    if (args.moving is None) != (args.reference is None):
        parser.error("give both MOVING and REFERENCE, or neither")
    if args.moving is not None:
        moving, reference = load_volume(args.moving), load_volume(args.reference)
    elif (SHARED / "1008_SS.nii.gz").exists():
        moving, reference = load_volume(SHARED / "1008_SS.nii.gz"), load_volume(SHARED / "1000_SS.nii.gz")
    else:
        reference = load_volume(DEMO)
        moving = reference
    print(f"threads: {torch.get_num_threads()}; moving {moving.data.shape}, reference {reference.data.shape}")
    t0 = time.perf_counter()
    result = register_affine(moving.data, moving.affine, reference.data, reference.affine)
    seconds = time.perf_counter() - t0
    warped = resample_to_reference(moving.data, moving.affine, result.matrix, reference.data.shape, reference.affine)
    both = (warped > 0) & (reference.data > 0)
    overlap = 2 * both.sum() / ((warped > 0).sum() + (reference.data > 0).sum())
    scale = np.cbrt(abs(np.linalg.det(result.matrix[:3, :3])))
    print(
        f"affine registration: {seconds:.1f} s; rotation {rotation_angle_deg(result.matrix):.1f} deg, "
        f"scale {scale:.3f}; brain-mask Dice after registration {overlap:.3f}"
    )


if __name__ == "__main__":
    main()
