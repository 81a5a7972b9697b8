"""Brain extraction for whole-head T1 images, and the test of whether an image is already skull-stripped.

brainseg's networks were trained on skull-stripped images. Most scans are not:
``brainseg segment --skull-strip auto`` (the default) decides per image and,
where skull, scalp or neck are present, segments inside a brain mask from
deepbet.

deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI
using Convolutional Neural Networks", Computers in Biology and Medicine 179,
108845, 2024; MIT licence) ships its two TorchScript networks in its wheel and
runs on the CPU in about 3 s and 1.2 GB for a 256^3 scan. brainseg calls it on
the image array it has already loaded in RAS+ order (deepbet's own input
convention, ``nibabel.as_closest_canonical``), with deepbet's defaults
(threshold 0.5, no dilation).

How ``auto`` decides (:func:`detect_skull_stripped`)
---------------------------------------------------
A skull-stripped image is zero outside the brain. Let the *foreground* be its
non-zero voxels with interior holes filled (the mask brainseg uses for
skull-stripped inputs). The image counts as skull-stripped when

1. at least ``min_zero_fraction`` (5 %) of its voxels are exactly zero (a
   whole-head scan has noise in the air around the head), and
2. at most ``max_outside_fraction`` (10 %) of the foreground volume lies
   outside deepbet's brain mask (a whole-head scan's foreground is the whole
   head: skull, scalp and neck lie outside the brain).

Measured with ``benchmarks/bench_skull_strip.py``: 0.1-1 % on the MICCAI 2012 and
IBSR skull-stripped images, 56 % on the whole-head brainchop scan (see
docs/skull_stripping.md). A skull-stripped image keeps its own stripping (the
shipped models were trained on such masks); otherwise deepbet's mask is applied.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from brainseg.preprocessing.masking import brain_mask

__all__ = [
    "SKULL_STRIP_MODES",
    "BrainExtractor",
    "SkullStripping",
    "detect_skull_stripped",
    "skull_strip",
]

log = logging.getLogger(__name__)

#: Values of ``brainseg segment --skull-strip``.
SKULL_STRIP_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class SkullStripping:
    """What was done to one image, for the log and the volumes CSV header.

    Attributes
    ----------
    mode : str
        The requested mode (``'auto'``, ``'always'`` or ``'never'``).
    extracted : bool
        Whether deepbet's brain mask was applied.
    mask : ndarray of bool, shape (D, H, W)
        The brain mask brainseg segments inside, RAS+ order, on the image's voxels.
    brain_ml : float
        Volume of ``mask`` in ml.
    reason : str
        One sentence: why the image was or was not skull-stripped.
    """

    mode: str
    extracted: bool
    mask: np.ndarray
    brain_ml: float
    reason: str

    def describe(self) -> str:
        """One line for the log and the CSV header.

        Returns
        -------
        str
            The mode, whether deepbet extracted the brain (with its version), the reason and the
            brain-mask volume in ml.
        """
        done = f"brain extracted with deepbet {deepbet_version()}" if self.extracted else "input used as skull-stripped"
        return f"skull-strip {self.mode}: {done} ({self.reason}); brain mask {self.brain_ml:.0f} ml"


def deepbet_version() -> str:
    """Installed deepbet version, or ``'not installed'``.

    Returns
    -------
    str
    """
    try:
        return metadata.version("deepbet")
    except metadata.PackageNotFoundError:
        return "not installed"


class BrainExtractor:
    """deepbet's networks, loaded once and applied to RAS+ arrays.

    Parameters
    ----------
    threshold : float
        Probability above which a voxel is brain (deepbet's default 0.5).

    Raises
    ------
    RuntimeError
        If deepbet is not installed (it is a dependency of brainseg).
    """

    def __init__(self, threshold: float = 0.5) -> None:
        try:
            from deepbet import BrainExtraction
        except ImportError as err:  # pragma: no cover - deepbet is a dependency
            raise RuntimeError("deepbet is not installed: pip install deepbet (it keeps brainseg's torch)") from err
        with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.load, which deepbet's TorchScript needs
            warnings.simplefilter("ignore", DeprecationWarning)
            self._bet = BrainExtraction(no_gpu=True)
        self.threshold = threshold

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Brain mask of a T1 image.

        Parameters
        ----------
        image : ndarray, shape (D, H, W)
            Intensities in RAS+ order (any spacing; deepbet resamples internally).

        Returns
        -------
        ndarray of bool, shape (D, H, W)
            Brain voxels: deepbet's mask, largest connected component, holes filled.
        """
        x = np.ascontiguousarray(image, dtype=np.float32)
        try:
            probability = self._bet.run_model(x.copy())
            mask = self._bet.postprocess(probability > self.threshold)
        except (AssertionError, ValueError, RuntimeError):  # deepbet asserts when it finds no head at all
            return np.zeros(image.shape, bool)
        return np.asarray(mask, bool)


def detect_skull_stripped(
    image: np.ndarray,
    voxel_ml: float,
    extractor: BrainExtractor,
    min_zero_fraction: float = 0.05,
    max_outside_fraction: float = 0.10,
) -> tuple[bool, np.ndarray, np.ndarray | None, str]:
    """Whether an image is already skull-stripped (see the module docstring for the rule).

    Parameters
    ----------
    image : ndarray, shape (D, H, W)
        Intensities in RAS+ order.
    voxel_ml : float
        Volume of one voxel in ml.
    extractor : BrainExtractor
        deepbet, run when the image has a zero background.
    min_zero_fraction, max_outside_fraction : float
        The rule's two thresholds.

    Returns
    -------
    stripped : bool
    foreground : ndarray of bool, shape (D, H, W)
        Non-zero voxels, holes filled.
    deepbet_mask : ndarray of bool or None
        deepbet's brain mask, when it was run.
    reason : str
        The measured figures behind the decision.
    """
    foreground = brain_mask(image)
    zero = float(np.mean(image == 0))
    if zero < min_zero_fraction:
        return False, foreground, None, f"only {100 * zero:.1f} % of voxels are zero: no stripped background"
    mask = extractor(image)
    fg_ml = float(foreground.sum()) * voxel_ml
    outside = float(np.count_nonzero(foreground & ~mask)) / max(int(foreground.sum()), 1)
    reason = (
        f"{100 * outside:.1f} % of the {fg_ml:.0f} ml non-zero volume lies outside deepbet's "
        f"{float(mask.sum()) * voxel_ml:.0f} ml brain mask"
    )
    return bool(mask.any()) and outside <= max_outside_fraction, foreground, mask, reason


def skull_strip(
    image: np.ndarray, voxel_ml: float, mode: str = "auto", extractor: BrainExtractor | None = None
) -> SkullStripping:
    """Decide and, where needed, extract the brain of one image.

    Parameters
    ----------
    image : ndarray, shape (D, H, W)
        Intensities in RAS+ order.
    voxel_ml : float
        Volume of one voxel in ml (``voxel_volume_mm3(affine) / 1000``).
    mode : {'auto', 'always', 'never'}
        ``'never'``: the image is taken as skull-stripped (mask = non-zero
        voxels). ``'always'``: deepbet's mask. ``'auto'``:
        :func:`detect_skull_stripped` decides.
    extractor : BrainExtractor, optional
        Reused across images (loading deepbet takes about 0.5 s).

    Returns
    -------
    SkullStripping

    Raises
    ------
    ValueError
        If ``mode`` is unknown.
    brainseg.errors.InputError
        If deepbet finds no brain in an image it had to strip.
    """
    from brainseg.errors import InputError

    if mode not in SKULL_STRIP_MODES:
        raise ValueError(f"mode must be one of {SKULL_STRIP_MODES}, got {mode!r}")
    if mode == "never":
        mask = brain_mask(image)
        return SkullStripping(mode, False, mask, float(mask.sum()) * voxel_ml, "--skull-strip never")
    extractor = extractor or BrainExtractor()
    if mode == "always":
        mask, reason = extractor(image), "--skull-strip always"
    else:
        stripped, foreground, mask, reason = detect_skull_stripped(image, voxel_ml, extractor)
        if stripped:
            return SkullStripping(mode, False, foreground, float(foreground.sum()) * voxel_ml, reason)
        if mask is None:
            mask = extractor(image)
    if not mask.any():
        raise InputError("deepbet found no brain in the image; check that it is a T1-weighted head scan")
    return SkullStripping(mode, True, mask, float(mask.sum()) * voxel_ml, reason)
