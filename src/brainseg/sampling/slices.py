"""Slices of a volume and MixNet's training sampler: random square crops of whole 2-D slices.

The sampler of :mod:`brainseg.families.chen2018` (Chen and Merhof 2018): a plane, a slice holding brain,
a window over that slice's brain, optionally one augmentation (:mod:`brainseg.sampling.slice_augmentation`).
Planes follow :data:`brainseg.sampling.orthogonal.ORTHOGONAL_PLANES` on the RAS+ working grid ``(D, H, W)``:
a sagittal slice is ``image[x]`` and spans ``(y, z)``, a coronal one ``image[:, y]`` spans ``(x, z)``, an
axial one ``image[:, :, z]`` spans ``(x, y)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import numpy as np

from brainseg.config import TrainingConfig
from brainseg.errors import InputError
from brainseg.sampling.orthogonal import ORTHOGONAL_PLANES
from brainseg.sampling.slice_augmentation import LEFT_RIGHT_AXIS, augment_crop

if TYPE_CHECKING:
    from brainseg.families.chen2018 import MixNetInputs

__all__ = ["PLANE_AXIS", "SliceSampler", "box", "slice_along"]

#: The array axis each plane's slices are taken along (the axis not in :data:`ORTHOGONAL_PLANES`).
PLANE_AXIS: dict[str, int] = {plane: 3 - sum(axes) for plane, axes in ORTHOGONAL_PLANES.items()}


def box(volume: np.ndarray, low: Sequence[int], size: Sequence[int], fill: float | int | bool) -> np.ndarray:
    """``volume[low : low + size]`` (any number of axes), ``fill`` where the box leaves the volume.

    Parameters
    ----------
    volume : ndarray, shape (N_1, ..., N_k)
        Any array (a slice, a volume).
    low : sequence of k int
        Index of the box's first element along each axis, in voxels (pixels); may be negative or beyond the
        array.
    size : sequence of k int
        The box's side along each axis, in voxels (pixels).
    fill : float, int or bool
        Value of the box's elements outside ``volume`` (cast to ``volume``'s dtype).

    Returns
    -------
    ndarray, shape ``size``
        A new array of ``volume``'s dtype.
    """
    low, size = np.asarray(low, np.int64), tuple(int(s) for s in size)
    out = np.full(size, fill, dtype=volume.dtype)
    lo, hi = np.maximum(low, 0), np.minimum(low + size, volume.shape)
    if (hi > lo).all():
        out[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, low))] = volume[
            tuple(slice(a, b) for a, b in zip(lo, hi))
        ]
    return out


def slice_along(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a 3-D array (a view; the two other axes in array order).

    Parameters
    ----------
    volume : ndarray, shape (D, H, W)
        The array (any dtype).
    axis : int
        0, 1 or 2 (:data:`PLANE_AXIS` of a plane).
    index : int
        The slice's index along ``axis``.

    Returns
    -------
    ndarray, 2-D
        A view of ``volume``, same dtype: ``(H, W)``, ``(D, W)`` or ``(D, H)`` for axis 0, 1 or 2.
    """
    return volume[(slice(None),) * axis + (int(index),)]


class SliceSampler:
    """Training crops of one case's slices: a plane uniformly, a slice holding brain, a window over its brain.

    Parameters
    ----------
    inputs : MixNetInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    planes : sequence of str
        The views; a draw's ``plane`` indexes them.
    crop : int
        Side of the square crops, in pixels.
    left_right : ndarray of int, shape (C,), optional
        The classes' left-right permutation (:func:`~brainseg.sampling.slice_augmentation.left_right_permutation`
        of the label table) for the augmentation's flips; without it no crop is flipped.
    """

    def __init__(
        self,
        inputs: MixNetInputs,
        classes: np.ndarray,
        mask: np.ndarray,
        planes: Sequence[str],
        crop: int,
        left_right: np.ndarray | None = None,
    ):
        self.inputs, self.planes, self.crop = inputs, tuple(planes), int(crop)
        self.left_right = None if left_right is None else np.asarray(left_right, np.int64)
        inside = inputs.crop(np.asarray(mask, bool), False)
        #: Targets on the crop's grid: the class inside the brain mask, -1 (ignored) elsewhere.
        self.targets = np.where(inside, inputs.crop(np.asarray(classes, np.int16), 0), np.int16(-1))
        self.counts = np.bincount(self.targets[inside].astype(np.int64))
        self.voxels = np.argwhere(inside).astype(np.int32)
        # plane -> (voxel order by slice, slice indices, first voxel of each, voxels in each)
        self._slices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for plane in self.planes:
            order = np.argsort(self.voxels[:, PLANE_AXIS[plane]], kind="stable").astype(np.int32)
            ids, first, count = np.unique(self.voxels[order, PLANE_AXIS[plane]], return_index=True, return_counts=True)
            self._slices[plane] = (order, ids, first, count)

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """The brain's class frequencies ``(num_classes,)`` (``mode`` must be ``'uniform'``).

        Slices are not voxels: the exact expectation of the crops' labelled pixels is not computed, so
        the sampling prior's correction is nil.

        Parameters
        ----------
        num_classes : int
            Length of the result (background included).
        mode : str
            The sampling mode; only ``'uniform'`` is accepted.

        Returns
        -------
        ndarray of float64, shape (num_classes,)
            The classes' shares of the brain mask's voxels; sums to 1.

        Raises
        ------
        InputError
            If ``mode`` is not ``'uniform'``.
        """
        _check_sampling(mode)
        out = np.zeros(num_classes)
        out[: len(self.counts)] = self.counts / self.counts.sum()
        return out

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` crops: ``{'slices': (n, M, crop, crop) float32, 'plane': (n,) int64}``, targets ``(n, crop, crop)`` int16.

        ``M`` is the inputs' number of modalities.

        The plane is drawn uniformly, then a slice among those holding brain voxels, then a brain voxel
        of that slice, and the window is placed so that it holds that voxel at a uniform offset. Pixels
        outside the inputs' crop (the brain's box plus its margin) are the background intensity, as
        at inference; targets are -1 outside the brain mask. With ``tc.augment`` each crop then gets at
        most one transform (:func:`~brainseg.sampling.slice_augmentation.augment_crop`, resampled from
        the whole slice; flips only with :attr:`left_right` and in planes with a left-right axis).

        Parameters
        ----------
        n : int
            Crops to draw.
        rng : numpy.random.Generator
            The random source of the draws and of the augmentation.
        tc : TrainingConfig
            Its ``sampling``, ``augment``, ``augment_scale`` and ``augment_rotation_deg`` are read.

        Returns
        -------
        inputs : dict of str to ndarray
            ``'slices'``: float32 ``(n, M, crop, crop)``, the crops of every modality; ``'plane'``: int64 ``(n,)``,
            each crop's index into :attr:`planes`.
        targets : ndarray of int16, shape (n, crop, crop)
            Class indices, -1 (ignored by the loss) outside the brain mask and beyond the slice.

        Raises
        ------
        InputError
            If ``tc.sampling`` is not ``'uniform'``, or ``tc.augment`` is on and ``tc.augment_scale`` or
            ``tc.augment_rotation_deg`` differs from its default (BaseNet's; MixNet's are constants).
        """
        _check_sampling(tc.sampling)
        if tc.augment:
            _check_augmentation(tc)
        c = self.crop
        which = rng.integers(len(self.planes), size=n)
        slices = np.empty((n, self.inputs.modalities, c, c), np.float32)
        targets = np.empty((n, c, c), np.int16)
        for i, k in enumerate(which):
            plane = self.planes[k]
            order, ids, first, count = self._slices[plane]
            j = rng.integers(len(ids))
            voxel = self.voxels[order[first[j] + rng.integers(count[j])]]
            low = voxel[list(ORTHOGONAL_PLANES[plane])] - rng.integers(c, size=2)
            axis, index = PLANE_AXIS[plane], voxel[PLANE_AXIS[plane]]
            image, target = self.inputs.slice(axis, index), slice_along(self.targets, axis, index)
            if tc.augment:
                slices[i], targets[i], _ = augment_crop(
                    image,
                    target,
                    low,
                    c,
                    self.inputs.background,
                    rng,
                    left_right_axis=LEFT_RIGHT_AXIS[plane],
                    permutation=self.left_right,
                )
                continue
            for m, fill in enumerate(self.inputs.background):
                slices[i, m] = box(image[m], low, (c, c), np.float32(fill))
            targets[i] = box(target, low, (c, c), -1)
        return {"slices": slices, "plane": which.astype(np.int64)}, targets


def _check_sampling(mode: str) -> None:
    if mode != "uniform":
        raise InputError(f"mixnet draws slices uniformly: training.sampling must be 'uniform', got {mode!r}")


def _check_augmentation(tc: TrainingConfig) -> None:
    defaults = {f.name: f.default for f in fields(TrainingConfig)}
    for key in ("augment_scale", "augment_rotation_deg"):
        if getattr(tc, key) != defaults[key]:
            raise InputError(
                f"mixnet's augmentation uses the paper's scales and 45-degree rotations: training.{key} is "
                f"BaseNet's setting; remove it (got {getattr(tc, key)!r})"
            )
