"""Benchmark the dense CRF on a whole 1 mm brain with 135 classes.

Two sources of probabilities:

- ``model`` (default): what ``brainseg segment --crf`` gives the CRF. The shipped default model
  segments a real validation subject (MICCAI 2012, 134 structures + background) and keeps its
  float16 probabilities on its working grid (the reference space, 1 mm) with the registered image;
  they are made once, in a parent process, and cached in a temporary folder.
- ``synthetic``: a worst case. Each class's indicator of the subject's manual label map, blurred
  (1 mm Gaussian), scaled to logits of 4 and disturbed by Gaussian noise (standard deviation 1.5)
  everywhere, background included, then soft-maxed: every voxel is uncertain and every class
  appears everywhere among a voxel's most likely ones. The intensities are the subject's T1,
  z-scored in its brain mask.

Each run is its own process, so its peak RSS is its own (the float16 probabilities included, as
they are in ``brainseg segment``). Prints wall seconds, peak RSS, the CRF's voxels and the fraction
of brain voxels whose label the CRF changed (and, for ``synthetic``, the accuracy against the manual
labels before and after: a sanity check, the noise being synthetic).

With ``--pydensecrf2 CROP`` it also runs pydensecrf2 (if installed) on a central CROP^3 crop of
the same data with the same kernels, and brainseg on the same crop, side by side.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_crf.py [SUBJECT_ID] [--source model|synthetic]
        [--iterations 5] [--top-k 6 0] [--pydensecrf2 96] [--cache DIR]

Data: ../shared/data/miccai2012/{ID}_SS.nii.gz, _glm.nii.gz and _mask.nii.gz (default ID 1000, a
validation subject of the shipped models). Target on 2 cores: at most 60 s and 4 GB for 5 iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "miccai2012"


def make_model_problem(subject: str, folder: Path) -> None:
    """The default model's float16 probabilities ``(C, D, H, W)`` on its working grid, the registered image, spacing."""
    from brainseg.inference.predictor import Predictor
    from brainseg.io.nifti import load_volume, voxel_spacing
    from brainseg.model_folder import load_model_folder
    from brainseg.preprocessing.pipeline import prepare_image

    model = load_model_folder(None)
    image = load_volume(DATA / f"{subject}_SS.nii.gz")
    mask = load_volume(DATA / f"{subject}_mask.nii.gz", kind="mask").data
    prepared = prepare_image(image, mask, model.normalization)
    _, probs, registered = Predictor(model).segment_prepared(prepared, probabilities=True)
    if registered is None:
        working, spacing, inside = prepared.image, (1.0, 1.0, 1.0), prepared.mask
    else:
        working, spacing, inside = registered.image, voxel_spacing(registered.reference_affine), registered.mask
    np.save(folder / "probabilities.npy", probs)
    np.save(folder / "image.npy", working.astype(np.float32))
    np.save(folder / "mask.npy", inside)
    (folder / "spacing.json").write_text(json.dumps(list(spacing)))


def make_synthetic_problem(subject: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _crop(crop: int, mask: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    centre = [int(np.mean(i)) for i in np.nonzero(mask)]
    box = tuple(slice(max(0, c - crop // 2), max(0, c - crop // 2) + crop) for c in centre)
    return [a[(slice(None),) + box] if a.ndim == 4 else a[box] for a in arrays]


def run_one(args: argparse.Namespace, engine: str, top_k: int, crop: int) -> None:
    """Child process: one CRF run; prints its figures as JSON."""
    truth = None
    if args.source == "model":
        folder = Path(args.cache)
        # a crop reads its part of the file only (its peak RSS then is the crop's)
        probs = np.load(folder / "probabilities.npy", mmap_mode="r" if crop else None)
        image, mask = np.load(folder / "image.npy"), np.load(folder / "mask.npy")
        spacing = tuple(json.loads((folder / "spacing.json").read_text()))
    else:
        probs, image, truth = make_synthetic_problem(args.subject)
        mask, spacing = truth > 0, (1.0, 1.0, 1.0)
    if crop:
        probs, image, mask, *rest = _crop(crop, mask, probs, image, mask, *([truth] if truth is not None else []))
        truth = rest[0] if rest else None
        probs = np.ascontiguousarray(probs)
    before = np.stack([probs[:, z].argmax(0) for z in range(probs.shape[1])])  # argmax(0) would copy probs
    t0 = time.perf_counter()
    if engine == "brainseg":
        from brainseg.postprocessing.dense_crf import CRFParameters, dense_crf

        params = CRFParameters(iterations=args.iterations, top_k=top_k)
        after, _ = dense_crf(probs, image, spacing, params)
    else:
        import pydensecrf.densecrf as dcrf  # pydensecrf2 installs this module
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian

        from brainseg.postprocessing.dense_crf import CRFParameters

        params = CRFParameters(iterations=args.iterations)
        num_classes = probs.shape[0]
        crf = dcrf.DenseCRF(int(np.prod(image.shape)), num_classes)
        unary = -np.log(np.clip(probs.reshape(num_classes, -1).astype(np.float32), 1e-8, None))
        crf.setUnaryEnergy(np.ascontiguousarray(unary))
        sdims = [s / spacing[a] for a, s in enumerate((params.smoothness_sigma_mm,) * 3)]  # voxels
        crf.addPairwiseEnergy(create_pairwise_gaussian(sdims=sdims, shape=image.shape), compat=params.smoothness_weight)
        crf.addPairwiseEnergy(
            create_pairwise_bilateral(
                sdims=[params.position_sigma_mm / spacing[a] for a in range(3)],
                schan=(params.intensity_sigma,),
                img=image[..., None],
                chdim=3,
            ),
            compat=params.appearance_weight,
        )
        after = np.argmax(np.array(crf.inference(args.iterations)), axis=0).reshape(image.shape)
    wall = time.perf_counter() - t0
    # this process's own high-water mark (ru_maxrss would start from the parent's, which made the probabilities)
    status = Path("/proc/self/status")
    if status.is_file():
        hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        peak = int(hwm.split()[1]) / 1024**2
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = {
        "wall_s": wall,
        "peak_rss_gb": peak,
        "voxels": int(np.prod(image.shape)),
        "classes": int(probs.shape[0]),
        "changed": float((after != before)[mask].mean()),
    }
    if truth is not None:
        out["accuracy_before"] = float((before == truth).mean())
        out["accuracy_after"] = float((after == truth).mean())
    print(json.dumps(out))


def main() -> None:
    """Run each setting in a child process and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", nargs="?", default="1000")
    parser.add_argument("--source", choices=("model", "synthetic"), default="model")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--top-k", type=int, nargs="+", default=[6])
    parser.add_argument("--pydensecrf2", type=int, default=0, metavar="CROP", help="also pydensecrf2 on a CROP^3 crop")
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="keep the model's probabilities in DIR and reuse them when there (default: a temp dir)",
    )
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        engine, top_k, crop = args.one
        run_one(args, engine, int(top_k), int(crop))
        return
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"dense CRF, MICCAI 2012 subject {args.subject}, {args.source} probabilities, {args.iterations} iterations")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, load {os.getloadavg()[0]:.2f}")
    keep = args.cache is not None
    cache = args.cache or tempfile.mkdtemp(prefix="bench_crf_")
    try:
        if args.source == "model" and not (Path(cache) / "spacing.json").is_file():
            Path(cache).mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            make_model_problem(args.subject, Path(cache))
            print(
                f"default model's probabilities on its working grid: {time.perf_counter() - t0:.0f} s (not timed below)"
            )
        print(
            f"{'engine':>11} {'region':>12} {'top_k':>6} {'voxels':>10} {'wall s':>7} {'peak GB':>8} {'changed':>8} "
            f"{'acc before':>10} {'acc after':>9}"
        )
        runs = [("brainseg", k, 0) for k in args.top_k]
        if args.pydensecrf2:
            crop = args.pydensecrf2
            runs += [("brainseg", k, crop) for k in sorted(set(args.top_k) | {0}, reverse=True)]
            runs += [("pydensecrf2", 0, crop)]
        for engine, k, crop in runs:
            cmd = [
                sys.executable,
                __file__,
                args.subject,
                "--source",
                args.source,
                "--iterations",
                str(args.iterations),
            ]
            done = subprocess.run(
                [*cmd, "--cache", cache, "--one", engine, str(k), str(crop)], capture_output=True, text=True
            )
            if done.returncode != 0:
                err = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
                print(f"{engine:>11}: failed ({err})")
                continue
            r = json.loads(done.stdout.splitlines()[-1])
            region = f"crop {crop}^3" if crop else "whole"
            acc = [f"{r[k]:.3f}" if k in r else "n/a" for k in ("accuracy_before", "accuracy_after")]
            print(
                f"{engine:>11} {region:>12} {k or 'all':>6} {r['voxels']:>10,} {r['wall_s']:>7.1f} "
                f"{r['peak_rss_gb']:>8.2f} {r['changed']:>8.4f} {acc[0]:>10} {acc[1]:>9}"
            )
    finally:
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    print("changed: fraction of brain voxels whose label the CRF changed")
    print("targets (issue G): whole 1 mm brain, 135 classes, 5 iterations: <= 60 s, <= 4 GB on 2 cores")


if __name__ == "__main__":
    main()
