"""NIfTI (.nii, .nii.gz) and MGZ input/output with nibabel, in canonical RAS+ order.

Axis convention: after :func:`load_volume` the array axes ``(D, H, W)`` run
left->Right, posterior->Anterior, inferior->Superior (RAS+), and ``spacing`` is
given in mm in that order. Every output is written back on the input's own
grid (shape, orientation, affine) with :func:`save_volume`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError, HeaderTypeError, ImageDataError

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path
from brainseg.io.validation import check_header, check_intensities

__all__ = ["Grid", "Volume", "load_volume", "save_volume", "is_volume_path", "output_stem", "voxel_spacing"]

log = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".nii", ".mgz")
_RAS = axcodes2ornt("RAS")


@dataclass(frozen=True)
class Grid:
    """The voxel grid of a file on disk: shape and affine (voxel ijk -> RAS+ mm).

    Attributes
    ----------
    shape : tuple of 3 int
        Voxels along the file's own (not reoriented) array axes.
    affine : ndarray of float64, shape (4, 4)
        The file's voxel index (i, j, k) -> RAS+ world coordinates in mm.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def to_canonical(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reorient ``data`` (this grid's shape) to RAS+; returns (array, affine).

        Parameters
        ----------
        data : ndarray, shape ``self.shape`` (first three axes spatial)
            Voxel values in the file's axis order; any dtype.

        Returns
        -------
        array : ndarray, shape (D, H, W) (then ``data``'s further axes)
            ``data`` with its spatial axes permuted and flipped to RAS+ order (same dtype; possibly a
            non-contiguous view of ``data``).
        affine : ndarray of float64, shape (4, 4)
            Voxel index of ``array`` -> RAS+ mm.
        """
        transform = ornt_transform(io_orientation(self.affine), _RAS)
        canonical = apply_orientation(data, transform)
        return canonical, self.affine @ inv_ornt_aff(transform, self.shape)

    def from_canonical(self, data: np.ndarray) -> np.ndarray:
        """Bring a RAS+ array (last three axes spatial) back onto this grid's orientation.

        Parameters
        ----------
        data : ndarray, shape (D, H, W) or (..., D, H, W)
            Values in canonical RAS+ order (e.g. a label map, or probabilities with classes first); any dtype.

        Returns
        -------
        ndarray, shape ``self.shape`` or (..., *self.shape)
            The same values and dtype in the file's axis order (the leading axes unchanged); the shape is
            ``self.shape`` only if ``data`` has this grid's canonical shape, which is not checked here.
        """
        transform = ornt_transform(_RAS, io_orientation(self.affine))
        if data.ndim == 3:
            return apply_orientation(data, transform)
        flat = data.reshape((-1,) + data.shape[-3:])
        out = np.stack([apply_orientation(v, transform) for v in flat])
        return out.reshape(data.shape[:-3] + out.shape[-3:])


@dataclass(frozen=True)
class Volume:
    """A 3-D array in canonical RAS+ order with its affine.

    Attributes
    ----------
    data : ndarray, shape (D, H, W)
        Voxel values (float32 for images, integer for label maps).
    affine : ndarray of float64, shape (4, 4)
        Voxel index -> RAS+ world coordinates in mm.
    grid : Grid
        The grid of the file it came from, for writing results back.
    """

    data: np.ndarray
    affine: np.ndarray
    grid: Grid

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(D, H, W)``."""
        return voxel_spacing(self.affine)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the array axes: the lengths of the affine's first three columns.

    Parameters
    ----------
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm.

    Returns
    -------
    tuple of 3 float
        mm.
    """
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def is_volume_path(path: str | Path) -> bool:
    """Whether the name ends in a supported suffix (.nii, .nii.gz, .mgz).

    Parameters
    ----------
    path : str or Path
        A file name or path (not looked at on disk); the suffix is compared case-insensitively.

    Returns
    -------
    bool
        True for ``.nii``, ``.nii.gz`` and ``.mgz`` names.
    """
    return str(path).lower().endswith(SUFFIXES)


def output_stem(path: str | Path) -> str:
    """File name without the volume suffix: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``.

    Parameters
    ----------
    path : str or Path
        A file name or path; the suffix is matched case-insensitively.

    Returns
    -------
    str
        The file name (no folder) without its ``.nii.gz``, ``.nii`` or ``.mgz``; other names lose
        their last suffix (:attr:`pathlib.PurePath.stem`).
    """
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def load_volume(path: str | Path, *, kind: str = "image") -> Volume:
    """Load a NIfTI or MGZ file and reorient it to RAS+.

    Parameters
    ----------
    path : str or Path
        A ``.nii``, ``.nii.gz`` or ``.mgz`` file holding one 3-D volume (a 4-D
        file with a single volume is accepted).
    kind : {'image', 'label_map', 'mask'}
        ``'image'`` returns float32 and rejects NaN/Inf and all-zero images;
        ``'label_map'`` and ``'mask'`` return int32 and reject non-integer values.

    Returns
    -------
    Volume

    Raises
    ------
    InputError
        If the file is missing, not a NIfTI/MGZ image, truncated or corrupt,
        or fails the validation gate (:mod:`brainseg.io.validation`: dimensions,
        size, data type, affine, voxel size, memory, intensities). The message
        names the file and what to do.
    """
    path = Path(path)
    if kind not in ("image", "label_map", "mask"):
        raise ValueError(f"kind must be 'image', 'label_map' or 'mask', got {kind!r}")
    if not path.is_file():
        raise InputError(f"{path}: no such file; give the path of a .nii, .nii.gz or .mgz image")
    try:
        img = nib.load(str(path))
        header = check_header(path, img, kind)  # before any voxel is read
        raw = np.asarray(img.dataobj).reshape(header.shape, order="A")
    except InputError:
        raise
    except (HeaderDataError, HeaderTypeError, ImageDataError) as err:  # nibabel's word on a broken header
        raise InputError(
            f"{path}: invalid header ({str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__}); "
            "repair or re-export the image"
        ) from None
    except Exception as err:  # nibabel parsing untrusted bytes may raise anything (KeyError on an unknown MGH type)
        log.debug("reading %s failed", path, exc_info=True)
        raise InputError(
            f"{path}: cannot read it as NIfTI or MGZ ({type(err).__name__}); "
            "check that the file is complete and is a .nii, .nii.gz or .mgz image"
        ) from None
    check_intensities(path, raw, kind)
    if kind == "image":
        data = raw.astype(np.float32)
    else:  # float storage of integers (0.99999997 for 1) is rounded, not truncated
        data = (np.rint(raw) if raw.dtype.kind == "f" else raw).astype(np.int32)
    if kind == "image" and not np.isfinite(data).all():  # float64 values beyond the float32 range
        raise InputError(f"{path}: intensities overflow float32; rescale the image and retry")
    grid = Grid(header.shape, header.affine)
    canonical, affine = grid.to_canonical(data)
    return Volume(np.ascontiguousarray(canonical), affine, grid)


def save_volume(
    path: str | Path, data: np.ndarray, grid: Grid, *, dtype: type | None = None, slope: float | None = None
) -> Path:
    """Write a RAS+ array back on ``grid`` as NIfTI, atomically.

    The file is written to a temporary name beside ``path`` and renamed, so a
    reader never sees a partial file.

    Parameters
    ----------
    path : str or Path
        Output file (``.nii.gz``, ``.nii`` or ``.mgz``).
    data : ndarray, shape (D, H, W) or (C, D, H, W)
        Values in canonical RAS+ order on the same voxels as ``grid``.
    grid : Grid
        Target grid, usually :attr:`Volume.grid` of the input.
    dtype : numpy dtype, optional
        Stored data type (default: ``data.dtype``).
    slope : float, optional
        NIfTI ``scl_slope``: readers see ``stored * slope`` (e.g. 1/255 for
        probabilities stored as uint8). MGH has no scale factor: a ``.mgz`` stores ``stored * slope``
        as float32 instead, so readers see the same values.

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    ValueError
        If ``data``'s spatial shape does not fit ``grid``.
    OSError
        If the file cannot be written (:func:`~brainseg.io.atomic.atomic_path`); ``path`` is then left as it
        was.
    """
    path = Path(path)
    out = grid.from_canonical(np.asarray(data))
    if out.shape[-3:] != grid.shape:
        raise ValueError(f"data shape {data.shape} does not fit grid shape {grid.shape}")
    if out.ndim == 4:  # channels last for NIfTI
        out = np.moveaxis(out, 0, -1)
    out = out.astype(dtype or out.dtype)
    if path.name.lower().endswith(".mgz"):
        if slope is not None:  # MGH has no scale factor: store the values readers would see, as float32
            out = out.astype(np.float32) * np.float32(slope)
        img: nib.spatialimages.SpatialImage = nib.MGHImage(out, grid.affine)
    else:
        img = nib.Nifti1Image(out, grid.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_qform(grid.affine, code=1)
        img.header.set_sform(grid.affine, code=1)
        if slope is not None:
            img.header.set_slope_inter(slope, 0.0)
    suffix = next((s for s in SUFFIXES if path.name.lower().endswith(s)), ".nii.gz")
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path
