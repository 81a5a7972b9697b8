"""The skull-stripped detector and deepbet on real scans: figures behind ``--skull-strip auto``.

For each scan prints the fraction of zero voxels, the non-zero volume, deepbet's brain-mask volume,
the fraction of the non-zero volume outside that mask (the detector's statistic), the decision, and
the seconds deepbet took. Defaults: every MICCAI 2012 and IBSR 18 scan and the whole-head scans of
../shared/data.

Usage::

    python benchmarks/bench_skull_strip.py [IMAGE ...]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from brainseg.io import load_volume
from brainseg.preprocessing.masking import brain_mask
from brainseg.preprocessing.skull_strip import BrainExtractor, deepbet_version, detect_skull_stripped
from brainseg.reporting.volumes import voxel_volume_mm3

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_scans() -> list[Path]:
    """MICCAI 2012 (15), IBSR 18 (18) and whole-head (2) scans, where present."""
    return (
        sorted((DATA / "miccai2012").glob("*_SS.nii.gz"))
        + sorted((DATA / "ibsr18").glob("*/IBSR_*/IBSR_??.nii.gz"))
        + sorted((DATA / "whole_head").glob("*.nii.gz"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    args = parser.parse_args()
    scans = args.images or default_scans()
    extractor = BrainExtractor()
    print(f"deepbet {deepbet_version()}; rule: stripped if >= 5 % zero voxels and <= 10 % of the non-zero volume")
    print("outside deepbet's mask")
    print(f"{'scan':<28} {'zero %':>7} {'non-zero ml':>11} {'deepbet ml':>10} {'outside %':>9} {'s':>5}  decision")
    outside_stripped = []
    for path in scans:
        volume = load_volume(path)
        voxel_ml = voxel_volume_mm3(volume.affine) / 1000
        t0 = time.perf_counter()
        mask = extractor(volume.data)
        seconds = time.perf_counter() - t0
        stripped, _, _, _ = detect_skull_stripped(volume.data, voxel_ml, lambda _: mask)
        foreground = brain_mask(volume.data)
        outside = np.count_nonzero(foreground & ~mask) / max(int(foreground.sum()), 1)
        zero = float(np.mean(volume.data == 0))
        if stripped:
            outside_stripped.append(outside)
        print(
            f"{path.name:<28} {100 * zero:7.1f} {foreground.sum() * voxel_ml:11.0f} {mask.sum() * voxel_ml:10.0f} "
            f"{100 * outside:9.2f} {seconds:5.1f}  {'skull-stripped' if stripped else 'whole head: extract'}"
        )
    if outside_stripped:
        print(f"outside % over scans called skull-stripped: max {100 * max(outside_stripped):.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB")


if __name__ == "__main__":
    main()
