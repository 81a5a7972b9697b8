"""Multi-scale 2-D patch extraction for slice-based patch networks.

Every array here is a volume in the canonical RAS+ axis order ``(D, H, W)``
(see :mod:`brainseg.io.nifti`). A *plane* names the slices the 2-D patches lie
in; the slice axis is moved first, giving ``(S, A, B)`` stacks.

The scale-``s`` patch of voxel ``(i, a, b)`` has ``P x P`` samples, ``P = 2 h + 1``
(25 for Ganaye et al., ``h = 12``; de Brébisson and Montana's orthogonal and
compressed patches are ``h = 14`` at scales 1 and 3); sample ``(k, l)`` is the
mean of the ``s x s`` in-plane voxels starting at
``(a + s (k - h) - c, b + s (l - h) - c)`` with ``c = (s - 1) // 2``.
Patch-by-patch extraction and dense inference read the same precomputed
box-averaged stacks, which is what makes both agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Plane", "PLANE_AXIS", "MultiScaleStack", "build_stack", "extract_patches", "plane_to_volume_indices"]

Plane = Literal["sagittal", "coronal", "axial"]
#: Array axis (RAS+ order) that is constant within a slice of each plane.
PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

HALF = 12  # default patch half-width in samples (25 = 2 * 12 + 1)


@dataclass(frozen=True)
class MultiScaleStack:
    """Box-averaged, padded slice stacks of one image, one per scale.

    Attributes
    ----------
    stacks : tuple of ndarray of float32, each shape (S, A + 2M - s + 1, B + 2M - s + 1)
        ``stacks[j][i, y, x]`` is the mean of the padded slice ``i`` over
        ``[y, y + s) x [x, x + s)`` for scale ``s = scales[j]``.
    scales : tuple of int
        Scale factors.
    margin : int
        Padding ``M`` added on both sides of both in-plane axes, in voxels.
    plane : str
        Plane of the slices.
    shape : tuple of 3 int
        Shape ``(S, A, B)`` of the unpadded stack.
    half : int
        Patch half-width ``h`` in samples: patches are ``2 h + 1`` samples wide.
    """

    stacks: tuple[np.ndarray, ...]
    scales: tuple[int, ...]
    margin: int
    plane: str
    shape: tuple[int, int, int]
    half: int = HALF


def to_plane(volume: np.ndarray, plane: str) -> np.ndarray:
    """Move the slice axis of ``plane`` first: ``(D, H, W)`` -> ``(S, A, B)`` (a view).

    Parameters
    ----------
    volume : ndarray, shape (D, H, W, ...)
        Any array whose first three axes are RAS+ (later axes are left in place).
    plane : {'sagittal', 'coronal', 'axial'}
        Its slice axis (:data:`PLANE_AXIS`) is moved first.

    Returns
    -------
    ndarray, shape (S, A, B, ...)
        A view of ``volume``, same dtype.

    Raises
    ------
    ValueError
        If ``plane`` is not one of the three planes.
    """
    if plane not in PLANE_AXIS:
        raise ValueError(f"plane must be one of {sorted(PLANE_AXIS)}, got {plane!r}")
    return np.moveaxis(volume, PLANE_AXIS[plane], 0)


def from_plane(stack: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_plane` for arrays whose last three axes are ``(S, A, B)``.

    Parameters
    ----------
    stack : ndarray, shape (..., S, A, B)
        Leading axes (e.g. channels) are kept in place.
    plane : {'sagittal', 'coronal', 'axial'}
        The plane ``stack``'s slices lie in.

    Returns
    -------
    ndarray, shape (..., D, H, W)
        A view of ``stack`` in RAS+ order, same dtype.
    """
    return np.moveaxis(stack, -3, -3 + PLANE_AXIS[plane])


def build_stack(
    image: np.ndarray, plane: str, scales: Sequence[int], background: float, half: int = HALF
) -> MultiScaleStack:
    """Precompute the box-averaged padded stacks of a normalised image.

    Parameters
    ----------
    image : ndarray of float32, shape (D, H, W)
        Normalised intensities in RAS+ order.
    plane : {'sagittal', 'coronal', 'axial'}
        Plane of the 2-D patches.
    scales : sequence of int
        Scale factors (>= 1).
    background : float
        Value used for padding (the normalised intensity of an empty voxel).
    half : int
        Patch half-width in samples (``2 half + 1`` wide patches).

    Returns
    -------
    MultiScaleStack

    Raises
    ------
    ValueError
        If ``image`` is not 3-D, a scale is < 1 or ``half`` < 1.
    """
    if half < 1:
        raise ValueError(f"half must be >= 1, got {half}")
    if image.ndim != 3:
        raise ValueError(f"image must be 3-D, got shape {image.shape}")
    scales = tuple(int(s) for s in scales)
    if min(scales) < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    margin = (half + 1) * max(scales)
    slices = np.ascontiguousarray(to_plane(image, plane), dtype=np.float32)
    padded = np.pad(slices, ((0, 0), (margin, margin), (margin, margin)), constant_values=background)
    tensor = torch.from_numpy(padded)[:, None]
    stacks = []
    for s in scales:
        boxed = tensor if s == 1 else F.avg_pool2d(tensor, s, stride=1)
        stacks.append(np.ascontiguousarray(boxed[:, 0].numpy()))
    shape = tuple(slices.shape)
    return MultiScaleStack(tuple(stacks), scales, margin, plane, shape, int(half))  # type: ignore[arg-type]


def patch_origin(scale: int, half: int = HALF) -> int:
    """Offset from a voxel to its scale-``scale`` patch's first sample, in voxels.

    Parameters
    ----------
    scale : int
        Scale factor ``s`` (>= 1).
    half : int
        Patch half-width ``h`` in samples.

    Returns
    -------
    int
        ``-s h - (s - 1) // 2``: the first in-plane voxel of the first sample's ``s x s`` block, relative to the
        centre voxel (the same along both in-plane axes).
    """
    return -scale * half - (scale - 1) // 2


def extract_patches(stack: MultiScaleStack, indices: np.ndarray) -> np.ndarray:
    """Gather the multi-scale patches centred on voxels.

    Parameters
    ----------
    stack : MultiScaleStack
        From :func:`build_stack`.
    indices : ndarray of int, shape (N, 3)
        Voxel indices ``(i, a, b)`` in the plane's ``(S, A, B)`` order.

    Returns
    -------
    ndarray of float32, shape (N, len(scales), P, P)
        ``P = 2 stack.half + 1`` (25 by default).

    Raises
    ------
    ValueError
        If an index lies outside the volume.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    if indices.size and ((indices < 0).any() or (indices >= np.array(stack.shape)).any()):
        raise ValueError(f"voxel indices outside the volume of shape {stack.shape}")
    width = 2 * stack.half + 1
    steps = np.arange(width)
    out = np.empty((len(indices), len(stack.scales), width, width), np.float32)
    for j, (s, boxed) in enumerate(zip(stack.scales, stack.stacks)):
        start = stack.margin + patch_origin(s, stack.half)
        rows = indices[:, 1, None] + start + s * steps  # (N, P)
        cols = indices[:, 2, None] + start + s * steps
        out[:, j] = boxed[indices[:, 0, None, None], rows[:, :, None], cols[:, None, :]]
    return out


def plane_to_volume_indices(indices: np.ndarray, plane: str) -> np.ndarray:
    """Convert voxel indices ``(i, a, b)`` in a plane's ``(S, A, B)`` order to RAS+ ``(d, h, w)`` order.

    Parameters
    ----------
    indices : ndarray of int, shape (N, 3)
    plane : {'sagittal', 'coronal', 'axial'}

    Returns
    -------
    ndarray of int64, shape (N, 3)

    Examples
    --------
    >>> plane_to_volume_indices(np.array([[1, 2, 3]]), "coronal").tolist()
    [[2, 1, 3]]
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    axis = PLANE_AXIS[plane]
    order = [1, 2]
    order.insert(axis, 0)
    return np.ascontiguousarray(indices[:, order])
