"""The validation gate every input volume passes through before brainseg uses it.

:func:`brainseg.io.load_volume` calls :func:`check_header` before it reads any
voxel and :func:`check_intensities` after, so every command (``segment``,
``evaluate``, ``train``, ``atlas``, ``manifest``) refuses the same files with the
same one-line messages (:class:`~brainseg.errors.InputError`: what is wrong,
which file, what to do).

What is accepted and what is refused
------------------------------------
* **Dimensions**: 3-D, or more axes of length 1 after the third (a 4-D file
  with one volume). Several volumes or vector/RGB components are refused.
* **Size**: images need ``limits.min_voxels`` voxels along every axis and a
  field of view of ``limits.min_field_of_view_mm`` mm along every axis (an
  adult brain is >= 120 mm across). Label maps and masks need 2 voxels.
* **Data type**: integer and real floating-point scalars. Complex, RGB/RGBA and
  other structured types are refused.
* **Affine**: the one nibabel chooses: the sform when ``sform_code > 0``, else
  the qform when ``qform_code > 0``, else nibabel's pixdim-based fallback
  (ANALYZE 7.5 convention, a warning: orientation is a guess). When sform and
  qform are both set and disagree by more than 1 mm or 1 degree, **the sform
  wins** (as in nibabel, FSL and ITK) and a warning says so. The affine must be
  finite and invertible. NIfTI spatial units of metres or microns are converted
  to mm; unknown units are taken as mm.
* **Voxel size**: a pixdim of 0, negative zero or non-finite under a
  pixdim-based affine is refused (nibabel would silently use 1 mm); voxel sizes
  outside ``[min_spacing_mm, max_spacing_mm]`` are refused (usually wrong
  units); above ``warn_spacing_mm`` a warning says accuracy will suffer.
* **Memory**: the memory a segmentation needs is estimated from the header and
  checked against the available RAM before any voxel is read (a header that
  claims 10,000^3 voxels is refused at once). Truncated uncompressed files are
  refused from their size.
* **Brain mask** (:func:`check_brain_mask`, once the mask is known: after
  skull stripping, or the non-zero voxels): at least ``limits.min_brain_ml``
  ml, and intensities inside it that are not all equal.
* **Intensities** (images): finite, not all zero, not constant, and not a label
  map or mask given as the image (integer-valued, few distinct values and
  piecewise constant: refused, since segmenting a label map gives nonsense).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.errors import InputError

__all__ = [
    "LIMITS",
    "ImageLimits",
    "CheckedHeader",
    "available_memory_bytes",
    "check_brain_mask",
    "check_header",
    "check_intensities",
    "estimate_memory_bytes",
    "looks_like_label_map",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds of what counts as a brain image.

    Attributes
    ----------
    min_voxels : int
        Fewest voxels along any axis of an image.
    min_field_of_view_mm : float
        Smallest extent in mm along any axis of an image (voxels x spacing).
    min_spacing_mm, max_spacing_mm : float
        Voxel sizes outside this range are refused.
    warn_spacing_mm : float
        Voxel sizes above this get a warning (thick slices).
    bytes_per_input_voxel : int
        Working memory per input voxel on top of its stored bytes (float32
        copies, canonical reorientation, the output label map).
    bytes_per_mm3 : int
        Working memory per voxel of the 1 mm grid the networks read
        (normalised image, patches, distances, class scores).
    fixed_bytes : int
        Memory taken regardless of the image (torch, the model).
    min_brain_ml : float
        Smallest brain mask segmented, in ml (a newborn's brain is about
        350 ml; a mask of a few ml means a wrong voxel size or no brain).
    """

    min_voxels: int = 8
    min_field_of_view_mm: float = 50.0
    min_spacing_mm: float = 0.1
    max_spacing_mm: float = 10.0
    warn_spacing_mm: float = 3.0
    bytes_per_input_voxel: int = 24
    bytes_per_mm3: int = 96
    fixed_bytes: int = 600 * 2**20
    min_brain_ml: float = 50.0


#: The limits in force (tests of tiny synthetic volumes replace it; see tests/conftest.py).
LIMITS = ImageLimits()

#: Label maps and masks stored as floats may be this far from integers (float32 storage of 1 as
#: 0.99999997); they are rounded on loading (:func:`brainseg.io.nifti.load_volume`).
INTEGER_TOLERANCE = 1e-3

_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


@dataclass(frozen=True)
class CheckedHeader:
    """What the header says, once checked.

    Attributes
    ----------
    shape : tuple of 3 int
        The 3 spatial dimensions (trailing axes of length 1 dropped).
    affine : ndarray of float64, shape (4, 4)
        Voxel index -> RAS+ mm (units converted to mm).
    spacing : tuple of 3 float
        Voxel size in mm along the file's axes.
    dtype : numpy dtype
        Stored data type.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    dtype: np.dtype


def available_memory_bytes() -> int | None:
    """Memory available to a new process in bytes (``MemAvailable`` of /proc/meminfo), or None if unknown.

    Returns
    -------
    int or None
        Bytes; where /proc/meminfo is unreadable or lacks ``MemAvailable``, the free physical pages
        (``os.sysconf``) times the page size; None where neither is known.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_memory_bytes(
    shape: tuple[int, ...], itemsize: int, spacing: tuple[float, ...], limits: ImageLimits | None = None
) -> int:
    """Peak memory in bytes to segment an image, from its header alone.

    Parameters
    ----------
    shape : tuple of int
        Spatial dimensions in voxels.
    itemsize : int
        Bytes per stored voxel.
    spacing : tuple of float
        Voxel size in mm.
    limits : ImageLimits, optional
        Per-voxel costs (default :data:`LIMITS`).

    Returns
    -------
    int
        ``n * (itemsize + bytes_per_input_voxel) + n_1mm * bytes_per_mm3 + fixed_bytes``
        with ``n`` input voxels and ``n_1mm`` voxels of the 1 mm grid over the
        same field of view.
    """
    limits = limits or LIMITS
    n = math.prod(int(s) for s in shape)
    n_mm3 = math.prod(max(1, math.ceil(s * d)) for s, d in zip(shape, spacing))
    return int(n * (itemsize + limits.bytes_per_input_voxel) + n_mm3 * limits.bytes_per_mm3 + limits.fixed_bytes)


def _raw_nifti_header(path: Path, img: nib.spatialimages.SpatialImage) -> nib.Nifti1Header | None:
    """The NIfTI header as stored, before nibabel's silent fixes (pixdim 0 -> 1, negative -> abs)."""
    if not isinstance(img.header, nib.Nifti1Header):  # Nifti2Header derives from it
        return None
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        return type(img.header).from_fileobj(f, check=False)


def _matrix_disagreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Largest distance in mm between the positions of the corners of a 100 mm cube, and the angle in degrees."""
    ra, rb = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0), b[:3, :3] / np.linalg.norm(b[:3, :3], axis=0)
    cos = np.clip((np.trace(ra.T @ rb) - 1) / 2, -1.0, 1.0)
    corners = np.array([[i, j, k, 1.0] for i in (0, 100) for j in (0, 100) for k in (0, 100)]).T
    shift = np.abs(a @ corners - b @ corners)[:3].max()
    return float(shift), float(np.degrees(np.arccos(cos)))


def check_header(
    path: str | Path, img: nib.spatialimages.SpatialImage, kind: str = "image", limits: ImageLimits | None = None
) -> CheckedHeader:
    """Check an image's header before any voxel is read.

    Parameters
    ----------
    path : str or Path
        The file (named in messages; re-read for the raw NIfTI header).
    img : nibabel image
        ``nibabel.load(path)``.
    kind : {'image', 'label_map', 'mask'}
        Images get the brain-size, spacing and memory checks.
    limits : ImageLimits, optional
        Default :data:`LIMITS`.

    Returns
    -------
    CheckedHeader

    Raises
    ------
    InputError
        For each refusal listed in the module docstring; the message names the
        file and the fix.
    """
    path = Path(path)
    limits = limits or LIMITS
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3 or any(n < 1 for n in shape):
        raise InputError(f"{path}: expected a 3-D volume, got shape {shape}; give a 3-D brain image")
    if any(n != 1 for n in shape[3:]):
        what = "volumes" if len(shape) == 4 else "components or volumes"
        raise InputError(
            f"{path}: holds {math.prod(shape[3:])} {what} (shape {shape}); "
            "extract one 3-D volume first (e.g. fslroi IMAGE OUT 0 1)"
        )
    shape3 = shape[:3]
    dtype = np.dtype(img.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "biuf":
        described = "RGB/structured" if dtype.fields is not None else {"c": "complex"}.get(dtype.kind, str(dtype))
        raise InputError(
            f"{path}: voxels are {described} ({dtype}); brainseg reads scalar integer or float images: "
            "convert it to a single-channel scalar image (e.g. magnitude or grey level)"
        )
    affine = _checked_affine(path, img)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    minimum = limits.min_voxels if kind == "image" else 2
    if min(shape3) < minimum:
        raise InputError(
            f"{path}: {'x'.join(map(str, shape3))} voxels is too small for a brain {kind.replace('_', ' ')} "
            f"(needs >= {minimum} voxels along each axis); check that it is the right file"
        )
    if kind != "image":
        return CheckedHeader(shape3, affine, spacing, dtype)  # type: ignore[arg-type]
    for s in spacing:
        if not limits.min_spacing_mm <= s <= limits.max_spacing_mm:
            raise InputError(
                f"{path}: voxel size {_mm(spacing)} mm is outside {limits.min_spacing_mm:g}-{limits.max_spacing_mm:g} mm; "
                "fix the header's pixdim or spatial units (e.g. metres written as mm)"
            )
    fov = tuple(n * s for n, s in zip(shape3, spacing))
    if min(fov) < limits.min_field_of_view_mm:
        raise InputError(
            f"{path}: field of view {_mm(fov)} mm is smaller than a brain "
            f"(needs >= {limits.min_field_of_view_mm:g} mm along each axis); give a whole-brain T1 image"
        )
    if max(spacing) > limits.warn_spacing_mm:
        log.warning("%s: voxel size %s mm: thick slices, expect lower accuracy", path, _mm(spacing))
    needed = estimate_memory_bytes(shape3, dtype.itemsize, spacing, limits)
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise InputError(
            f"{path}: segmenting {'x'.join(map(str, shape3))} voxels needs about {needed / 2**30:.1f} GB of memory, "
            f"{available / 2**30:.1f} GB is available; crop or downsample the image, or use a larger machine"
        )
    _check_file_size(path, img, shape, dtype)
    return CheckedHeader(shape3, affine, spacing, dtype)  # type: ignore[arg-type]


def _mm(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _checked_affine(path: Path, img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Nibabel's affine, checked: finite, invertible, from a valid pixdim, in mm."""
    affine = np.asarray(img.affine, dtype=np.float64)
    raw = _raw_nifti_header(path, img)
    scale = 1.0
    if raw is not None:
        sform_code, qform_code = int(raw["sform_code"]), int(raw["qform_code"])
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
        from_pixdim = sform_code <= 0  # the qform and the fallback are built from pixdim
        if from_pixdim and (not np.isfinite(pixdim).all() or (pixdim == 0).any()):
            raise InputError(
                f"{path}: voxel size (pixdim) is {_mm(tuple(pixdim))} and no sform is set, so no volume in mm "
                "can be computed; set the voxel size in the header (e.g. nibabel header.set_zooms) and retry"
            )
        if sform_code <= 0 and qform_code <= 0:
            log.warning(
                "%s: no qform or sform: orientation taken from pixdim as in ANALYZE 7.5 (nibabel); check left/right",
                path,
            )
        if sform_code > 0 and qform_code > 0:
            sform, qform = img.header.get_sform(), img.header.get_qform()
            if np.isfinite(sform).all() and np.isfinite(qform).all() and abs(np.linalg.det(qform[:3, :3])) > 0:
                shift, angle = _matrix_disagreement(sform, qform)
                if shift > 1.0 or angle > 1.0:
                    log.warning(
                        "%s: sform and qform disagree (%.1f mm, %.1f deg); using the sform (as nibabel, FSL and ITK do)",
                        path,
                        shift,
                        angle,
                    )
        unit = raw.get_xyzt_units()[0]
        scale = _UNIT_TO_MM.get(unit, 1.0)
    if not np.isfinite(affine).all():
        raise InputError(
            f"{path}: the header's voxel-to-world matrix (sform/qform) holds NaN or Inf; "
            "repair the header (e.g. fslorient -copyqform2sform, or rewrite it with nibabel) and retry"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(
            f"{path}: the header's voxel-to-world matrix is singular (a zero voxel size or collapsed axis); "
            "repair the header's sform/qform or voxel size and retry"
        )
    if scale != 1.0:
        log.info("%s: spatial units %s converted to mm", path, raw.get_xyzt_units()[0] if raw is not None else "")
        affine = affine.copy()
        affine[:3] *= scale
    return affine


def _check_file_size(path: Path, img: nib.spatialimages.SpatialImage, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an uncompressed NIfTI shorter than its header says (no voxel read)."""
    if not path.name.lower().endswith(".nii") or not isinstance(img.header, nib.Nifti1Header):
        return
    offset = int(img.header.get_data_offset())
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            f"{path}: file is truncated ({actual} bytes, the header needs {expected}); copy or export it again"
        )


def looks_like_label_map(data: np.ndarray, max_distinct: int = 1000, min_flat: float = 0.7) -> bool:
    """Whether an array looks like a label map or mask rather than an MR image.

    A label map is integer-valued with few distinct values and piecewise
    constant: most foreground voxels equal their neighbour along the first
    axis. In a T1 image (even one stored as uint8) scanner noise makes
    neighbours differ.

    Parameters
    ----------
    data : ndarray, shape (D, H, W)
        Voxel values.
    max_distinct : int
        More distinct values than this means an image.
    min_flat : float
        Fraction of non-zero voxels equal to their next neighbour at and above
        which the array counts as piecewise constant.

    Returns
    -------
    bool

    Examples
    --------
    >>> labels = np.zeros((20, 20, 20), np.int16); labels[5:15, 5:15, 5:15] = 17
    >>> bool(looks_like_label_map(labels))
    True
    >>> rng = np.random.default_rng(0)
    >>> bool(looks_like_label_map(np.where(labels > 0, rng.integers(60, 200, labels.shape), 0)))
    False
    """
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        return False
    values = np.unique(data)
    if values.size > max_distinct:
        return False
    a, b = data[1:], data[:-1]
    foreground = (a != 0) | (b != 0)
    if not foreground.any():
        return False
    return bool((a[foreground] == b[foreground]).mean() >= min_flat)


def check_intensities(path: str | Path, data: np.ndarray, kind: str = "image") -> None:
    """Check the voxel values that were read.

    Parameters
    ----------
    path : str or Path
        The file (named in messages).
    data : ndarray, shape (D, H, W)
        Values as read (scaling applied).
    kind : {'image', 'label_map', 'mask'}
        What the values should be.

    Raises
    ------
    InputError
        Images: NaN/Inf, all zero, constant, or a label map/mask given as an
        image. Label maps and masks: values further than :data:`INTEGER_TOLERANCE` from an integer,
        non-finite or negative values.
    """
    path = Path(path)
    if kind == "image":
        if not np.isfinite(data).all():
            raise InputError(f"{path}: image holds NaN or Inf voxels; replace them (e.g. with 0) and retry")
        if not data.any():
            raise InputError(f"{path}: image is all zero; check that it is the right file")
        low, high = float(data.min()), float(data.max())
        if low == high or np.count_nonzero(data != data.flat[0]) < 2:
            raise InputError(f"{path}: image intensities are constant ({low:g}); give a T1-weighted brain image")
        if looks_like_label_map(data):
            raise InputError(
                f"{path}: looks like a label map or mask ({np.unique(data).size} distinct integer values, "
                "piecewise constant), not a T1 image; give the T1-weighted image"
            )
    elif kind in ("label_map", "mask"):  # floats within INTEGER_TOLERANCE of an integer are rounded on loading
        distance = None
        if data.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # Inf - Inf: those voxels get distance Inf below
                distance = np.where(np.isfinite(data), np.abs(data - np.round(data)), np.inf)
        if distance is not None and distance.max(initial=0) > INTEGER_TOLERANCE:
            far = data[distance > INTEGER_TOLERANCE]  # NaN and Inf included
            raise InputError(
                f"{path}: a {kind.replace('_', ' ')} must hold integer values (e.g. {float(far.flat[0]):g} is not); "
                "give the label file, not probabilities or an interpolated image"
            )
        if data.size and data.min() < 0:
            raise InputError(
                f"{path}: a {kind.replace('_', ' ')} holds negative numbers (e.g. {data.min():g}); "
                "label numbers are >= 0: check that it is the right file"
            )
        if np.abs(data).max(initial=0) > np.iinfo(np.int32).max:
            raise InputError(f"{path}: label numbers exceed the int32 range; renumber the labels")
    else:
        raise ValueError(f"kind must be 'image', 'label_map' or 'mask', got {kind!r}")


def check_brain_mask(
    path: str | Path, data: np.ndarray, mask: np.ndarray, voxel_ml: float, limits: ImageLimits | None = None
) -> None:
    """Check the brain mask an image will be segmented inside, before any network runs.

    Parameters
    ----------
    path : str or Path
        The image file (named in messages).
    data : ndarray, shape (D, H, W)
        Intensities.
    mask : ndarray of bool, shape (D, H, W)
        The brain mask (skull stripping's, or the non-zero voxels).
    voxel_ml : float
        Volume of one voxel in ml.
    limits : ImageLimits, optional
        Default :data:`LIMITS` (``min_brain_ml``).

    Raises
    ------
    InputError
        If the mask holds fewer than 8 voxels or less than ``min_brain_ml``
        ml, or the intensities inside it are all equal.
    """
    limits = limits or LIMITS
    count = int(np.count_nonzero(mask))
    if count < 8 or count * voxel_ml < limits.min_brain_ml:
        raise InputError(
            f"{path}: the brain mask holds {count} voxels ({count * voxel_ml:.3g} ml), too few for a brain "
            f"(needs >= {limits.min_brain_ml:g} ml); give a T1-weighted brain image or check the header's voxel size"
        )
    values = data[mask]
    if float(values.min()) == float(values.max()):
        raise InputError(
            f"{path}: intensities inside the brain mask are constant ({float(values[0]):g}); "
            "give a T1-weighted brain image"
        )
