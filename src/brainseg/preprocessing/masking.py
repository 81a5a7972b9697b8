"""Brain masks and bounding boxes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["brain_mask", "brain_bounding_box"]


def brain_mask(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The brain mask of a skull-stripped image.

    Parameters
    ----------
    image : ndarray, shape (D, H, W)
        Skull-stripped intensities (background 0).
    mask : ndarray, shape (D, H, W), optional
        A given mask (non-zero = brain); used as is when present.

    Returns
    -------
    ndarray of bool, shape (D, H, W)
        Non-zero voxels with interior holes filled, or ``mask != 0``.

    Raises
    ------
    ValueError
        If ``mask`` is given and its shape differs from the image's.
    """
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
        return np.asarray(mask) != 0
    return ndimage.binary_fill_holes(image != 0)


def brain_bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding every mask voxel, grown by ``margin`` voxels.

    Parameters
    ----------
    mask : ndarray, shape (D, H, W)
        Brain mask (non-zero = brain).
    margin : int
        Voxels added on each side of each axis; the box is clipped to the volume.

    Returns
    -------
    tuple of slice
        One slice per axis, ``(D, H, W)`` order, usable as ``image[box]``.

    Raises
    ------
    ValueError
        If the mask is empty.
    """
    if not mask.any():
        raise ValueError("the brain mask is empty")
    (found,) = ndimage.find_objects(np.asarray(mask, np.uint8))
    return tuple(slice(max(f.start - margin, 0), min(f.stop + margin, n)) for f, n in zip(found, mask.shape))
