"""From a loaded scan to what the networks read: 1 mm grid, brain mask, normalised intensities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainseg.io.nifti import Volume
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.masking import brain_mask
from brainseg.preprocessing.resampling import (
    needs_resampling,
    resample_from_isotropic,
    resample_image,
    resample_label_map,
)

__all__ = ["PreparedImage", "prepare_image"]


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
    """

    image: np.ndarray
    mask: np.ndarray
    background: float
    source_spacing: tuple[float, float, float]
    source_mask: np.ndarray

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical input."""
        return self.source_mask.shape  # type: ignore[return-value]

    @property
    def resampled(self) -> bool:
        """Whether the input was resampled to 1 mm."""
        return needs_resampling(self.source_spacing)

    def to_source_grid(self, label_map: np.ndarray) -> np.ndarray:
        """Bring a label map on the 1 mm grid back onto the canonical input grid.

        Nearest-neighbour resampling can spill labels past the brain, so voxels
        outside the input's brain mask are set to background.
        """
        if not self.resampled:
            return label_map
        out = resample_label_map(label_map, self.source_spacing, self.source_shape)
        out[~self.source_mask] = 0
        return out

    def probabilities_to_source_grid(self, probabilities: np.ndarray) -> np.ndarray:
        """Bring class probabilities ``(C, D', H', W')`` on the 1 mm grid onto the input grid (linear)."""
        if not self.resampled:
            return probabilities
        return np.stack(
            [
                resample_from_isotropic(p.astype(np.float32), self.source_spacing, self.source_shape)
                for p in probabilities
            ]
        ).astype(probabilities.dtype)

    def from_source_grid(self, label_map: np.ndarray) -> np.ndarray:
        """Bring a label map on the input grid onto the 1 mm grid (nearest neighbour)."""
        if not self.resampled:
            return label_map
        return resample_image(label_map, self.source_spacing, order=0).astype(label_map.dtype)


def prepare_image(
    volume: Volume, mask: np.ndarray | None = None, normalization: IntensityNormalization | None = None
) -> PreparedImage:
    """Resample to 1 mm if needed, find the brain mask and normalise intensities.

    Parameters
    ----------
    volume : Volume
        Skull-stripped T1 image from :func:`brainseg.io.load_volume`.
    mask : ndarray, shape of ``volume.data``, optional
        Brain mask; by default the non-zero voxels (holes filled).
    normalization : IntensityNormalization, optional
        Defaults to a z-score inside the brain mask.

    Returns
    -------
    PreparedImage
    """
    normalization = normalization or IntensityNormalization()
    spacing = volume.spacing
    source_mask = brain_mask(volume.data, mask)
    image, mask = volume.data, source_mask
    if needs_resampling(spacing):
        image = resample_image(image, spacing)
        mask = resample_image(source_mask.astype(np.float32), spacing) >= 0.5
    normalised, background = normalization(image, mask)
    return PreparedImage(normalised, mask, background, spacing, source_mask)  # type: ignore[arg-type]
