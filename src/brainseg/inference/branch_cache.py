"""DistBranch features of the reference grid, computed once per model and cached on disk.

In the reference space the DistBranch input of Ganaye et al. (2018, section 2.2), the distances from
a voxel to the fixed landmarks of the template grid, depends on the voxel's position alone, and so
does the branch's output. A reference-space model therefore needs it once per template voxel, not
once per scan: :class:`DistanceFeatureTable` computes the branch over the template voxels where
brains land (the atlas support: the voxels some training label map called brain, grown by the
atlas' smoothing) and stores the outputs as float32 rows, ``(N, width)``, in a cache file. A scan's
brain voxels then read their rows; voxels outside the support (a brain registered beyond every
training brain) are computed exactly on the spot.

The cache lives in ``$BRAINSEG_CACHE_DIR`` (default ``$XDG_CACHE_HOME/brainseg`` or
``~/.cache/brainseg``; ``off`` disables it), one ``.npy`` file per set of branch weights, landmarks,
grid, support and row order (a SHA-256 of all of them names it), written to a temporary name and
renamed, read without unpickling. The rows are stored slice by slice of the model's patch plane, so
that dense inference reads each slice's rows as one block with a plain file read: memory-mapping the
file put every row read into the process's resident memory (peak RSS 2.89 GB on subject 1000 against
2.46 GB without the table). The default model's table is 2.3 M rows x 128 features, 1.2 GB,
built in about 80 s on 2 cores on the first run (see ``docs/speed.md``).

Exactness: a row equals the branch's own output (tested to 1e-5), so the labels are those of the
per-scan computation. Rows stored as float16 (half the file) changed 0.13 % of validation subject
1000's brain voxels' labels (mean Dice +0.00001, no structure by more than 0.0016): more than the
0.1 % this project allows a lower precision, so the cache stays float32.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.landmarks import landmark_distances, voxel_centres_mm
from brainseg.io.atomic import atomic_path
from brainseg.models.ganaye2018 import DistBranch
from brainseg.sampling.patches import PLANE_AXIS

__all__ = [
    "AtlasFeatureTable",
    "DistanceFeatureTable",
    "PositionTable",
    "RowFile",
    "cache_dir",
    "distance_features",
    "support_voxels",
]

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


@torch.no_grad()
def distance_features(branch: DistBranch, voxels: np.ndarray, affine: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The branch's output at voxels, computed from their landmark distances (the exact path).

    Parameters
    ----------
    branch : DistBranch
        In eval mode.
    voxels : ndarray of int, shape (N, 3)
        Voxel indices on the grid of ``affine``.
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm.
    landmarks : ndarray of float, shape (L, 3)
        Landmark positions in mm (``L = branch.n ** 3``).

    Returns
    -------
    ndarray of float32, shape (N, branch.width)
    """
    voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
    out = np.empty((len(voxels), branch.width), np.float32)
    for start in range(0, len(voxels), BATCH):
        part = voxels[start : start + BATCH]
        distances = landmark_distances(voxel_centres_mm(part, affine), landmarks)
        out[start : start + len(part)] = branch(torch.from_numpy(distances)).numpy()
    return out


def support_voxels(support: np.ndarray, plane: str) -> np.ndarray:
    """Support voxels ``(N, 3)`` (RAS+ indices) slice by slice of ``plane``: the order of a table's rows."""
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
        """Rows ``first .. last - 1`` as an array ``(last - first, width)``."""
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

    Parameters
    ----------
    support : ndarray of bool, shape (D, H, W)
        The voxels with a stored row.
    rows : ndarray of float16 or float32, shape (support.sum(), width), RowFile, or None
        The output of each support voxel, slice by slice of ``plane``; None until :meth:`fill` or
        :meth:`load_or_build` provides them.
    plane : {'axial', 'coronal', 'sagittal'}
        The slices the rows are grouped by.

    Raises
    ------
    ValueError
        If ``rows`` does not have one row of :attr:`width` features per support voxel.
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
        self.index = np.full(support.shape, -1, np.int32)
        self.index[tuple(support_voxels(support, plane).T)] = np.arange(int(support.sum()), dtype=np.int32)

    def compute(self, voxels: np.ndarray) -> np.ndarray:
        """The exact outputs ``(N, width)`` float32 at voxels ``(N, 3)`` of the reference grid."""
        raise NotImplementedError

    def key(self) -> str:
        """SHA-256 (first 24 hex digits) of everything the rows depend on, their order included."""
        raise NotImplementedError

    def fill(self, dtype: type = np.float32) -> None:
        """Compute the rows of every support voxel (exact, stored as ``dtype``)."""
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


class DistanceFeatureTable(PositionTable):
    """DistBranch outputs of every voxel of a support mask, looked up by voxel (Ganaye et al. 2018, sec. 2.2).

    Parameters
    ----------
    branch : DistBranch
        The network's branch, in eval mode (used for voxels outside the support).
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm of the reference grid.
    landmarks : ndarray of float, shape (L, 3)
        Landmark positions in mm.
    support, rows, plane
        As in :class:`PositionTable` (``rows`` of ``branch.width`` features).

    Raises
    ------
    ValueError
        If ``rows`` does not have one row of ``branch.width`` features per support voxel.
    """

    kind = "distbranch"

    def __init__(
        self,
        branch: DistBranch,
        affine: np.ndarray,
        landmarks: np.ndarray,
        support: np.ndarray,
        rows: np.ndarray | RowFile | None,
        plane: str = "axial",
    ) -> None:
        self.branch, self.affine, self.landmarks = branch, np.asarray(affine, float), landmarks
        self.width = branch.width
        self._index(support, rows, plane)

    def compute(self, voxels: np.ndarray) -> np.ndarray:
        """The branch from the voxels' landmark distances (:func:`distance_features`)."""
        return distance_features(self.branch, voxels, self.affine, self.landmarks)

    def key(self) -> str:
        """:func:`table_key` of the branch, landmarks, grid, support and plane."""
        return table_key(self.branch, self.affine, self.landmarks, self.support, self.plane)

    @classmethod
    def build(
        cls,
        branch: DistBranch,
        affine: np.ndarray,
        landmarks: np.ndarray,
        support: np.ndarray,
        dtype: type = np.float32,
        plane: str = "axial",
    ) -> DistanceFeatureTable:
        """Compute the rows of every support voxel (exact, stored as ``dtype``).

        Parameters
        ----------
        branch, affine, landmarks, support, plane
            As in the class.
        dtype : numpy dtype
            float32 (exact: the cache's type) or float16 (half the size; see the module notes).

        Returns
        -------
        DistanceFeatureTable
        """
        table = cls(branch, affine, landmarks, support, None, plane)
        table.fill(dtype)
        return table

    @classmethod
    def cached(
        cls, branch: DistBranch, affine: np.ndarray, landmarks: np.ndarray, support: np.ndarray, plane: str = "axial"
    ) -> DistanceFeatureTable | None:
        """The table from the cache folder, built and written there first if missing.

        Returns
        -------
        DistanceFeatureTable or None
            None when the cache is switched off (the caller then computes the branch per scan, as
            without a cache); a table kept in memory when the folder cannot be written.
        """
        if cache_dir() is None:  # before indexing the support: nothing to read or write
            return None
        table = cls(branch, affine, landmarks, support, None, plane)
        table.load_or_build()
        return table


class AtlasFeatureTable(PositionTable):
    """ProbBranch outputs of every voxel of a support mask, looked up by voxel (Ganaye et al. 2018, sec. 2.3).

    In the reference space the ProbBranch reads the atlas' class probabilities at the voxel, a
    function of its position alone, so its output (added to the logits) is one too: stored once per
    model like the DistBranch's, this spares each scan the atlas lookup of every brain voxel and the
    branch's three layers.

    Parameters
    ----------
    branch : ProbBranch
        The network's branch, in eval mode (used for voxels outside the support).
    atlas : ProbabilisticAtlas
        The model's atlas on the reference grid.
    support, rows, plane
        As in :class:`PositionTable` (``rows`` of ``atlas.num_classes`` features).

    Raises
    ------
    ValueError
        If ``rows`` does not have one row of ``atlas.num_classes`` values per support voxel.
    """

    kind = "probbranch"
    #: The atlas lookup walks every class's box once per call: fewer, larger calls.
    batch = 1 << 18

    def __init__(
        self,
        branch: torch.nn.Module,
        atlas: ProbabilisticAtlas,
        support: np.ndarray,
        rows: np.ndarray | RowFile | None,
        plane: str = "axial",
    ) -> None:
        self.branch, self.atlas, self.width = branch, atlas, int(atlas.num_classes)
        self._index(support, rows, plane)

    @torch.no_grad()
    def compute(self, voxels: np.ndarray) -> np.ndarray:
        """The branch of the atlas probabilities at the voxels (the per-voxel path of dense inference)."""
        voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
        out = np.empty((len(voxels), self.width), np.float32)
        for start in range(0, len(voxels), self.batch):
            part = voxels[start : start + self.batch]
            atlas = self.atlas.normalise(self.atlas.quantised(part))
            out[start : start + len(part)] = self.branch(torch.from_numpy(atlas)).numpy()
        return out

    def key(self) -> str:
        """SHA-256 of the branch's weights, the atlas (grid, boxes, stored values, floor), support and plane."""
        digest = hashlib.sha256(self.plane.encode())
        _update_with_weights(digest, self.branch)
        atlas = self.atlas
        digest.update(repr((tuple(atlas.shape), float(atlas.floor), atlas.num_classes)).encode())
        digest.update(np.ascontiguousarray(np.asarray(atlas.boxes, np.int64)).tobytes())
        for values in atlas.values:
            digest.update(np.ascontiguousarray(values).tobytes())
        digest.update(np.asarray(self.support.shape, np.int64).tobytes())
        digest.update(np.packbits(self.support).tobytes())
        return digest.hexdigest()[:24]

    @classmethod
    def build(
        cls, branch: torch.nn.Module, atlas: ProbabilisticAtlas, support: np.ndarray, plane: str = "axial"
    ) -> AtlasFeatureTable:
        """Compute the float32 rows of every support voxel."""
        table = cls(branch, atlas, support, None, plane)
        table.fill()
        return table

    @classmethod
    def cached(
        cls, branch: torch.nn.Module, atlas: ProbabilisticAtlas, support: np.ndarray, plane: str = "axial"
    ) -> AtlasFeatureTable | None:
        """The table from the cache folder, built and written there first if missing (None: cache off)."""
        if cache_dir() is None:  # before indexing the support: nothing to read or write
            return None
        table = cls(branch, atlas, support, None, plane)
        table.load_or_build()
        return table


def _update_with_weights(digest: hashlib._Hash, module: torch.nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())


def table_key(
    branch: DistBranch, affine: np.ndarray, landmarks: np.ndarray, support: np.ndarray, plane: str = "axial"
) -> str:
    """SHA-256 (first 24 hex digits) of everything a table's rows depend on, their order included."""
    digest = hashlib.sha256(plane.encode())
    _update_with_weights(digest, branch)
    for array in (np.asarray(affine, np.float64), np.asarray(landmarks, np.float64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(np.asarray(support.shape, np.int64).tobytes())
    digest.update(np.packbits(np.asarray(support, bool)).tobytes())
    digest.update(repr((branch.representation, branch.use_conv, branch.use_rbf, branch.alpha)).encode())
    return digest.hexdigest()[:24]
