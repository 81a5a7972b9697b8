"""Benchmark the registration to the default model's template: time and accuracy, against the old pyramid.

For each MICCAI 2012 subject asked for (default: the 10 training subjects the template was built
from), registers the prepared scan to the shipped default model's template as ``brainseg segment``
does (:func:`brainseg.preprocessing.registration.register_affine`, the current default settings)
and with the previous release's pyramid (4, 2 and 1 mm levels on the full images, 200 iterations at
each, 5 % sampling), and prints each one's wall time, the brain-mask Dice of the resampled scan mask
with the template's brain (voxels that most training brains reached), and the displacement between
the two results at the scan's brain voxels (mean and max, mm). Target (issue H): <= 3 s on 2 cores.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_registration.py [CASE ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MICCAI = ROOT.parent / "shared" / "data" / "miccai2012"
TRAINING = ["1001", "1002", "1006", "1007", "1009", "1010", "1011", "1012", "1014", "1015"]


def old_pyramid(moving, moving_affine, reference, reference_affine) -> np.ndarray:
    """The previous release's registration: levels 4, 2, 1 (smoothing 2, 1, 0 mm) on the full images."""
    from brainseg.preprocessing import registration as reg

    fixed, moving_img = reg._to_sitk(reference, reference_affine), reg._to_sitk(moving, moving_affine)
    starts = reg.initial_transforms(moving, moving_affine, reference, reference_affine)
    coarse = [reg._optimise(fixed, moving_img, s, [4], [2.0], 200, 0.05, 1, gradient_filters=True) for s in starts]
    best, _ = min(coarse, key=lambda c: c[1])
    return reg._optimise(fixed, moving_img, best, [2, 1], [1.0, 0.0], 200, 0.05, 1, gradient_filters=True)[0]


def main() -> None:
    """Register each case both ways and print the figures."""
    import torch

    from brainseg.io import load_volume
    from brainseg.model_folder import load_model_folder
    from brainseg.preprocessing.pipeline import prepare_image
    from brainseg.preprocessing.reference.registered import moving_image
    from brainseg.preprocessing.registration import register_affine, resample_to_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=TRAINING)
    args = parser.parse_args()
    model = load_model_folder()
    reference = model.reference
    template_brain = reference.atlas.values[0] < 128  # most training brains reach these voxels
    print(f"threads: {torch.get_num_threads()}; template {reference.shape}; cases {' '.join(args.cases)}")
    print("case   new s  old s  mask Dice new  old   displacement mean  max (mm)")
    rows = []
    for case in args.cases:
        prepared = prepare_image(load_volume(MICCAI / f"{case}_SS.nii.gz"), None, model.normalization)
        moving, world = moving_image(prepared), prepared.world_affine
        t0 = time.perf_counter()
        new = register_affine(moving, world, reference.template, reference.affine).matrix
        t_new = time.perf_counter() - t0
        t0 = time.perf_counter()
        old = old_pyramid(moving, world, reference.template, reference.affine)
        t_old = time.perf_counter() - t0
        points = np.c_[np.argwhere(prepared.mask)[::53], np.ones(int(np.ceil(prepared.mask.sum() / 53)))] @ world.T
        shift = np.linalg.norm((points @ np.linalg.inv(new).T - points @ np.linalg.inv(old).T)[:, :3], axis=1)
        dice = []
        for matrix in (new, old):
            on_template = resample_to_reference(
                prepared.mask.astype(np.float32),
                np.eye(4),
                np.linalg.inv(world) @ matrix,
                reference.shape,
                reference.affine,
            )
            mask = on_template >= 0.5
            dice.append(2 * (mask & template_brain).sum() / (mask.sum() + template_brain.sum()))
        rows.append((t_new, t_old, *dice, shift.mean(), shift.max()))
        print(f"{case}  {t_new:6.1f} {t_old:6.1f}  {dice[0]:.4f}  {dice[1]:.4f}  {shift.mean():.2f}  {shift.max():.2f}")
    medians = [statistics.median(col) for col in zip(*rows)]
    print("median {:6.1f} {:6.1f}  {:.4f}  {:.4f}  {:.2f}  {:.2f}".format(*medians))


if __name__ == "__main__":
    main()
