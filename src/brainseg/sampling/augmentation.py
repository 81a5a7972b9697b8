"""Augmentation of the largest 2-D patch: random rescaling and in-plane rotation (Ganaye et al. 2018, section 3.3).

The scale-``s`` patch of the largest scale is resampled with bilinear
interpolation (:func:`scipy.ndimage.map_coordinates`) from the same
box-averaged stack the plain patches come from, on a 25 x 25 grid of samples
``s`` voxels apart, rotated by an angle drawn in ``[-rotation_deg,
rotation_deg]`` and scaled by a factor drawn in ``scale_range`` about the
patch centre. With factor 1 and angle 0 the result equals the plain patch
exactly (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from brainseg.sampling.patches import HALF, MultiScaleStack, patch_origin

__all__ = ["augment_largest_patch", "resample_patches"]


def resample_patches(
    stack: MultiScaleStack, indices: np.ndarray, scale_index: int, factors: np.ndarray, angles_deg: np.ndarray
) -> np.ndarray:
    """Patches of one scale, rotated and rescaled about their centres.

    Parameters
    ----------
    stack : MultiScaleStack
        Patch source.
    indices : ndarray of int, shape (N, 3)
        Voxels in the plane's ``(S, A, B)`` order.
    scale_index : int
        Which of ``stack.scales`` to resample.
    factors : ndarray of float, shape (N,)
        Scale factors (> 1 zooms out: the patch covers more tissue).
    angles_deg : ndarray of float, shape (N,)
        In-plane rotations in degrees.

    Returns
    -------
    ndarray of float32, shape (N, 25, 25)
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    s = stack.scales[scale_index]
    boxed = stack.stacks[scale_index]
    centre = stack.margin + patch_origin(s) + s * HALF  # offset from a voxel to its patch centre in ``boxed``
    steps = s * (np.arange(2 * HALF + 1) - HALF).astype(np.float64)
    ky, kx = np.meshgrid(steps, steps, indexing="ij")  # (25, 25)
    theta = np.radians(np.asarray(angles_deg, float))[:, None, None]
    f = np.asarray(factors, float)[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    rows = indices[:, 1, None, None] + centre + f * (cos * ky - sin * kx)
    cols = indices[:, 2, None, None] + centre + f * (sin * ky + cos * kx)
    slices = np.broadcast_to(indices[:, 0, None, None], rows.shape).astype(np.float64)
    coords = np.stack([slices, rows, cols])
    return ndimage.map_coordinates(boxed, coords, order=1, mode="nearest").astype(np.float32)


def augment_largest_patch(
    stack: MultiScaleStack,
    indices: np.ndarray,
    patches: np.ndarray,
    rng: np.random.Generator,
    scale_range: Sequence[float] = (0.9, 1.1),
    rotation_deg: float = 10.0,
) -> np.ndarray:
    """Replace the largest-scale patch of each sample by a randomly rotated and rescaled one.

    Parameters
    ----------
    stack : MultiScaleStack
        The patches' source.
    indices : ndarray of int, shape (N, 3)
        Voxels in the plane's ``(S, A, B)`` order.
    patches : ndarray of float32, shape (N, S, 25, 25)
        From :func:`brainseg.sampling.patches.extract_patches`; modified in place.
    rng : numpy.random.Generator
        Draws one factor in ``scale_range`` and one angle in
        ``[-rotation_deg, rotation_deg]`` per sample (uniform).
    scale_range : sequence of 2 float
        Scale factor range (paper: 0.9-1.1).
    rotation_deg : float
        Rotation range in degrees (paper: 10).

    Returns
    -------
    ndarray of float32, shape (N, S, 25, 25)
        ``patches``.
    """
    n = len(indices)
    j = int(np.argmax(stack.scales))
    factors = rng.uniform(scale_range[0], scale_range[1], n)
    angles = rng.uniform(-rotation_deg, rotation_deg, n)
    patches[:, j] = resample_patches(stack, indices, j, factors, angles)
    return patches
