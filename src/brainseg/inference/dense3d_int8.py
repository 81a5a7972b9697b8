"""DeepNAT's labels with int8 fully connected layers, Eq. 3 tile by tile, doubtful voxels checked in float32.

The fully connected layers of DeepNAT (Wachinger et al. 2018, Table 1: 1,728 -> 1,024 -> 512 -> the heads)
are about 80 % of a dense pass's multiply-adds (:mod:`brainseg.inference.dense3d`). Where only the class
map is wanted, :func:`segment_dense3d_int8` runs the first two of them in int8
(:class:`~brainseg.inference.int8.Int8Linear`, as the default model's head does, docs/speed.md) and then
checks in float32 every voxel whose label the int8 rounding could have changed:

1. Tile by tile (the tiles of :mod:`~brainseg.inference.dense3d`), the conv stage runs over the tile
   grown by the heads' reach ``r`` (1 voxel for 7 and 27 tasks) on every side, and the int8 head over
   the brain voxels of that grown box (the *sources*), so that every head pointing at a brain voxel of
   the tile (a *target*) is at hand: Eq. 3 is then a gather over the tile's own sources, with no sums
   carried from tile to tile.
2. A target whose two largest Eq. 3 probabilities ``m1 >= m2`` satisfy ``log m1 - log m2 < margin``
   is *doubtful*: every source pointing at it is computed again in float32 (both networks of a
   hierarchy: their conv maps are kept for the tile), and its mean recomputed from those.

Why this keeps float32's labels: if int8 moves no logit of a head by more than ``delta``, each head's
log-softmax moves by at most ``2 delta`` (a hierarchy's combined log-probabilities by ``4 delta``), so
every Eq. 3 mean moves by a factor within ``exp(+-2 delta)`` (``exp(+-4 delta)``) and the order of two
classes cannot change while ``log m1 - log m2 > 4 delta`` (``8 delta``). That bound is a worst case (every
logit moved its most, in the worst direction); :data:`INT8_MARGIN` is set from measurement instead
(``benchmarks/bench_deepnat_int8.py --sweep``, docs/deepnat.md): on a validation subject the shipped
hierarchy's int8 logits moved by at most 0.080 (the bound would ask for 0.64), int8 without any check
relabelled 0.03 % of the brain, and a margin of 0.05 relabelled nothing; 0.1 is twice that.

The output layers (512 -> ``T C``), the coordinates' columns of the second layer and the convolutions
stay float32. The probabilities are never computed in int8: :func:`~brainseg.inference.dense3d.segment_dense3d`
asked for probabilities runs the float32 pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from brainseg.inference.dense3d_network import DEFAULT_MEMORY_BYTES, ConvCells, DenseHead
from brainseg.inference.dense3d_runner import DenseRunner
from brainseg.inference.int8 import Int8Report
from brainseg.models.wachinger2018 import PATCH_SIZE, DeepNATModel

__all__ = ["INT8_MARGIN", "GrownTile", "log_gap", "segment_dense3d_int8", "tile_runner", "tiles"]

#: Gap of the log Eq. 3 probabilities below which a voxel's label is checked in float32 (see the module
#: docstring; measured on validation subjects by ``benchmarks/bench_deepnat_int8.py --sweep``).
INT8_MARGIN = 0.1


def tile_runner(
    model: DeepNATModel,
    image: np.ndarray,
    mask: np.ndarray,
    coordinates: np.ndarray | None,
    tile_size: int | None,
    memory_bytes: int,
    background: float,
    logit_bias: np.ndarray | None,
) -> tuple[DenseRunner, int]:
    """The dense pass's state with tiles sized for grown tiles, and the heads' reach ``r`` in voxels.

    Without ``tile_size``, the tile side leaves room for the rim of ``r`` voxels on each side within the
    conv stage's budget, and for the sources' per-task probabilities (float32, ``T C`` per voxel).

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade
        In eval mode.
    image : ndarray of float32, shape (D, H, W)
        Preprocessed intensities.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask: the voxels to classify.
    coordinates : ndarray of float32, shape (K, D, H, W), or None
        Per-voxel coordinates; None or empty when the network takes none.
    tile_size : int or None
        Tile side along the first two axes in voxels, before growing; None: chosen from ``memory_bytes``.
    memory_bytes : int
        Budget of the conv stage of one tile, in bytes; without ``tile_size`` also the budget of a grown
        tile's per-task probabilities.
    background : float
        Value of voxels outside the volume.
    logit_bias : ndarray of float, shape (C,), or None
        Added to every head's logits before the softmax.

    Returns
    -------
    runner : DenseRunner
        The dense pass, its :attr:`~DenseRunner.tile` reduced by ``2 r`` (at least 1) when chosen here.
    reach : int
        ``r``, the heads' largest offset along any axis, in voxels (0 for one task, 1 for 7 or 27).

    Raises
    ------
    ValueError
        If the model is in training mode, the shapes disagree or ``tile_size < 1`` (:class:`DenseRunner`).
    """
    runner = DenseRunner(model, image, mask, coordinates, tile_size, memory_bytes, background, 1, logit_bias)
    reach = int(np.abs(model.offsets).max())
    if tile_size is None:
        width = runner.box[2][1] - runner.box[2][0] + 2 * reach if runner.box else 1
        most = memory_bytes // (4 * model.tasks * model.num_classes * width)
        runner.tile = max(min(runner.tile, int(np.sqrt(most))) - 2 * reach, 1)
    return runner, reach


def tiles(runner: DenseRunner) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(lo, hi)`` of each tile's mask bounding box over the whole volume (:meth:`DenseRunner.tile_boxes`).

    Parameters
    ----------
    runner : DenseRunner
        The dense pass (:func:`tile_runner`).

    Yields
    ------
    lo, hi : ndarray of int, shape (3,)
        The bounding box ``[lo, hi)``, in voxels, of the brain voxels of each tile that holds any, slab by slab.
    """
    for z0, z1 in runner.slabs():
        yield from runner.tile_boxes(z0, z1)


def log_gap(means: torch.Tensor) -> torch.Tensor:
    """``log m1 - log m2`` of each row's two largest probabilities ``(n, C) -> (n,)``; inf where ``m2 = 0``.

    Parameters
    ----------
    means : torch.Tensor
        ``(n, C)`` float32 Eq. 3 probabilities, ``C >= 2``.

    Returns
    -------
    torch.Tensor
        ``(n,)`` float32, >= 0 (NaN for a row of zeros).
    """
    top = means.topk(2, dim=1).values
    return torch.log(top[:, 0]) - torch.log(top[:, 1])


class GrownTile:
    """A tile grown by the heads' reach: its sources, their conv maps (one per network), Eq. 3's gather indices.

    Parameters
    ----------
    runner : DenseRunner
        The dense pass (:func:`tile_runner`).
    lo, hi : ndarray of int, shape (3,)
        The tile's mask bounding box ``[lo, hi)``, voxel indices (:func:`tiles`).
    reach : int
        The heads' largest offset along any axis, in voxels.

    Attributes
    ----------
    start : ndarray of int, shape (3,)
        First voxel of the grown box ``[lo - reach, hi + reach)`` clipped to the volume.
    local : ndarray of int64, shape (S, 3)
        The sources: brain voxels of the grown box, box-local (``np.argwhere`` order).
    targets : ndarray of int64, shape (n, 3)
        The brain voxels of the tile itself, box-local.
    sources : ndarray of int64, shape (n, T)
        Row in :attr:`local` of the source of head ``t`` at each target (``target - offsets[t]``), -1
        where that voxel is outside the brain or the volume (Eq. 3 drops it).
    """

    def __init__(self, runner: DenseRunner, lo: np.ndarray, hi: np.ndarray, reach: int) -> None:
        shape = np.array(runner.mask.shape)
        self.runner = runner
        self.start, stop = np.maximum(lo - reach, 0), np.minimum(hi + reach, shape)
        box = tuple(slice(a, b) for a, b in zip(self.start, stop))
        region = runner.padded[tuple(slice(a, b + PATCH_SIZE - 1) for a, b in zip(self.start, stop))]
        x = torch.from_numpy(np.ascontiguousarray(region))[None, None].to(runner.device)
        self.cells = [ConvCells(stage(x)) for stage in runner.stages]
        inside = runner.mask[box]
        self.local = np.argwhere(inside)  # sources, box-local
        index = np.full(inside.shape, -1, np.int64)
        index[inside] = np.arange(len(self.local))
        # targets: the mask voxels of the tile itself; source of head t at target v is v - offsets[t]
        target_box = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, self.start))
        self.targets = np.argwhere(inside[target_box]) + (lo - self.start)  # box-local
        offsets = runner.model.offsets
        source = self.targets[:, None, :] - offsets[None]  # (n, T, 3)
        valid = ((source >= 0) & (source < inside.shape)).all(axis=2)
        rows = np.full(valid.shape, -1, np.int64)
        rows[valid] = index[tuple(source[valid].T)]
        self.sources = rows  # (n, T): row of the source voxel, -1 where none (outside the mask or volume)

    def logits(self, heads: list, rows: np.ndarray) -> torch.Tensor:
        """Combined per-task logits ``(n, T, C)`` (bias added) of the sources ``rows``, by the given heads.

        Parameters
        ----------
        heads : list of DenseHead
            One per network of the model (float32 or int8), in :attr:`DenseRunner.members` order.
        rows : ndarray of int, shape (n,)
            Rows of :attr:`local`.

        Returns
        -------
        torch.Tensor
            ``(n, T, C)`` float32 on the runner's device: the network's logits, or a hierarchy's combined
            log-probabilities, plus the runner's logit bias.
        """
        runner = self.runner
        local = torch.from_numpy(self.local[rows]).to(runner.device)
        coords = None
        if runner.coordinates is not None:
            voxels = self.local[rows] + self.start
            values = runner.coordinates[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T
            coords = torch.from_numpy(np.asarray(values, np.float32)).to(runner.device)
        outputs = [head(cells.features(local), coords) for head, cells in zip(heads, self.cells)]
        logits = runner.combine(*outputs) if runner.combine is not None else outputs[0]
        return logits + runner.bias if runner.bias is not None else logits

    def probabilities(self, heads: list, voxel_batch: int) -> torch.Tensor:
        """Per-task softmax of every source by ``heads``, flat ``(S T + 1, C)``: row ``s T + t``, a zero row last.

        Parameters
        ----------
        heads : list of DenseHead
            One per network of the model, as for :meth:`logits`.
        voxel_batch : int
            Sources per pass through the heads.

        Returns
        -------
        torch.Tensor
            ``(S T + 1, C)`` float32 on the CPU; the last row, all zeros, stands for a missing source in
            :meth:`means`.
        """
        model = self.runner.model
        flat = torch.zeros((len(self.local) * model.tasks + 1, model.num_classes))
        for start in range(0, len(self.local), voxel_batch):
            rows = np.arange(start, min(start + voxel_batch, len(self.local)))
            self.replace(flat, rows, heads)
        return flat

    def replace(self, flat: torch.Tensor, rows: np.ndarray, heads: list) -> None:
        """Overwrite the sources ``rows``' per-task softmax in ``flat`` with that of ``heads``.

        Parameters
        ----------
        flat : torch.Tensor
            ``(S T + 1, C)`` float32, from :meth:`probabilities`; changed in place.
        rows : ndarray of int, shape (n,)
            Rows of :attr:`local`.
        heads : list of DenseHead
            One per network of the model, as for :meth:`logits`.
        """
        tasks = self.runner.model.tasks
        probs = torch.softmax(self.logits(heads, rows), dim=2)
        flat[torch.from_numpy((rows[:, None] * tasks + np.arange(tasks)).reshape(-1))] = probs.reshape(
            -1, probs.shape[2]
        ).to(flat.device)  # the heads run on the runner's device, ``flat`` lives on the CPU

    def means(self, flat: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
        """Eq. 3 means ``(n, C)`` of ``targets`` (indices into :attr:`targets`) from :meth:`probabilities`' ``flat``.

        Parameters
        ----------
        flat : torch.Tensor
            ``(S T + 1, C)`` float32, from :meth:`probabilities`.
        targets : ndarray of int, shape (n,)
            Indices into :attr:`targets`.

        Returns
        -------
        torch.Tensor
            ``(n, C)`` float32: each target's mean over the heads whose source is a brain voxel of the volume.
        """
        tasks = self.runner.model.tasks
        rows = self.sources[targets]
        index = np.where(rows >= 0, rows * tasks + np.arange(tasks), len(flat) - 1)
        total = flat[torch.from_numpy(index.reshape(-1))].view(len(targets), tasks, -1).sum(dim=1)
        return total / torch.from_numpy((rows >= 0).sum(axis=1)).to(total)[:, None]


@torch.no_grad()
def segment_dense3d_int8(
    model: DeepNATModel,
    image: np.ndarray,
    mask: np.ndarray,
    coordinates: np.ndarray | None = None,
    *,
    margin: float = INT8_MARGIN,
    tile_size: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    background: float = 0.0,
    voxel_batch: int = 4096,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
    report: Int8Report | None = None,
) -> np.ndarray:
    """Class map of a volume (arg-max of the Eq. 3 probabilities) with int8 fully connected layers.

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade
        In eval mode.
    image, mask, coordinates, tile_size, memory_bytes, background, progress, logit_bias
        As for :func:`~brainseg.inference.dense3d.segment_dense3d`.
    margin : float
        Voxels whose two largest Eq. 3 probabilities lie less than this apart in log are computed again
        in float32 (``inf``: every voxel, float32's labels exactly).
    voxel_batch : int
        Targets per gather of Eq. 3.
    report : Int8Report, optional
        Filled in with the brain voxels labelled and those checked in float32.

    Returns
    -------
    ndarray of uint8, shape (D, H, W)
        Class indices; 0 (background) outside the mask. Equal to ``segment_dense3d(...)[0]`` wherever
        int8 moved no logit by more than ``margin / 4`` (``margin / 8`` for a hierarchy).

    Raises
    ------
    ValueError
        If the model is in training mode, the shapes disagree, or the model has more than 256 classes.
    """
    if model.num_classes > 256:
        raise ValueError(f"the class map is uint8: at most 256 classes, the network has {model.num_classes}")
    runner, reach = tile_runner(model, image, mask, coordinates, tile_size, memory_bytes, background, logit_bias)
    int8_heads = [DenseHead(member, int8=True) for member in runner.members]
    float_heads = runner.heads
    classes = np.zeros(runner.mask.shape, np.uint8)
    labelled = checked = 0
    boxes = list(tiles(runner))
    for lo, hi in tqdm(boxes, desc="tiles", unit="tile", disable=not progress, leave=False):
        tile = GrownTile(runner, lo, hi, reach)
        flat = tile.probabilities(int8_heads, voxel_batch)
        labels = np.empty(len(tile.targets), np.uint8)
        doubtful = []
        for s in range(0, len(tile.targets), voxel_batch):
            which = np.arange(s, min(s + voxel_batch, len(tile.targets)))
            means = tile.means(flat, which)
            gap = log_gap(means)
            labels[which] = means.argmax(dim=1).numpy()
            doubtful.append(which[(gap < margin).numpy()])
        doubt = np.concatenate(doubtful)
        if len(doubt):
            again = np.unique(tile.sources[doubt])
            again = again[again >= 0]
            for s in range(0, len(again), voxel_batch):
                tile.replace(flat, again[s : s + voxel_batch], float_heads)
            for s in range(0, len(doubt), voxel_batch):
                which = doubt[s : s + voxel_batch]
                labels[which] = tile.means(flat, which).argmax(dim=1).numpy()
        voxels = tile.targets + tile.start
        classes[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = labels
        labelled, checked = labelled + len(labels), checked + len(doubt)
        del tile
    if report is not None:
        report.voxels, report.recomputed = labelled, checked
    return classes
