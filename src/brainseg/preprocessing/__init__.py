"""Preparing images for the networks: brain mask, 1 mm resampling, intensity normalisation."""

from brainseg.preprocessing.intensity import IntensityNormalization, zscore_in_mask
from brainseg.preprocessing.masking import brain_bounding_box, brain_mask
from brainseg.preprocessing.resampling import needs_resampling, resample_image, resample_label_map

__all__ = [
    "IntensityNormalization",
    "brain_bounding_box",
    "brain_mask",
    "needs_resampling",
    "resample_image",
    "resample_label_map",
    "zscore_in_mask",
]
