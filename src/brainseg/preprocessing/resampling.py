"""Resampling between an input grid and the 1 mm isotropic grid the networks work on."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "anti_aliasing_sigma",
    "needs_resampling",
    "isotropic_shape",
    "resample_from_isotropic",
    "resample_image",
    "resample_label_map",
]

TOLERANCE_MM = 1e-3


def needs_resampling(spacing: tuple[float, ...], target_mm: float = 1.0) -> bool:
    """Whether any voxel size differs from ``target_mm`` by more than 1 um.

    Parameters
    ----------
    spacing : tuple of float
        Voxel size per axis, mm.
    target_mm : float
        Voxel size of the isotropic grid, mm.

    Returns
    -------
    bool
    """
    return any(abs(s - target_mm) > TOLERANCE_MM for s in spacing)


def isotropic_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target_mm: float = 1.0) -> tuple[int, ...]:
    """Shape of the ``target_mm`` grid covering the same field of view.

    Parameters
    ----------
    shape : tuple of int
        Shape of the input grid, voxels.
    spacing : tuple of float
        Voxel size of the input grid per axis, mm.
    target_mm : float
        Voxel size of the isotropic grid, mm.

    Returns
    -------
    tuple of int
        ``round(n * s / target_mm)`` voxels per axis, at least 1.
    """
    return tuple(max(int(round(n * s / target_mm)), 1) for n, s in zip(shape, spacing))


def _zoom_matrix(src_shape, src_spacing, dst_shape, dst_spacing):
    # Maps a destination index to a source index so that the two grids' field-of-view
    # corners coincide (voxel centres at (i + 0.5) * spacing from the corner).
    scale = np.array(dst_spacing, float) / np.array(src_spacing, float)
    offset = 0.5 * scale - 0.5
    return scale, offset


def resample_image(
    image: np.ndarray, spacing: tuple[float, ...], target_mm: float = 1.0, *, order: int = 1
) -> np.ndarray:
    """Resample an image to isotropic ``target_mm`` voxels (linear by default).

    Axes finer than ``target_mm`` are first smoothed (:func:`anti_aliasing_sigma`)
    unless ``order`` is 0 (label maps keep their values).

    Parameters
    ----------
    image : ndarray of float, shape (D, H, W)
        Image on a grid of voxel size ``spacing`` (mm, array-axis order).
    spacing : tuple of 3 float
        Voxel size in mm.
    target_mm : float
        Output voxel size in mm.
    order : int
        Spline order (0 nearest, 1 linear).

    Returns
    -------
    ndarray of float32, shape ``isotropic_shape(image.shape, spacing)``
    """
    dst_shape = isotropic_shape(image.shape, spacing, target_mm)
    scale, offset = _zoom_matrix(image.shape, spacing, dst_shape, (target_mm,) * 3)
    image = image.astype(np.float32)
    sigma = anti_aliasing_sigma(spacing, target_mm) if order > 0 else (0.0,) * image.ndim
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    return ndimage.affine_transform(image, scale, offset, output_shape=dst_shape, order=order, mode="nearest")


def anti_aliasing_sigma(spacing: tuple[float, ...], target_mm: float = 1.0) -> tuple[float, ...]:
    """Gaussian sigma, in input voxels per axis, applied before downsampling to ``target_mm``.

    Axes whose voxels are smaller than ``target_mm`` are smoothed with
    ``sigma = (factor - 1) / 2`` input voxels, ``factor = target_mm / spacing``
    (the rule of :func:`skimage.transform.resize`'s anti-aliasing), so detail
    finer than the new grid can hold does not alias into it; other axes get 0.

    Parameters
    ----------
    spacing : tuple of float
        Voxel size of the input grid per axis, mm.
    target_mm : float
        Voxel size of the isotropic grid, mm.

    Returns
    -------
    tuple of float
        One sigma per axis, in input voxels.

    Examples
    --------
    >>> anti_aliasing_sigma((0.5, 1.0, 2.0))
    (0.5, 0.0, 0.0)
    """
    return tuple(max(0.0, (target_mm / float(s) - 1.0) / 2.0) for s in spacing)


def resample_label_map(
    label_map: np.ndarray, spacing: tuple[float, ...], shape: tuple[int, ...], target_mm: float = 1.0
) -> np.ndarray:
    """Bring a label map from the ``target_mm`` grid back to a grid of ``spacing`` and ``shape``.

    Nearest-neighbour interpolation; labels stay integer.

    Parameters
    ----------
    label_map : ndarray of int, shape (D', H', W')
        Labels on the isotropic grid made by :func:`resample_image`.
    spacing : tuple of 3 float
        Voxel size of the target grid, mm.
    shape : tuple of 3 int
        Shape of the target grid.
    target_mm : float
        Voxel size of the isotropic grid, mm.

    Returns
    -------
    ndarray, same dtype as ``label_map``, shape ``shape``
    """
    return resample_from_isotropic(label_map, spacing, shape, target_mm, order=0)


def resample_from_isotropic(
    volume: np.ndarray, spacing: tuple[float, ...], shape: tuple[int, ...], target_mm: float = 1.0, *, order: int = 1
) -> np.ndarray:
    """Bring a volume from the ``target_mm`` grid back to a grid of ``spacing`` and ``shape``.

    The inverse of :func:`resample_image`: both grids cover the same field of view.

    Parameters
    ----------
    volume : ndarray, shape (D', H', W')
        Values on the isotropic grid (an image, a probability map, or labels with ``order=0``).
    spacing : tuple of 3 float
        Voxel size of the target grid, mm.
    shape : tuple of 3 int
        Shape of the target grid.
    target_mm : float
        Voxel size of the isotropic grid, mm.
    order : int
        Spline order (0 nearest, 1 linear).

    Returns
    -------
    ndarray, same dtype as ``volume``, shape ``shape``
    """
    scale, offset = _zoom_matrix(volume.shape, (target_mm,) * 3, shape, spacing)
    return ndimage.affine_transform(volume, scale, offset, output_shape=tuple(shape), order=order, mode="nearest")
