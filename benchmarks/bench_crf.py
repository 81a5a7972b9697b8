"""Benchmark the dense CRF on a whole 1 mm brain with 135 classes.

The probabilities are made from a real subject's manual label map (MICCAI 2012, 134 structures +
background): each class's indicator, blurred (1 mm Gaussian), scaled to logits of 4 and disturbed by
Gaussian noise (standard deviation 1.5), then soft-maxed and stored in float16 as ``brainseg
segment`` holds them. The intensities are the subject's T1, z-scored in its brain mask. Each setting
runs in its own process, so its peak RSS is its own (the float16 probabilities, 1.6 GB for this
subject, included). Prints wall seconds, peak RSS and the fraction of voxels whose label the CRF
changed and the accuracy against the manual labels before and after (a sanity check, not an
evaluation: the noise is synthetic).

With ``--pydensecrf2`` it also runs pydensecrf2 (if installed) on a central crop of the same data
with the same kernels, and prints its figures beside ours on that crop.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_crf.py [SUBJECT_ID] [--iterations 5] [--top-k 6 0]

Data: ../shared/data/miccai2012/{ID}_SS.nii.gz, _glm.nii.gz and _mask.nii.gz (default ID 1000).
Target on 2 cores: at most 60 s and 4 GB for 5 iterations.
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
DATA = ROOT.parent / "shared" / "data" / "miccai2012"


def make_problem(subject: str, crop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float16 probabilities ``(C, D, H, W)``, z-scored image and the manual classes, as the docstring says."""
    import nibabel as nib
    from scipy import ndimage

    from brainseg.labels import LabelTable
    from brainseg.preprocessing.intensity import zscore_in_mask

    image = nib.load(str(DATA / f"{subject}_SS.nii.gz")).get_fdata().astype(np.float32)
    labels = np.asanyarray(nib.load(str(DATA / f"{subject}_glm.nii.gz")).dataobj).astype(np.int32)
    mask = np.asanyarray(nib.load(str(DATA / f"{subject}_mask.nii.gz")).dataobj) > 0
    table = LabelTable.miccai2012()
    classes = table.to_classes(np.where(np.isin(labels, table.labels), labels, 0))
    z, _ = zscore_in_mask(image, mask)
    if crop:
        centre = [int(np.mean(i)) for i in np.nonzero(mask)]
        box = tuple(slice(c - crop // 2, c - crop // 2 + crop) for c in centre)
        z, classes = z[box], classes[box]
    rng = np.random.default_rng(0)
    num_classes = len(table.labels)
    logits = np.empty((num_classes,) + classes.shape, np.float16)
    for c in range(num_classes):
        blurred = ndimage.gaussian_filter((classes == c).astype(np.float32), 1.0)
        logits[c] = 4 * blurred + rng.normal(0, 1.5, classes.shape).astype(np.float32)
    for x in range(classes.shape[0]):  # softmax slice by slice (no float32 copy of the whole)
        s = logits[:, x].astype(np.float32)
        e = np.exp(s - s.max(0))
        logits[:, x] = e / e.sum(0)
    return logits, z, classes


def run_one(subject: str, iterations: int, top_k: int, crop: int | None, engine: str) -> None:
    """Child process: one CRF run; prints its figures as JSON."""
    probs, image, truth = make_problem(subject, crop)
    before = np.stack([probs[:, z].argmax(0) for z in range(probs.shape[1])])  # argmax(0) would copy probs
    t0 = time.perf_counter()
    if engine == "brainseg":
        from brainseg.postprocessing.dense_crf import CRFParameters, dense_crf

        params = CRFParameters(iterations=iterations, top_k=top_k)
        after, _ = dense_crf(probs, image, (1.0, 1.0, 1.0), params)
    else:
        import pydensecrf.densecrf as dcrf  # pydensecrf2 installs this module
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian

        from brainseg.postprocessing.dense_crf import CRFParameters

        params = CRFParameters(iterations=iterations)
        num_classes = probs.shape[0]
        crf = dcrf.DenseCRF(int(np.prod(image.shape)), num_classes)
        unary = -np.log(np.clip(probs.reshape(num_classes, -1).astype(np.float32), 1e-8, None))
        crf.setUnaryEnergy(np.ascontiguousarray(unary))
        crf.addPairwiseEnergy(
            create_pairwise_gaussian(sdims=(params.smoothness_sigma_mm,) * 3, shape=image.shape),
            compat=params.smoothness_weight,
        )
        crf.addPairwiseEnergy(
            create_pairwise_bilateral(
                sdims=(params.position_sigma_mm,) * 3, schan=(params.intensity_sigma,), img=image[..., None], chdim=3
            ),
            compat=params.appearance_weight,
        )
        after = np.argmax(np.array(crf.inference(iterations)), axis=0).reshape(image.shape)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = {
        "wall_s": wall,
        "peak_rss_gb": peak,
        "voxels": int(np.prod(image.shape)),
        "classes": int(probs.shape[0]),
        "changed": float((after != before).mean()),
        "accuracy_before": float((before == truth).mean()),
        "accuracy_after": float((after == truth).mean()),
    }
    print(json.dumps(out))


def main() -> None:
    """Run each setting in a child process and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", nargs="?", default="1000")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--top-k", type=int, nargs="+", default=[6])
    parser.add_argument("--pydensecrf2", type=int, default=0, metavar="CROP", help="also pydensecrf2 on a CROP^3 crop")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        engine, top_k, crop = args.one
        run_one(args.subject, args.iterations, int(top_k), int(crop) or None, engine)
        return
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"dense CRF, MICCAI 2012 subject {args.subject}, {args.iterations} iterations")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, load {os.getloadavg()[0]:.2f}")
    print(
        f"{'engine':>10} {'region':>12} {'top_k':>6} {'voxels':>10} {'wall s':>7} {'peak GB':>8} {'changed':>8} "
        f"{'acc before':>10} {'acc after':>9}"
    )
    runs = [("brainseg", k, 0) for k in args.top_k]
    if args.pydensecrf2:
        runs += [("brainseg", 0, args.pydensecrf2), ("pydensecrf2", 0, args.pydensecrf2)]
    for engine, k, crop in runs:
        cmd = [
            sys.executable,
            __file__,
            args.subject,
            "--iterations",
            str(args.iterations),
            "--one",
            engine,
            str(k),
            str(crop),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(
                f"{engine:>10}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
            )
            continue
        r = json.loads(done.stdout.splitlines()[-1])
        region = f"crop {crop}^3" if crop else "whole"
        print(
            f"{engine:>10} {region:>12} {k or 'all':>6} {r['voxels']:>10,} {r['wall_s']:>7.1f} {r['peak_rss_gb']:>8.2f} "
            f"{r['changed']:>8.3f} {r['accuracy_before']:>10.3f} {r['accuracy_after']:>9.3f}"
        )
    print("targets (issue G): whole 1 mm brain, 135 classes, 5 iterations: <= 60 s, <= 4 GB on 2 cores")


if __name__ == "__main__":
    main()
