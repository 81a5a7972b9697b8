"""Benchmark MixNet's multi-view inference (Chen & Merhof 2018, section 2.3) over a whole 1 mm brain.

Times :func:`brainseg.inference.dense_mixnet.predict_mixnet` on a prepared scan (default: the shipped
demo subject, MICCAI 2012 subject 1000), view by view, three ways: bfloat16 (channels-last, what dense
inference does where the CPU multiplies bfloat16 natively), float32 channels-last (what it does elsewhere)
and float32 in PyTorch's default memory format (contiguous); prints the peak RSS of the process and the
share of brain voxels whose fused label bfloat16 changes. The network is a model folder's (``--model``)
or an untrained MixNet of the given version and classes (the time does not depend on the weights; the
relabelled share does, and means little for untrained weights). Target (issue J): three views of a
1 mm brain in <= 60 s on 2 cores.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_mixnet.py [--model MODEL_DIR | --classes 135 --version 2] [--image PATH]
        [--ways bfloat16 channels-last contiguous]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "brainseg" / "data" / "demo" / "1000_SS.nii.gz"


def main() -> None:
    """Prepare the scan, run every view both ways and print the figures."""
    from brainseg.families.chen2018 import CHEN2018, MixNetViews
    from brainseg.inference import dense_mixnet
    from brainseg.inference.bfloat16 import bfloat16_available
    from brainseg.io import load_volume
    from brainseg.model_configs import MixNetConfig
    from brainseg.model_folder import load_model_folder
    from brainseg.preprocessing.intensity import IntensityNormalization
    from brainseg.preprocessing.pipeline import prepare_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a mixnet model folder (default: untrained weights)")
    parser.add_argument("--classes", type=int, default=135)
    parser.add_argument("--version", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--image", type=Path, default=DEMO)
    parser.add_argument(
        "--ways", nargs="+", default=["bfloat16", "channels-last", "contiguous"], help="which ways to time"
    )
    args = parser.parse_args()
    if args.model:
        model = load_model_folder(args.model)
        network, cfg, normalization = model.network, model.config.model, model.normalization
    else:
        torch.manual_seed(0)
        cfg = MixNetConfig(num_classes=args.classes, version=args.version)
        network, normalization = CHEN2018.build_network(cfg).eval(), IntensityNormalization()
    assert isinstance(network, MixNetViews)
    prepared = prepare_image(load_volume(args.image), None, normalization)
    inputs = CHEN2018.case_inputs(cfg, prepared.image, prepared.mask, np.eye(4), prepared.background, None)
    print(
        f"threads {torch.get_num_threads()}; MixNetv{cfg.version}, {network.num_classes} classes; brain box "
        f"{inputs.image.shape[1:]} ({int(prepared.mask.sum()):,} brain voxels)"
    )
    print(f"native bfloat16 products on this CPU: {bfloat16_available()}")
    totals, labels = {}, {}
    ways = {"bfloat16": (True, True), "channels-last": (True, False), "contiguous": (False, False)}
    for label, (channels_last, bf16) in ways.items():
        if label not in args.ways:
            continue
        dense_mixnet.CHANNELS_LAST, dense_mixnet.BFLOAT16 = channels_last, bf16
        total, fused = 0.0, None
        for plane in network.planes:
            start = time.perf_counter()
            view = dense_mixnet.view_probabilities(network, inputs, prepared.mask, plane)
            fused = view if fused is None else np.add(fused, view, out=fused)
            del view
            seconds = time.perf_counter() - start
            total += seconds
            print(f"{label:14s} {plane:9s} {seconds:7.1f} s", flush=True)
        totals[label], labels[label] = total, fused.argmax(axis=0)
        del fused
    dense_mixnet.CHANNELS_LAST, dense_mixnet.BFLOAT16 = True, None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    times = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in totals.items())
    print(f"{len(network.planes)} views: {times}; peak RSS {rss:.2f} GB (target <= 60 s)")
    if "bfloat16" in labels and "channels-last" in labels:
        changed = labels["bfloat16"] != labels["channels-last"]
        print(f"bfloat16 against float32, views fused 1:1:1: {changed.mean():.3%} of brain voxels relabelled")


if __name__ == "__main__":
    main()
