"""Augmentation of MixNet's training crops: at most one transform per crop, never stacked.

L. Chen, D. Merhof, "MixNet: Multi-modality Mix Network for Brain Segmentation", BrainLes 2018, LNCS 11383,
Springer 2019, section 3.2 (as quoted in our issue): elastic deformation (alpha = 10, sigma = 4), scaling by
0.9, 0.95, 1.05 or 1.1, rotation by multiples of 45 degrees, translation ("0.15 percent of the image size")
and flips, each applied separately.

Each crop gets one of :data:`AUGMENTATIONS`, drawn uniformly among those its plane allows: ``none``,
``elastic``, ``scale``, ``rotate``, ``translate`` and ``flip`` have probability 1/6 each in coronal and
axial crops; sagittal crops (which have no left-right axis) draw among the first five, 1/5 each. The
authors' code (``preprocess.py`` of ``looooongChen/MRBrainS-Brain-Segmentation``) instead appended, per
slice, one elastic, four scaled, one translated and five rotated copies to the original (proportions 1, 1,
4, 1, 5 out of 12) and flipped nothing; we draw per crop so that no copy of the data is held.

Crops are resampled from the whole slice they were drawn from, so rotated or shrunk crops see the slice's
real surroundings: image values by linear interpolation, pixels beyond the slice are the background
intensity; targets by nearest neighbour, -1 (ignored by the loss) beyond the slice, as outside the brain.
Every geometric transform acts about the crop's centre, in pixel units of the 1 mm working grid:

- ``elastic``: Simard et al. (2003), as the authors' code does it: each displacement component is
  ``ELASTIC_ALPHA`` times a field of values uniform in [-1, 1] smoothed by a Gaussian of ``ELASTIC_SIGMA``
  pixels (:func:`scipy.ndimage.gaussian_filter`); with alpha 10 and sigma 4 the displacements are small
  (standard deviation about 0.4 pixel).
- ``scale``: magnified by a factor drawn in :data:`SCALES` (> 1 shows less tissue, larger).
- ``rotate``: by an angle drawn in :data:`ROTATIONS_DEG` (45, 90, ..., 315 degrees; 90 is
  :func:`numpy.rot90`); the code's angles were 60, 120, ..., 300.
- ``translate``: "0.15 percent of the image size" read as the fraction 0.15, as the authors' code does
  (``scale=0.15``: a shift drawn uniformly in [-0.15, 0.15] x the slice side, truncated to whole pixels):
  a whole-pixel shift per in-plane axis drawn uniformly in ``[-m, m]``, ``m`` =
  ``round(TRANSLATION_FRACTION x crop)`` (19 pixels for 128-pixel crops; the code's image was the whole
  240-pixel slice). As our crops are already placed at random over the slice, this only moves the window
  further (a crop's chosen brain voxel may leave it).
- ``flip``: left-right, along the slice axis that is the RAS+ x axis (:data:`LEFT_RIGHT_AXIS`: the first
  in-plane axis of coronal and axial slices), with each left structure's class swapped for its right
  counterpart (:func:`left_right_permutation`); the paper flips only its anisotropic planes, without saying
  how its labels follow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from brainseg.labels import LabelTable
from brainseg.sampling.orthogonal import ORTHOGONAL_PLANES

__all__ = [
    "AUGMENTATIONS",
    "ELASTIC_ALPHA",
    "ELASTIC_SIGMA",
    "LEFT_RIGHT_AXIS",
    "ROTATIONS_DEG",
    "SCALES",
    "TRANSLATION_FRACTION",
    "augment_crop",
    "choose_transform",
    "left_right_permutation",
]

#: The choices of a crop, drawn uniformly (``flip`` only where the crop has a left-right axis).
AUGMENTATIONS = ("none", "elastic", "scale", "rotate", "translate", "flip")
#: Elastic deformation: displacement scale and Gaussian smoothing, pixels (paper section 3.2).
ELASTIC_ALPHA = 10.0
ELASTIC_SIGMA = 4.0
#: Scale factors (paper section 3.2).
SCALES = (0.9, 0.95, 1.05, 1.1)
#: Rotation angles, degrees: the non-zero multiples of 45.
ROTATIONS_DEG = (45, 90, 135, 180, 225, 270, 315)
#: Largest shift per in-plane axis, as a fraction of the crop side.
TRANSLATION_FRACTION = 0.15
#: Per plane, the slice axis along which the RAS+ x (left-right) axis runs; None: the plane has none.
LEFT_RIGHT_AXIS: dict[str, int | None] = {
    plane: (axes.index(0) if 0 in axes else None) for plane, axes in ORTHOGONAL_PLANES.items()
}

# Side words: "Left", "right", "lh", "rh" in any case, and AAL's upper-case "L" / "R", each a whole token
# (not inside a longer word or number: "Leftover" and "L1" have no side).
_SIDE_WORDS = re.compile(r"(?<![A-Za-z0-9])(left|right|lh|rh)(?![A-Za-z0-9])", re.IGNORECASE)
_SIDE_LETTERS = re.compile(r"(?<![A-Za-z0-9])(L|R)(?![A-Za-z0-9])")
_SEPARATORS = re.compile(r"[\s_.-]+")  # "Left Putamen", "Left-Putamen", "left_putamen" name one structure


def _side_key(name: str) -> tuple[str, str] | None:
    """``(side, name with its side word replaced by a marker of the word's kind, lower case)``, or None."""
    sides: set[str] = set()

    def mark(match: re.Match[str]) -> str:
        word = match.group(1)
        sides.add("L" if word.lower() in ("left", "lh", "l") else "R")
        kind = {"left": "lr", "right": "lr", "lh": "h", "rh": "h"}.get(word.lower(), "letter")
        return f"\0{kind}\0"

    key = _SEPARATORS.sub(" ", _SIDE_LETTERS.sub(mark, _SIDE_WORDS.sub(mark, name)).strip())
    return (sides.pop(), key.lower()) if len(sides) == 1 else None


def left_right_permutation(labels: LabelTable | Sequence[str]) -> np.ndarray:
    """The class each class becomes in a left-right mirrored image: left structures <-> right ones.

    Two classes are a pair when their names differ only in a side word -- ``Left``/``Right`` (any case:
    ``Left-Hippocampus``, ``Right Hippocampus``, ``left_putamen``), ``lh``/``rh`` (``ctx-lh-insula``) or
    AAL's ``L``/``R`` (``Hippocampus_L``), each a whole token -- and the rest of the name is the same up
    to case and separators (spaces, ``-``, ``_``, ``.``). Classes without a side, with two sides, or
    whose counterpart is missing or ambiguous (two classes of one name and side) map to themselves.
    Nothing is refused.

    Parameters
    ----------
    labels : LabelTable or sequence of str
        The label table (its ``names``), or the class names in class order.

    Returns
    -------
    ndarray of int64, shape (C,)
        ``permutation[c]`` is the mirrored class of class ``c``; an involution
        (``permutation[permutation] == arange(C)``).

    Examples
    --------
    >>> left_right_permutation(["Background", "Left-Hippocampus", "Brain-Stem", "Right-Hippocampus"]).tolist()
    [0, 3, 2, 1]
    >>> left_right_permutation(["Background", "ctx-lh-insula", "ctx-rh-insula", "Left Leftover"]).tolist()
    [0, 2, 1, 3]
    """
    names = list(labels.names if isinstance(labels, LabelTable) else labels)
    permutation = np.arange(len(names), dtype=np.int64)
    by_key: dict[tuple[str, str], list[int]] = {}
    for c, name in enumerate(names):
        key = _side_key(str(name))
        if key is not None:
            by_key.setdefault(key, []).append(c)
    for (side, rest), classes in by_key.items():
        other = by_key.get(("R", rest), [])
        if side == "L" and len(classes) == 1 and len(other) == 1:
            permutation[classes[0]], permutation[other[0]] = other[0], classes[0]
    return permutation


def choose_transform(rng: np.random.Generator, can_flip: bool) -> str:
    """One of :data:`AUGMENTATIONS`, uniformly (without ``flip`` unless ``can_flip``).

    Chen and Merhof (2018, section 3.2) apply each augmentation separately; here a crop gets at most one.

    Parameters
    ----------
    rng : numpy.random.Generator
        The random source.
    can_flip : bool
        Whether ``flip`` is among the choices (the crop has a left-right axis and a class permutation).

    Returns
    -------
    str
        ``'none'``, ``'elastic'``, ``'scale'``, ``'rotate'``, ``'translate'`` or ``'flip'``: probability 1/6 each
        with ``can_flip``, else 1/5 each for the first five.
    """
    choices = AUGMENTATIONS if can_flip else AUGMENTATIONS[:-1]
    return choices[int(rng.integers(len(choices)))]


def _affine(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (2, 2), offset (2,))``: crop pixel ``p`` reads the window's pixel ``matrix @ p + offset``."""
    centre = np.full(2, (size - 1) / 2)
    if kind == "scale":
        matrix = np.eye(2) / SCALES[int(rng.integers(len(SCALES)))]
    elif kind == "rotate":
        theta = np.radians(ROTATIONS_DEG[int(rng.integers(len(ROTATIONS_DEG)))])
        cos, sin = np.round(np.cos(theta), 12), np.round(np.sin(theta), 12)  # exact 0 and 1 at multiples of 90
        matrix = np.array([[cos, sin], [-sin, cos]])  # 90 degrees: out[i, j] = in[j, size - 1 - i] (np.rot90)
    elif kind == "translate":
        most = int(round(TRANSLATION_FRACTION * size))
        return np.eye(2), -rng.integers(-most, most + 1, size=2).astype(np.float64)  # content moves by the shift
    else:
        raise ValueError(f"no affine transform named {kind!r}")
    return matrix, centre - matrix @ centre


def _elastic(size: int, rng: np.random.Generator) -> np.ndarray:
    """Source coordinates ``(2, size, size)`` of an elastic deformation of the crop (window pixels)."""
    grid = np.indices((size, size), dtype=np.float64)
    fields = [ndimage.gaussian_filter(rng.uniform(-1, 1, (size, size)), ELASTIC_SIGMA) for _ in range(2)]
    return grid + ELASTIC_ALPHA * np.stack(fields)


def _flip(crop: np.ndarray, targets: np.ndarray, axis: int, permutation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` (…, H, W) and ``targets`` (H, W) mirrored along slice ``axis``, classes through ``permutation``."""
    flipped = np.flip(targets, axis=axis)
    return np.flip(crop, axis=axis - 2), np.where(flipped >= 0, np.asarray(permutation)[np.maximum(flipped, 0)], -1)


def augment_crop(
    image: np.ndarray,
    targets: np.ndarray,
    low: Sequence[int],
    size: int,
    background: float | np.ndarray,
    rng: np.random.Generator,
    *,
    left_right_axis: int | None = None,
    permutation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """One training crop of a slice, under at most one transform drawn by :func:`choose_transform`.

    Parameters
    ----------
    image : ndarray of float32, shape (H, W) or (M, H, W)
        The whole slice the crop is drawn from (normalised intensities), one image or one per modality
        (every modality gets the same transform).
    targets : ndarray of int16, shape (H, W)
        Its target classes, -1 where ignored.
    low : sequence of 2 int
        Slice index of the crop window's first pixel (may be negative or beyond the slice).
    size : int
        Side of the square crop, pixels.
    background : float or ndarray of float, shape (M,)
        Intensity beyond the slice (one per modality for an ``(M, H, W)`` image).
    rng : numpy.random.Generator
        Draws the transform and its parameters.
    left_right_axis : int or None
        The slice axis (0 or 1) that runs left to right (:data:`LEFT_RIGHT_AXIS`); None: no flip.
    permutation : ndarray of int, shape (C,), optional
        :func:`left_right_permutation` of the label table; without it no flip is drawn either.

    Returns
    -------
    crop : ndarray of float32, shape (size, size), or (M, size, size) for an (M, H, W) image
    crop_targets : ndarray of int16, shape (size, size)
        -1 beyond the slice (and wherever ``targets`` is -1).
    kind : str
        The transform applied (one of :data:`AUGMENTATIONS`).

    Raises
    ------
    ValueError
        If ``targets`` is not 2-D, ``image`` not of its shape (after a channel axis), or ``background`` not
        one value per channel.
    """
    image, targets = np.asarray(image), np.asarray(targets)
    if targets.ndim != 2 or image.shape[-2:] != targets.shape or image.ndim not in (2, 3):
        raise ValueError(
            f"image (H, W) or (M, H, W) and targets (H, W) must agree, got {image.shape} and {targets.shape}"
        )
    channels = image.reshape((-1,) + targets.shape)
    fills = np.broadcast_to(np.asarray(background, np.float64), (len(channels),)) if np.ndim(background) else None
    if np.ndim(background) and (image.ndim != 3 or np.shape(background) != (len(channels),)):
        raise ValueError(f"need one background value per channel of {image.shape}, got {np.shape(background)}")
    low = np.asarray(low, np.float64)
    kind = choose_transform(rng, can_flip=left_right_axis is not None and permutation is not None)
    if kind in ("none", "flip"):
        coords = np.indices((size, size), dtype=np.float64) + low[:, None, None]
    elif kind == "elastic":
        coords = _elastic(size, rng) + low[:, None, None]
    else:
        matrix, offset = _affine(kind, size, rng)
        coords = np.einsum("ij,jkl->ikl", matrix, np.indices((size, size), dtype=np.float64))
        coords += (offset + low)[:, None, None]
    crop = np.stack(
        [
            ndimage.map_coordinates(
                c.astype(np.float32, copy=False),
                coords,
                order=1,
                cval=float(background if fills is None else fills[k]),  # type: ignore[arg-type]
            )
            for k, c in enumerate(channels)
        ]
    ).reshape(image.shape[:-2] + (size, size))
    crop_targets = ndimage.map_coordinates(targets.astype(np.int16, copy=False), coords, order=0, cval=-1)
    if kind == "flip":
        assert permutation is not None and left_right_axis is not None  # choose_transform drew it
        crop, crop_targets = _flip(crop, crop_targets, left_right_axis, permutation)
    return (
        np.ascontiguousarray(crop, dtype=np.float32),
        np.ascontiguousarray(crop_targets, dtype=np.int16),
        kind,
    )
