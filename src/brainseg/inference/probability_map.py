"""Class probabilities on the input's voxels without holding them all at once.

A model's probabilities live on its working grid (the 1 mm grid, or the reference template's); the
input's voxels take theirs through nearest-neighbour maps (input voxel -> 1 mm voxel -> template
voxel), the same maps that bring the labels back, so that the arg-max of the probabilities is the
label map. :class:`ProbabilityMap` keeps the working-grid array and the composed map and hands out one
class at a time: ``--probabilities`` streams them into the NIfTI file class by class, instead of
materialising 135 float volumes on the input grid (9.0 GB peak on a 1 mm scan before this module).
"""

from __future__ import annotations

import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.io.atomic import atomic_path
from brainseg.io.nifti import Grid, save_volume

__all__ = ["ProbabilityMap"]

#: Threads quantising, reorienting and compressing the classes of a probability file in parallel.
WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))


class ProbabilityMap:
    """Class probabilities on the input's voxels, computed one class at a time.

    Parameters
    ----------
    working : ndarray of float16 or float32, shape (C, D', H', W')
        Probabilities on the model's working grid.
    index : ndarray of int, shape (D, H, W), or None
        For each input voxel (RAS+), the flat index of its working-grid voxel, -1
        for background (probability 1 for class 0, 0 for the others); None when
        the input voxels are the working grid's.

    Notes
    -----
    ``np.asarray(p)`` gives the whole ``(C, D, H, W)`` array (as much memory as
    that takes); ``p[c]`` one class's ``(D, H, W)`` volume.
    """

    def __init__(self, working: np.ndarray, index: np.ndarray | None) -> None:
        self.working, self.index = working, index
        spatial = working.shape[1:] if index is None else index.shape
        self.shape: tuple[int, ...] = (working.shape[0], *spatial)
        self.dtype = working.dtype
        self._flat = working.reshape(working.shape[0], -1)
        if index is not None:
            self._inside = index >= 0
            self._rows = index[self._inside]

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.shape[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, c: int) -> np.ndarray:
        """Class ``c``'s probabilities on the input voxels, ``(D, H, W)`` in the working array's type."""
        c = int(c)
        if not -self.shape[0] <= c < self.shape[0]:
            raise IndexError(f"class {c} out of range for {self.shape[0]} classes")
        return self._volume(c % self.shape[0], self.dtype, 1, lambda values: values)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, dtype or self.dtype)
        for c in range(self.shape[0]):
            out[c] = self[c]
        return out

    def astype(self, dtype: type) -> np.ndarray:
        """The whole array in ``dtype`` (see the class notes on memory).

        Parameters
        ----------
        dtype : numpy dtype
            Type of the returned array (e.g. ``np.float32``).

        Returns
        -------
        ndarray of ``dtype``, shape (C, D, H, W)
            A new array on the input voxels, background (class 0 probability 1) outside the index's brain.
        """
        return np.asarray(self, dtype=dtype)

    def save(self, path: str | Path, grid: Grid) -> Path:
        """Write as a 4-D NIfTI on ``grid``, stored uint8 with slope 1/255, streamed class by class, atomically.

        Classes are quantised, reoriented and (``.nii.gz``) compressed in :data:`WRITE_THREADS` threads,
        each class one gzip member of the file (gzip readers, nibabel's included, read the members as
        one stream), and written in class order as each is ready.

        Parameters
        ----------
        path : str or Path
            ``.nii.gz`` or ``.nii`` (other formats go through :func:`brainseg.io.save_volume`, whole).
        grid : Grid
            The input file's grid.

        Returns
        -------
        Path
            The written path.
        """
        path = Path(path)
        name = path.name.lower()
        if not name.endswith((".nii", ".nii.gz")):
            return save_volume(path, self.astype(np.float32) * 255 + 0.5, grid, dtype=np.uint8, slope=1 / 255)
        first = grid.from_canonical(self._quantised(0))
        header = nib.Nifti1Header()
        header.set_data_dtype(np.uint8)
        header.set_data_shape((*first.shape, self.shape[0]))
        header.set_xyzt_units("mm")
        header.set_qform(grid.affine, code=1)
        header.set_sform(grid.affine, code=1)
        header.set_slope_inter(1 / 255, 0.0)
        header["vox_offset"] = 352
        compressed = name.endswith(".gz")

        def block(c: int) -> bytes:
            # class c's volume as file bytes: one gzip member per class for .nii.gz (a valid gzip
            # file is any sequence of members), so that the classes compress in parallel threads
            volume = first if c == 0 else grid.from_canonical(self._quantised(c))
            data = volume.tobytes(order="F")
            return gzip.compress(data, compresslevel=1, mtime=0) if compressed else data

        head = header.binaryblock + b"\x00" * 4  # no extensions
        with atomic_path(path, suffix=".nii.gz" if compressed else ".nii") as tmp, open(tmp, "wb") as f:
            f.write(gzip.compress(head, compresslevel=1, mtime=0) if compressed else head)
            with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
                for data in pool.map(block, range(self.shape[0])):
                    f.write(data)
        return path

    def _quantised(self, c: int) -> np.ndarray:
        # Class c as uint8 steps of 1/255 on the input voxels, quantising only the brain's values.
        return self._volume(c, np.uint8, 255, _quantise)

    def _volume(self, c: int, dtype: type, one: int, convert) -> np.ndarray:
        # Class c on the input voxels: ``convert`` of the working values it points at, background outside.
        if self.index is None:
            return convert(self.working[c])
        out = np.full(self.shape[1:], one if c == 0 else 0, dtype)
        out[self._inside] = convert(self._flat[c, self._rows])
        return out


def _quantise(probabilities: np.ndarray) -> np.ndarray:
    # Probabilities in [0, 1] -> uint8 steps of 1/255, rounded to nearest.
    return np.rint(probabilities.astype(np.float32) * 255).astype(np.uint8)
