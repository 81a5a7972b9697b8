"""Intensity normalisation.

Ganaye et al. (2018, section 3.1) centre and reduce images with a mean and
standard deviation estimated on the training set. Scanner intensities of T1
images have no absolute scale, so brainseg normalises each scan on its own:
a z-score over the voxels of its brain mask (``method='zscore_in_mask'``).
The method and its constants are stored in each model folder
(``normalization.json``) so that inference applies exactly what training did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["IntensityNormalization", "zscore_in_mask"]


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and reduce an image with the mean and std of its masked voxels.

    Parameters
    ----------
    image : ndarray of float, shape (D, H, W)
        Raw intensities.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask; must hold at least two voxels.

    Returns
    -------
    normalised : ndarray of float32, shape (D, H, W)
        ``(image - mean) / std`` everywhere (background included).
    background : float
        The normalised value of intensity 0, used to pad outside the volume.

    Raises
    ------
    ValueError
        If the shapes differ, the mask is (nearly) empty or the masked
        intensities are constant.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} != mask shape {mask.shape}")
    values = image[mask]
    if values.size < 2:
        raise ValueError("the brain mask is empty")
    values = values.astype(np.float64)  # float32 sums of large intensities overflow
    mean, std = float(values.mean()), float(values.std())
    if std <= 0:
        raise ValueError("intensities inside the brain mask are constant")
    return ((image - mean) / std).astype(np.float32), -mean / std


@dataclass(frozen=True)
class IntensityNormalization:
    """How a model's inputs were normalised; stored as ``normalization.json``.

    Attributes
    ----------
    method : str
        Only ``'zscore_in_mask'`` (per-scan z-score inside the brain mask).
    """

    method: str = "zscore_in_mask"

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
        """Apply the normalisation; see :func:`zscore_in_mask`."""
        if self.method != "zscore_in_mask":
            raise ValueError(f"unknown normalisation method {self.method!r}")
        return zscore_in_mask(image, mask)

    def save(self, path: str | Path) -> None:
        """Write as JSON.

        Parameters
        ----------
        path : str or Path
            The file to write (``normalization.json``); overwritten if present.
        """
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> IntensityNormalization:
        """Read from JSON.

        Parameters
        ----------
        path : str or Path
            A file written by :meth:`save`.

        Returns
        -------
        IntensityNormalization
        """
        return cls(**json.loads(Path(path).read_text()))
