"""Building the reference space from labelled subjects: an iterated mean template and its atlas.

Ganaye et al. (2018, section 3.1) register every image affinely to a reference
before computing spatial priors, so that a landmark grid and a probabilistic
atlas mean the same anatomy in every scan. ``brainseg atlas build`` builds
that reference from the training subjects:

1. every atlas case (prepared as for the network: 1 mm, z-scored in the brain)
   is registered affinely to the first one, and the registered images are
   averaged into a first template;
2. every atlas case is registered again, now to the current template, and
   averaged again (``iterations`` times in all), so the template no longer
   carries the first subject's shape alone;
3. **every case** of the manifest, atlas cases included, is registered to the
   final template, exactly as a new scan is at inference time; the atlas is
   built from the atlas cases' label maps through those same transforms, and
   the transforms are stored;
4. each template's grid is the union of the atlas cases' brain masks as
   registered in that pass, plus a margin (15 mm by default) on every side,
   in the first subject's mm frame (its origin can be negative), so no brain
   is clipped.

Deviations from the paper
-------------------------
- The paper registers to an existing reference atlas with FSL FLIRT; brainseg
  builds its template from the training subjects (iterated affine mean, no
  correction of the mean transform, so the template keeps roughly the first
  subject's position and size) and registers with SimpleITK, which installs
  from wheels everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.preprocessing.pipeline import PreparedImage
from brainseg.preprocessing.reference.folder import Reference
from brainseg.preprocessing.reference.registered import moving_image, register_prepared
from brainseg.preprocessing.registration import resample_to_reference

__all__ = ["build_reference", "union_grid"]


def union_grid(
    masks: Sequence[np.ndarray], matrices: Sequence[np.ndarray], margin_mm: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The 1 mm grid that holds every registered brain mask plus a margin.

    Parameters
    ----------
    masks : sequence of ndarray of bool, shape (D_i, H_i, W_i)
        Brain masks on each case's 1 mm grid (voxel index = mm).
    matrices : sequence of ndarray, shape (4, 4)
        Per case, target mm -> the case's 1 mm-grid mm.
    margin_mm : float
        Added on every side, mm.

    Returns
    -------
    shape : tuple of 3 int
    affine : ndarray of float64, shape (4, 4)
        Voxel -> target mm: 1 mm voxels, axis-aligned, voxel 0 at the lower corner.

    Raises
    ------
    ValueError
        If no mask has a voxel.
    """
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for mask, matrix in zip(masks, matrices):
        surface = np.argwhere(mask & ~ndimage.binary_erosion(mask)).astype(np.float64)
        if not len(surface):
            continue
        inverse = np.linalg.inv(matrix)  # case mm -> target mm
        points = surface @ inverse[:3, :3].T + inverse[:3, 3]
        lo, hi = np.minimum(lo, points.min(axis=0)), np.maximum(hi, points.max(axis=0))
    if not np.all(np.isfinite(lo)):
        raise ValueError("no brain voxel in any mask: cannot place a template grid")
    lo = np.floor(lo - margin_mm)
    shape = tuple(int(n) for n in np.ceil(hi + margin_mm) - lo + 1)
    affine = np.eye(4)
    affine[:3, 3] = lo
    return shape, affine  # type: ignore[return-value]


def _mean_template(prepared: Sequence[PreparedImage], matrices, margin_mm: float):
    shape, affine = union_grid([p.mask for p in prepared], matrices, margin_mm)
    total = np.zeros(shape, np.float32)
    for p, matrix in zip(prepared, matrices):
        total += resample_to_reference(moving_image(p), np.eye(4), matrix, shape, affine)
    return total / len(prepared), affine


def build_reference(
    cases: Sequence[tuple[str, PreparedImage, np.ndarray | None]],
    num_classes: int,
    *,
    sigma_mm: float = 1.0,
    floor: float = 1e-4,
    margin_mm: int = 15,
    iterations: int = 2,
    progress: bool = False,
) -> Reference:
    """Build a template and atlas from labelled subjects, and register every case to it.

    Parameters
    ----------
    cases : sequence of (case_id, PreparedImage, class map or None)
        Prepared scans on their 1 mm grids; those with a class map (uint8,
        shape of ``prepared.mask``) build the template and the atlas, the
        others are only registered (their transforms are stored).
    num_classes : int
        Classes of the atlas, background included.
    sigma_mm, floor : float
        Atlas smoothing and floor (see :class:`ProbabilisticAtlas`).
    margin_mm : int
        Template grid margin around the union of the registered brain masks, mm.
    iterations : int
        Template averaging passes (>= 1): the first registers to the first
        atlas case, each later one to the previous mean.
    progress : bool
        Show progress bars.

    Returns
    -------
    Reference
        With a transform (template mm -> case 1 mm-grid mm) for every case.

    Raises
    ------
    ValueError
        If no case has a class map, or ``iterations`` < 1.
    """
    labelled = [c for c in cases if c[2] is not None]
    if not labelled:
        raise ValueError("building a reference needs at least one case with a label map")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    first = labelled[0][1]
    target, target_affine = moving_image(first), np.eye(4)
    for iteration in range(iterations):
        matrices = [
            np.eye(4) if iteration == 0 and prepared is first else register_prepared(prepared, target, target_affine)
            for _, prepared, _ in tqdm(
                labelled, desc=f"template {iteration + 1}/{iterations}", disable=not progress, leave=False
            )
        ]
        target, target_affine = _mean_template([c[1] for c in labelled], matrices, margin_mm)
    transforms = {
        case_id: register_prepared(prepared, target, target_affine)
        for case_id, prepared, _ in tqdm(cases, desc="register", disable=not progress, leave=False)
    }
    template, affine, shape = target, target_affine, target.shape
    atlas_maps = [
        resample_to_reference(classes, np.eye(4), transforms[case_id], shape, affine, order=0)
        for case_id, _, classes in labelled
    ]
    atlas = ProbabilisticAtlas.build(atlas_maps, num_classes, sigma_mm=sigma_mm, floor=floor)
    info = {
        "template_cases": [c[0] for c in labelled],
        "template_iterations": iterations,
        "registered_to": "final template (every case, atlas cases included)",
        "atlas_sigma_mm": sigma_mm,
        "atlas_floor": floor,
        "margin_mm": margin_mm,
        "shape": list(shape),
        "origin_mm": affine[:3, 3].tolist(),
    }
    return Reference(template.astype(np.float32), affine, atlas, transforms, info)
