"""DistBranch and ProbBranch outputs of the reference grid, computed once per model and cached on disk.

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

import numpy as np
import torch

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.landmarks import landmark_distances, voxel_centres_mm
from brainseg.inference.position_table import BATCH, PositionTable, RowFile, cache_dir
from brainseg.models.ganaye2018 import DistBranch

__all__ = ["AtlasFeatureTable", "DistanceFeatureTable", "distance_features", "table_key"]

log = logging.getLogger(__name__)


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
        """The branch from the voxels' landmark distances (:func:`distance_features`).

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the reference grid.

        Returns
        -------
        ndarray of float32, shape (N, branch.width)
            The branch's exact output at each voxel.
        """
        return distance_features(self.branch, voxels, self.affine, self.landmarks)

    def key(self) -> str:
        """:func:`table_key` of the branch, landmarks, grid, support and plane.

        Returns
        -------
        str
            24 hex digits, naming the cache file ``distbranch-KEY.npy``.
        """
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

        Parameters
        ----------
        branch, affine, landmarks, support, plane
            As in the class.

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
        """The branch of the atlas probabilities at the voxels (the per-voxel path of dense inference).

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the reference grid (the atlas' grid).

        Returns
        -------
        ndarray of float32, shape (N, atlas.num_classes)
            The branch's output (logit offsets, section 2.3) of the atlas' normalised class probabilities at
            each voxel.
        """
        voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
        out = np.empty((len(voxels), self.width), np.float32)
        for start in range(0, len(voxels), self.batch):
            part = voxels[start : start + self.batch]
            atlas = self.atlas.normalise(self.atlas.quantised(part))
            out[start : start + len(part)] = self.branch(torch.from_numpy(atlas)).numpy()
        return out

    def key(self) -> str:
        """SHA-256 of the branch's weights, the atlas (grid, boxes, stored values, floor), support and plane.

        Returns
        -------
        str
            Its first 24 hex digits, naming the cache file ``probbranch-KEY.npy``.
        """
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
        """Compute the float32 rows of every support voxel.

        Parameters
        ----------
        branch, atlas, support, plane
            As in the class.

        Returns
        -------
        AtlasFeatureTable
            Its rows in memory.
        """
        table = cls(branch, atlas, support, None, plane)
        table.fill()
        return table

    @classmethod
    def cached(
        cls, branch: torch.nn.Module, atlas: ProbabilisticAtlas, support: np.ndarray, plane: str = "axial"
    ) -> AtlasFeatureTable | None:
        """The table from the cache folder, built and written there first if missing (None: cache off).

        Parameters
        ----------
        branch, atlas, support, plane
            As in the class.

        Returns
        -------
        AtlasFeatureTable or None
            None when the cache is switched off (the caller then computes the branch per scan); a table kept
            in memory when the folder cannot be written.
        """
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
    """SHA-256 (first 24 hex digits) of everything a table's rows depend on, their order included.

    Parameters
    ----------
    branch : DistBranch
        Its weights and settings (representation, convolutions, RBF and its ``alpha``) enter the key.
    affine : ndarray of float, shape (4, 4)
        Voxel -> mm of the reference grid.
    landmarks : ndarray of float, shape (L, 3)
        Landmark positions in mm.
    support : ndarray of bool, shape (D, H, W)
        The voxels with a stored row.
    plane : {'axial', 'coronal', 'sagittal'}
        The slices the rows are grouped by (their order).

    Returns
    -------
    str
        24 hex digits.
    """
    digest = hashlib.sha256(plane.encode())
    _update_with_weights(digest, branch)
    for array in (np.asarray(affine, np.float64), np.asarray(landmarks, np.float64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(np.asarray(support.shape, np.int64).tobytes())
    digest.update(np.packbits(np.asarray(support, bool)).tobytes())
    digest.update(repr((branch.representation, branch.use_conv, branch.use_rbf, branch.alpha)).encode())
    return digest.hexdigest()[:24]
