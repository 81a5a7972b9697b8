"""Per-voxel tables of a position-only branch on the reference grid: rows, cache file, exact fallback.

The machinery under :mod:`brainseg.inference.branch_cache`'s DistBranch and ProbBranch tables. A
branch whose input depends on a reference-space voxel's position alone has one output per template
voxel: :class:`PositionTable` stores those outputs as float32 rows over a support mask, grouped slice
by slice of the model's patch plane (:func:`support_voxels`), so that dense inference reads each
slice's rows as one block (:class:`RowFile`, plain file reads, no memory map, no unpickling), and
computes voxels outside the support exactly. The cache folder is ``$BRAINSEG_CACHE_DIR`` (default
``$XDG_CACHE_HOME/brainseg`` or ``~/.cache/brainseg``; ``off`` disables it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from brainseg.allocator import release_freed_memory
from brainseg.io.atomic import atomic_path
from brainseg.sampling.patches import PLANE_AXIS

__all__ = ["BATCH", "CACHE_ENV", "PositionTable", "RowFile", "cache_dir", "support_voxels"]

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder (``off`` disables the cache).
CACHE_ENV = "BRAINSEG_CACHE_DIR"
#: Rows per pass through the branch while building a table.
BATCH = 32768


def cache_dir() -> Path | None:
    """The folder of cached tables: ``$BRAINSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/brainseg`` or ``~/.cache/brainseg``.

    Returns
    -------
    Path or None
        None when ``BRAINSEG_CACHE_DIR`` is ``off`` (or empty).
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "brainseg"


def support_voxels(support: np.ndarray, plane: str) -> np.ndarray:
    """Support voxels ``(N, 3)`` (RAS+ indices) slice by slice of ``plane``: the order of a table's rows.

    Parameters
    ----------
    support : ndarray of bool, shape (D, H, W)
        The voxels with a stored row.
    plane : {'axial', 'coronal', 'sagittal'}
        The slices the rows are grouped by (:data:`brainseg.sampling.patches.PLANE_AXIS`).

    Returns
    -------
    ndarray of int64, shape (support.sum(), 3)
        Voxel indices ``(d, h, w)``, sorted by their index along the plane's axis, then in C order of
        the two other axes.
    """
    axis = PLANE_AXIS[plane]
    in_plane = np.argwhere(np.moveaxis(np.asarray(support, bool), axis, 0))  # (slice, a, b), C order
    return np.insert(np.delete(in_plane, 0, axis=1), axis, in_plane[:, 0], axis=1)


class RowFile:
    """The rows of a cached ``.npy`` table, read block by block with plain file reads.

    Reading instead of memory-mapping keeps the rows out of the process's resident memory (a mapped
    page read once counts there until the mapping goes; a read one only in the page cache).

    Parameters
    ----------
    path : Path
        A C-ordered 2-D ``.npy`` file (read without unpickling).

    Raises
    ------
    ValueError
        If the file is not a 2-D, C-ordered ``.npy`` array.
    """

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{path}: .npy format {version} not read here")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)

    def block(self, first: int, last: int) -> np.ndarray:
        """Rows ``first .. last - 1`` as an array ``(last - first, width)``.

        Parameters
        ----------
        first : int
            First row read (0-based).
        last : int
            One past the last row read (at most ``shape[0]``).

        Returns
        -------
        ndarray, shape (last - first, width), the file's dtype
            A fresh array read from the file.
        """
        width = self.shape[1]
        count = (last - first) * width
        data = np.fromfile(self.path, self.dtype, count, offset=self.offset + first * width * self.dtype.itemsize)
        return data.reshape(last - first, width)


class PositionTable:
    """Outputs of a position-only branch at every voxel of a support mask, looked up by voxel.

    The shared machinery of :class:`DistanceFeatureTable` and :class:`AtlasFeatureTable`: rows in
    :func:`support_voxels` order (one slice's rows are one block), in memory or in a cache file, and
    the exact computation (:meth:`compute`) for voxels outside the support. A subclass sets
    :attr:`kind` (the cache file's prefix), :attr:`width` and implements :meth:`compute` and :meth:`key`.
    The class has no constructor of its own: a subclass's ``__init__`` calls ``self._index(support, rows,
    plane)``, which sets the attributes below.

    Attributes
    ----------
    support : ndarray of bool, shape (D, H, W)
        The voxels with a stored row.
    rows : ndarray of float16 or float32, shape (support.sum(), width), RowFile, or None
        The output of each support voxel, slice by slice of ``plane``; None until :meth:`fill` or
        :meth:`load_or_build` provides them.
    plane : {'axial', 'coronal', 'sagittal'}
        The slices the rows are grouped by.
    index : ndarray of int32, shape (D, H, W)
        Each support voxel's row in ``rows`` (its rank in :func:`support_voxels` order), -1 elsewhere.
    kind : str
        Prefix of the cache file's name (class attribute).
    width : int
        Features per row (class attribute).
    batch : int
        Voxels per :meth:`compute` call while filling the rows (class attribute, :data:`BATCH`).

    Raises
    ------
    ValueError
        From ``_index``, if ``rows`` does not have one row of :attr:`width` features per support voxel.
    """

    kind = "position"
    width = 0
    #: Voxels per :meth:`compute` call while filling the rows.
    batch = BATCH

    def _index(self, support: np.ndarray, rows: np.ndarray | RowFile | None, plane: str) -> None:
        support = np.asarray(support, bool)
        if rows is not None and tuple(rows.shape) != (int(support.sum()), self.width):
            raise ValueError(f"expected rows of shape ({int(support.sum())}, {self.width}), got {rows.shape}")
        self.support, self.rows, self.plane = support, rows, plane
        # a support voxel's row is its rank in the plane's slice-by-slice C order (support_voxels' order)
        moved = np.ascontiguousarray(np.moveaxis(support, PLANE_AXIS[plane], 0))
        index = np.full(moved.shape, -1, np.int32)
        index.reshape(-1)[np.flatnonzero(moved)] = np.arange(int(support.sum()), dtype=np.int32)
        self.index = np.ascontiguousarray(np.moveaxis(index, 0, PLANE_AXIS[plane]))

    def compute(self, voxels: np.ndarray) -> np.ndarray:
        """The exact outputs ``(N, width)`` float32 at voxels ``(N, 3)`` of the reference grid.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the reference grid.

        Returns
        -------
        ndarray of float32, shape (N, width)

        Raises
        ------
        NotImplementedError
            Here; subclasses implement it.
        """
        raise NotImplementedError

    def key(self) -> str:
        """SHA-256 (first 24 hex digits) of everything the rows depend on, their order included.

        Returns
        -------
        str
            24 hex digits, part of the cache file's name.

        Raises
        ------
        NotImplementedError
            Here; subclasses implement it.
        """
        raise NotImplementedError

    def fill(self, dtype: type = np.float32) -> None:
        """Compute the rows of every support voxel (exact, stored as ``dtype``).

        Sets :attr:`rows` to an in-memory array ``(support.sum(), width)``, computed :attr:`batch` voxels at a
        time by :meth:`compute`.

        Parameters
        ----------
        dtype : type
            Storage type of the rows (e.g. ``np.float32``; :meth:`load_or_build` reads only float32 cache files).
        """
        voxels = support_voxels(self.support, self.plane)
        rows = np.empty((len(voxels), self.width), dtype)
        for start in range(0, len(voxels), self.batch):
            part = voxels[start : start + self.batch]
            rows[start : start + len(part)] = self.compute(part)
        self.rows = rows

    def load_or_build(self) -> bool:
        """Read the rows from the cache folder, computing and writing them there first if missing.

        Returns
        -------
        bool
            False when the cache is switched off (the rows are left as they are).
        """
        folder = cache_dir()
        if folder is None:
            return False
        path = folder / f"{self.kind}-{self.key()}.npy"
        expected = (int(self.support.sum()), self.width)
        if path.is_file():
            try:
                rows = RowFile(path)
                if rows.shape == expected and rows.dtype == np.float32:
                    self.rows = rows
                    return True
            except (OSError, ValueError):
                pass
            log.warning("ignoring the unreadable cache file %s: rebuilding it", path)
        log.warning(
            "computing this model's %s features on the reference grid once (%d voxels); cached in %s",
            self.kind,
            expected[0],
            folder,
        )
        self.fill()
        release_freed_memory()  # the computation's transient arrays (kept by keep_freed_memory())
        try:
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, self.rows, allow_pickle=False)
            self.rows = RowFile(path)  # read back by blocks: the first run need not hold every table in memory
        except OSError as error:
            log.warning("could not write the %s cache in %s (%s); using it for this run only", self.kind, folder, error)
        return True

    @torch.no_grad()
    def at(self, voxels: np.ndarray) -> torch.Tensor:
        """Outputs at voxels: stored rows, exact values outside the support.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the reference grid.

        Returns
        -------
        Tensor of float32, shape (N, width)
        """
        voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
        rows = self.index[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
        out = np.empty((len(voxels), self.width), np.float32)
        stored = rows >= 0
        if stored.any():
            inside = rows[stored]
            first, last = int(inside.min()), int(inside.max()) + 1  # one slice's rows are one block
            block = self.rows.block(first, last) if isinstance(self.rows, RowFile) else self.rows[first:last]
            out[stored] = block[inside - first]
        if not stored.all():
            out[~stored] = self.compute(voxels[~stored])
        return torch.from_numpy(out)
