"""Benchmark the dense two-stage inference of de Brébisson and Montana's network over one real 1 mm brain.

Loads one subject of the MICCAI 2012 manifest (``configs/miccai2012_manifest.csv``: its image and
brain mask, resampled to 1 mm and z-scored as training does), builds the full network's four pathways
(orthogonal, compressed, 3-D patch, centroid distances) and its first stage, narrow and untrained
(random weights: the time does not depend on them), and runs
:func:`brainseg.inference.dense_brebisson.predict_brebisson` over every brain voxel with the iterative
inference of section 3.4 (``--max-iterations`` passes of the full network; tolerance 0 by default, so
that all of them run unless a pass changes nothing). Prints the wall seconds, voxels per second, the
passes run and the peak RSS of the process (loading included).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_brebisson_dense.py [--case 1000] [--max-iterations 3]
        [--widths-2d 20 50] [--fc-3d 200] [--fc 256 256] [--probabilities]

Memory: the full network's image contributions are kept across passes, ``N x fc[0]`` float32 (about
1.5 GB for 1.5 M brain voxels and ``fc[0] = 256``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "configs" / "miccai2012_manifest.csv"


def main() -> None:
    """Load the case, build the networks, run the dense two-stage inference and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="case manifest (CSV)")
    parser.add_argument("--case", default=None, help="case id (default: the manifest's first)")
    parser.add_argument("--max-iterations", type=int, default=3, help="most passes of the full network")
    parser.add_argument("--tolerance", type=float, default=0.0, help="stop once a pass changes at most this fraction")
    parser.add_argument("--widths-2d", type=int, nargs=2, default=[20, 50])
    parser.add_argument("--fc-3d", type=int, nargs="+", default=[200])
    parser.add_argument("--fc", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--num-classes", type=int, default=135)
    parser.add_argument("--probabilities", action="store_true", help="also return the (C, D, H, W) float16 map")
    parser.add_argument("--tile", type=int, default=4096, help="voxels per pass through the head")
    args = parser.parse_args()

    import torch

    from brainseg.config import BrebissonConfig
    from brainseg.families.brebisson2015 import BREBISSON2015
    from brainseg.inference.dense_brebisson import predict_brebisson
    from brainseg.io.manifest import read_manifest
    from brainseg.labels import LabelTable
    from brainseg.preprocessing.intensity import IntensityNormalization
    from brainseg.timing import format_timings, record
    from brainseg.training.data import load_prepared_case

    cases = read_manifest(args.manifest)
    case = cases[0] if args.case is None else next(c for c in cases if c.case_id == args.case)
    prepared, _ = load_prepared_case(case, LabelTable.miccai2012(), IntensityNormalization(), with_labels=False)
    cfg = BrebissonConfig(
        num_classes=args.num_classes,
        widths_2d=tuple(args.widths_2d),
        fc_3d=tuple(args.fc_3d),
        fc=tuple(args.fc),
        max_iterations=args.max_iterations,
        tolerance=args.tolerance,
    )
    mask = prepared.mask
    inputs = BREBISSON2015.case_inputs(cfg, prepared.image, mask, np.eye(4), prepared.background, None)
    torch.manual_seed(0)
    network = BREBISSON2015.build_network(cfg).eval()

    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"de Brébisson dense two-stage inference, case {case.case_id}, grid {mask.shape}, {int(mask.sum()):,} voxels")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, load {os.getloadavg()[0]:.2f}")
    print(f"widths 2-D {args.widths_2d}, 3-D FC {args.fc_3d}, merged FC {args.fc}, {args.num_classes} classes")
    t0 = time.perf_counter()
    with record() as times:
        classes, _, result = predict_brebisson(
            network, inputs, mask, probabilities=args.probabilities, progress=True, tile=args.tile
        )
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    assert result is not None
    changed = ", ".join(f"{c:.4f}" for c in result.changed)
    print(f"passes of the full network: {result.iterations} (changed fractions: {changed or 'none'})")
    print(f"classes present: {len(np.unique(classes[mask]))}")
    print(format_timings(times))
    print(f"wall {wall:.1f} s, {mask.sum() / wall:,.0f} voxels/s, peak RSS {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
