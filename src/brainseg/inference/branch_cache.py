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
grid and support (a SHA-256 of all of them names it), written to a temporary name and renamed, read
memory-mapped without unpickling. The default model's table is 2.3 M rows x 128 features, 1.2 GB,
built in about half a minute on the first run (see ``docs/speed.md``).

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

from brainseg.features.landmarks import landmark_distances, voxel_centres_mm
from brainseg.io.atomic import atomic_path
from brainseg.models.ganaye2018 import DistBranch

__all__ = ["DistanceFeatureTable", "cache_dir", "distance_features"]

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


class DistanceFeatureTable:
    """DistBranch outputs of every voxel of a support mask, looked up by voxel (Ganaye et al. 2018, sec. 2.2).

    Parameters
    ----------
    branch : DistBranch
        The network's branch, in eval mode (used for voxels outside the support).
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm of the reference grid.
    landmarks : ndarray of float, shape (L, 3)
        Landmark positions in mm.
    support : ndarray of bool, shape (D, H, W)
        The voxels with a stored row.
    rows : ndarray of float16 or float32, shape (support.sum(), branch.width)
        The branch output of each support voxel, in ``np.argwhere(support)`` order (may be memory-mapped).

    Raises
    ------
    ValueError
        If ``rows`` does not have one row of ``branch.width`` features per support voxel.
    """

    def __init__(
        self, branch: DistBranch, affine: np.ndarray, landmarks: np.ndarray, support: np.ndarray, rows: np.ndarray
    ) -> None:
        support = np.asarray(support, bool)
        if rows.shape != (int(support.sum()), branch.width):
            raise ValueError(f"expected rows of shape ({int(support.sum())}, {branch.width}), got {rows.shape}")
        self.branch, self.affine, self.landmarks, self.rows = branch, np.asarray(affine, float), landmarks, rows
        self.index = np.full(support.shape, -1, np.int32)
        self.index[support] = np.arange(int(support.sum()), dtype=np.int32)

    @classmethod
    def build(
        cls,
        branch: DistBranch,
        affine: np.ndarray,
        landmarks: np.ndarray,
        support: np.ndarray,
        dtype: type = np.float32,
    ) -> DistanceFeatureTable:
        """Compute the rows of every support voxel (exact, stored as ``dtype``).

        Parameters
        ----------
        branch, affine, landmarks, support
            As in the class.
        dtype : numpy dtype
            float32 (exact: the cache's type) or float16 (half the size; see the module notes).

        Returns
        -------
        DistanceFeatureTable
        """
        voxels = np.argwhere(support)
        rows = np.empty((len(voxels), branch.width), dtype)
        for start in range(0, len(voxels), BATCH):
            part = voxels[start : start + BATCH]
            rows[start : start + len(part)] = distance_features(branch, part, affine, landmarks)
        return cls(branch, affine, landmarks, support, rows)

    @classmethod
    def cached(
        cls, branch: DistBranch, affine: np.ndarray, landmarks: np.ndarray, support: np.ndarray
    ) -> DistanceFeatureTable | None:
        """The table from the cache folder, built and written there first if missing.

        Returns
        -------
        DistanceFeatureTable or None
            None when the cache is switched off or its folder cannot be written
            (the caller then computes the branch per scan, as without a cache).
        """
        folder = cache_dir()
        if folder is None:
            return None
        path = folder / f"distbranch-{table_key(branch, affine, landmarks, support)}.npy"
        expected = (int(support.sum()), branch.width)
        if path.is_file():
            try:
                rows = np.load(path, mmap_mode="r", allow_pickle=False)
                if rows.shape == expected and rows.dtype == np.float32:
                    return cls(branch, affine, landmarks, support, rows)
            except (OSError, ValueError):
                pass
            log.warning("ignoring the unreadable cache file %s: rebuilding it", path)
        log.warning(
            "computing this model's DistBranch features on the reference grid once (%d voxels); cached in %s",
            expected[0],
            folder,
        )
        table = cls.build(branch, affine, landmarks, support)
        try:
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, table.rows, allow_pickle=False)
        except OSError as error:
            log.warning("could not write the DistBranch cache in %s (%s); using it for this run only", folder, error)
        return table

    @torch.no_grad()
    def at(self, voxels: np.ndarray) -> torch.Tensor:
        """Branch outputs at voxels: stored rows, exact values outside the support.

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
        out = np.empty((len(voxels), self.branch.width), np.float32)
        stored = rows >= 0
        out[stored] = self.rows[rows[stored]]
        if not stored.all():
            out[~stored] = distance_features(self.branch, voxels[~stored], self.affine, self.landmarks)
        return torch.from_numpy(out)


def table_key(branch: DistBranch, affine: np.ndarray, landmarks: np.ndarray, support: np.ndarray) -> str:
    """SHA-256 (first 24 hex digits) of everything a table's rows depend on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(branch.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    for array in (np.asarray(affine, np.float64), np.asarray(landmarks, np.float64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(np.asarray(support.shape, np.int64).tobytes())
    digest.update(np.packbits(np.asarray(support, bool)).tobytes())
    digest.update(repr((branch.representation, branch.use_conv, branch.use_rbf, branch.alpha)).encode())
    return digest.hexdigest()[:24]
