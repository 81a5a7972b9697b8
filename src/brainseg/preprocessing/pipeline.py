"""From a loaded scan to what the networks read: 1 mm grid, brain mask, normalised intensities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brainseg.errors import InputError
from brainseg.io.nifti import Volume
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.masking import brain_mask
from brainseg.preprocessing.resampling import needs_resampling, resample_image, resample_label_map

__all__ = ["PreparedImage", "compose_index", "prepare_image", "take_nearest"]


@dataclass(frozen=True)
class PreparedImage:
    """A scan ready for a network.

    Attributes
    ----------
    image : ndarray of float32, shape (D, H, W)
        Normalised intensities on the 1 mm grid, RAS+ order.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the same grid.
    background : float
        Normalised value of an empty voxel (padding value).
    source_spacing : tuple of 3 float
        Voxel size of the canonical input in mm.
    source_mask : ndarray of bool, shape of the canonical input
        Brain mask on the input grid.
    source_affine : ndarray of float64, shape (4, 4), optional
        Voxel -> RAS+ mm of the canonical input (its header's orientation,
        oblique included); None means axis-aligned with the origin at voxel 0.
    channels : tuple of ndarray of float32, each shape (D, H, W)
        The other modalities of a multi-modal model (empty for T1 alone), prepared as ``image``:
        on the same 1 mm grid, each z-scored in the same brain mask (per scan, per modality).
    channel_backgrounds : tuple of float
        The normalised value of intensity 0 of each of ``channels``.
    """

    image: np.ndarray
    mask: np.ndarray
    background: float
    source_spacing: tuple[float, float, float]
    source_mask: np.ndarray
    source_affine: np.ndarray | None = None
    channels: tuple[np.ndarray, ...] = ()
    channel_backgrounds: tuple[float, ...] = ()

    @property
    def network_image(self) -> np.ndarray:
        """What the network reads: ``image`` (D, H, W), or all modalities stacked (M, D, H, W) float32."""
        if not self.channels:
            return self.image
        return np.stack([self.image, *self.channels]).astype(np.float32, copy=False)

    @property
    def network_background(self) -> float | np.ndarray:
        """The padding value of :attr:`network_image`: ``background``, or one per modality (M,) float32."""
        if not self.channels:
            return self.background
        return np.array([self.background, *self.channel_backgrounds], np.float32)

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical input."""
        return self.source_mask.shape  # type: ignore[return-value]

    @property
    def resampled(self) -> bool:
        """Whether the input was resampled to 1 mm."""
        return needs_resampling(self.source_spacing)

    @property
    def world_affine(self) -> np.ndarray:
        """Voxel of the 1 mm grid -> RAS+ mm of the input (4 x 4, float64).

        The 1 mm grid covers the input's field of view (see
        :func:`~brainseg.preprocessing.resampling.resample_image`), so its voxel
        ``i`` lies at input index ``(i + 0.5) / s - 0.5`` along an axis of
        spacing ``s``. Registration starts from this orientation.
        """
        source = np.eye(4) if self.source_affine is None else np.asarray(self.source_affine, float)
        if not self.resampled:
            return source.copy()
        s = np.asarray(self.source_spacing, float)
        to_source = np.eye(4)
        to_source[:3, :3] = np.diag(1.0 / s)
        to_source[:3, 3] = 0.5 / s - 0.5
        return source @ to_source

    def source_index(self) -> np.ndarray | None:
        """For each input voxel, the flat index of its nearest 1 mm voxel (-1 outside the input's brain mask).

        Labels and probabilities come back to the input grid through this one
        map (:func:`take_nearest`), so the probabilities' argmax is the label.

        Returns
        -------
        ndarray of int64, shape ``source_shape``, or None when the input was not resampled.
            Read-only: computed once per image and shared by the labels and the probabilities.
        """
        if not self.resampled:
            return None
        cached = self.__dict__.get("_source_index")
        if cached is not None:
            return cached
        index = np.arange(self.mask.size, dtype=np.int64).reshape(self.mask.shape)
        out = resample_label_map(index, self.source_spacing, self.source_shape)
        out[~self.source_mask] = -1
        out.setflags(write=False)
        self.__dict__["_source_index"] = out  # frozen dataclass: a cache, not a field
        return out

    def to_source_grid(self, label_map: np.ndarray) -> np.ndarray:
        """Bring a label map on the 1 mm grid back onto the canonical input grid.

        Nearest neighbour, confined to the input's brain mask (background
        outside it): nearest-neighbour resampling would otherwise spill labels
        past the brain.

        Parameters
        ----------
        label_map : ndarray of int, shape (D, H, W)
            Labels on the 1 mm grid (the grid of :attr:`image`).

        Returns
        -------
        ndarray, shape ``source_shape``, dtype of ``label_map``
            Label 0 outside ``source_mask``; ``label_map`` itself when the input was not resampled.
        """
        index = self.source_index()
        return label_map if index is None else take_nearest(label_map, index)

    def from_source_grid(self, label_map: np.ndarray) -> np.ndarray:
        """Bring a label map on the input grid onto the 1 mm grid (nearest neighbour).

        Parameters
        ----------
        label_map : ndarray of int, shape ``source_shape``
            Labels on the canonical input grid.

        Returns
        -------
        ndarray, shape (D, H, W), dtype of ``label_map``
            Labels on the 1 mm grid; ``label_map`` itself when the input was not resampled.
        """
        if not self.resampled:
            return label_map
        return resample_image(label_map, self.source_spacing, order=0).astype(label_map.dtype)


def compose_index(outer: np.ndarray | None, inner: np.ndarray | None) -> np.ndarray | None:
    """Chain two nearest-neighbour maps: ``result[v] = inner.flat[outer[v]]`` (-1 stays -1).

    Parameters
    ----------
    outer : ndarray of int, any 3-D shape, or None
        Flat indices into ``inner``'s grid (-1 for background); None is the identity.
    inner : ndarray of int, or None
        Flat indices into the final grid (-1 for background); None is the identity.

    Returns
    -------
    ndarray of int64, shape of ``outer`` (else of ``inner``), or None when both are None

    Examples
    --------
    >>> compose_index(np.array([[[2, -1, 0]]]), np.array([5, -1, 7]))
    array([[[ 7, -1,  5]]])
    """
    if outer is None:
        return inner
    if inner is None:
        return outer
    flat = np.asarray(inner).reshape(-1)
    return np.where(outer >= 0, flat[np.maximum(outer, 0)], -1).astype(np.int64)


def take_nearest(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Gather ``values`` at flat voxel indices; index -1 gives background.

    Parameters
    ----------
    values : ndarray, shape (D, H, W) (a label map) or (C, D, H, W) (probabilities)
        On the grid the indices point into.
    index : ndarray of int, any 3-D shape
        Flat indices into the last three axes of ``values``; -1 for background.

    Returns
    -------
    ndarray, shape ``index.shape`` or ``(C,) + index.shape``, dtype of ``values``
        Background is label 0, or probability 1 for class 0 and 0 for the others.
    """
    inside = index >= 0
    safe = np.where(inside, index, 0)
    if values.ndim == 3:
        return np.where(inside, values.reshape(-1)[safe], 0).astype(values.dtype)
    flat = values.reshape(len(values), -1)
    out = np.zeros((len(values),) + index.shape, values.dtype)
    out[:, inside] = flat[:, safe[inside]]
    out[0, ~inside] = 1
    return out


def prepare_image(
    volume: Volume,
    mask: np.ndarray | None = None,
    normalization: IntensityNormalization | None = None,
    others: Sequence[Volume] = (),
) -> PreparedImage:
    """Resample to 1 mm if needed, find the brain mask and normalise intensities.

    Parameters
    ----------
    volume : Volume
        Skull-stripped T1 image (or a multi-modal model's first modality) from
        :func:`brainseg.io.load_volume`; its non-zero voxels make the default mask.
    mask : ndarray, shape of ``volume.data``, optional
        Brain mask; by default the non-zero voxels (holes filled).
    normalization : IntensityNormalization, optional
        Defaults to a z-score inside the brain mask.
    others : sequence of Volume
        A multi-modal model's other modalities, co-registered with ``volume`` (same voxel grid):
        resampled and normalised as ``volume``, in the same mask (:attr:`PreparedImage.channels`).

    Returns
    -------
    PreparedImage

    Raises
    ------
    InputError
        If one of ``others`` is not on ``volume``'s voxel grid (shape, or affine beyond 1e-3 mm).
    """
    normalization = normalization or IntensityNormalization()
    spacing = volume.spacing
    source_mask = brain_mask(volume.data, mask)
    image, mask = volume.data, source_mask
    if needs_resampling(spacing):
        image = resample_image(image, spacing)
        mask = resample_image(source_mask.astype(np.float32), spacing) >= 0.5
    normalised, background = normalization(image, mask)
    channels, backgrounds = [], []
    for other in others:
        if other.data.shape != volume.data.shape or not np.allclose(other.affine, volume.affine, atol=1e-3):
            raise InputError(
                f"a modality's image is not on the voxel grid of the first image (shape {other.data.shape} vs "
                f"{volume.data.shape}, or another affine); register and resample it onto that grid first"
            )
        data = resample_image(other.data, spacing) if needs_resampling(spacing) else other.data
        channel, channel_background = normalization(np.asarray(data, np.float32), mask)
        channels.append(channel)
        backgrounds.append(float(channel_background))
    return PreparedImage(
        normalised,
        mask,
        background,
        spacing,  # type: ignore[arg-type]
        source_mask,
        np.asarray(volume.affine, float),
        tuple(channels),
        tuple(backgrounds),
    )
