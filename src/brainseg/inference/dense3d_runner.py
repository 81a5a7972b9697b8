"""The tiled dense pass of DeepNAT: padded image, tiles, conv stages, heads (used by :mod:`~brainseg.inference.dense3d`).

A :class:`DenseRunner` runs :class:`~brainseg.models.wachinger2018.DeepNAT`'s convolutions fully
convolutionally over tiles of a zero-padded volume (:mod:`brainseg.inference.dense3d_network`: the
stride-2 pool made stride 1, later convolutions dilated) and its fully connected heads on the tile's
brain voxels only, yielding per-task probabilities chunk by chunk.

Tiles and memory
----------------
The volume is processed in tiles of ``t x t`` voxels along the first two
axes (the tile's mask bounding box along the third) with the patch's halo,
11 voxels before and 12 after, on each side. The live tensors of the conv
stage of a tile of ``(t0, t1, t2)`` output voxels take about
``4 B x 2 x [c1 V(18) + c2 V(9) + c3 V(5)]``, with ``V(m) = (t0 + m)(t1 +
m)(t2 + m)`` and the widths ``(c1, c2, c3)`` (:func:`~brainseg.inference.dense3d_network.conv_stage_bytes`: each
map and one copy of it, the pooling's or the convolution library's);
:func:`~brainseg.inference.dense3d_network.choose_tile_size` picks the largest ``t`` that keeps this under
``memory_bytes``. A larger tile wastes less on the halo, whose
convolutions are thrown away: conv2 runs on ``(t + 9)^2 / t^2`` times the
tile's voxels. The fully connected layers run on at most ``voxel_batch``
voxels at a time. The callers (:mod:`brainseg.inference.dense3d`,
:mod:`brainseg.inference.dense3d_int8`) combine the heads' outputs.

The hierarchy
-------------
A :class:`~brainseg.models.wachinger2018.DeepNATCascade` runs both of its
networks densely over every mask voxel, tile by tile, one conv stage at a
time: the foreground network's per-task logits of the tile's voxels are kept
(2 classes each), then the structure network's conv stage runs and its logits
are combined with them chunk by chunk
(:func:`~brainseg.models.wachinger2018.cascade_log_probabilities`). The
combined log-probabilities then take the place of one network's logits: the
``logit_bias`` is added to them, the softmax renormalises (``P exp(b) /
sum``), and Eq. 3 averages the heads. Peak memory is one conv stage's, as for
a single network; time is about twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from brainseg.inference.dense3d_network import ConvCells, DenseConvStage, DenseHead, choose_tile_size
from brainseg.inference.dense_priors import logit_bias_tensor
from brainseg.models.wachinger2018 import (
    PATCH_PADDING,
    PATCH_SIZE,
    DeepNAT,
    DeepNATCascade,
    DeepNATModel,
    cascade_log_probabilities,
)

__all__ = ["DenseRunner", "as_coordinates", "check_deepnat_inputs"]


def as_coordinates(coordinates: np.ndarray | None) -> np.ndarray | None:
    """``coordinates``, or None when it holds no channels.

    ``K = 0`` channels is how :mod:`brainseg.features.coordinates` returns "none" for a network without them.

    Parameters
    ----------
    coordinates : ndarray of float32, shape (K, D, H, W), or None

    Returns
    -------
    ndarray of shape (K, D, H, W) with K >= 1, or None
    """
    return None if coordinates is None or len(coordinates) == 0 else coordinates


def _members(model: DeepNATModel) -> tuple[list[DeepNAT], Callable[..., torch.Tensor] | None]:
    """The networks whose convolutions run densely, and how their logits combine (None: the only one's)."""
    if isinstance(model, DeepNATCascade):
        return [model.foreground, model.structures], cascade_log_probabilities
    return [model], None


def check_deepnat_inputs(model: DeepNATModel, image: np.ndarray, coordinates: np.ndarray | None) -> None:
    """Refuse inputs a DeepNAT cannot classify.

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade
    image : ndarray of float32, shape (D, H, W)
    coordinates : ndarray of float32, shape (K, D, H, W), or None
        After :func:`as_coordinates`.

    Raises
    ------
    ValueError
        If the model is in training mode, the image is not 3-D, or the coordinates are given to a network
        that takes none, missing, or not of shape ``(model.coordinates, D, H, W)``.
    """
    if model.training:
        raise ValueError("call model.eval() before inference")
    if image.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {image.shape}")
    if model.coordinates == 0:
        if coordinates is not None:
            raise ValueError("this network takes no coordinates (coordinates=0)")
    elif coordinates is None or coordinates.shape != (model.coordinates,) + image.shape:
        got = None if coordinates is None else coordinates.shape
        raise ValueError(f"this network needs coordinates of shape {(model.coordinates,) + image.shape}, got {got}")


class DenseRunner:
    """The state of one dense pass: padded image, mask, tiles; yields per-task probabilities by chunks.

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
        Tile side along the first two axes, in voxels; None: :func:`~brainseg.inference.dense3d_network.choose_tile_size`.
    memory_bytes : int
        Budget of the conv stage of one tile.
    background : float
        Value of voxels outside the volume.
    voxel_batch : int
        Voxels per pass through the fully connected layers.
    logit_bias : ndarray of float, shape (C,), optional
        Added to every head's logits (a cascade's combined log-probabilities) before the softmax.

    Raises
    ------
    ValueError
        If the model is in training mode, the shapes disagree or ``tile_size < 1``.
    """

    def __init__(
        self,
        model: DeepNATModel,
        image: np.ndarray,
        mask: np.ndarray,
        coordinates: np.ndarray | None,
        tile_size: int | None,
        memory_bytes: int,
        background: float,
        voxel_batch: int,
        logit_bias: np.ndarray | None = None,
    ) -> None:
        image, mask, coordinates = np.asarray(image, np.float32), np.asarray(mask, bool), as_coordinates(coordinates)
        check_deepnat_inputs(model, image, coordinates)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the image shape {image.shape}")
        if tile_size is not None and tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        self.model, self.mask, self.coordinates = model, mask, coordinates
        self.device = next(model.parameters()).device
        self.bias = logit_bias_tensor(model, logit_bias)
        self.members, self.combine = _members(model)
        self.stages = [DenseConvStage(member) for member in self.members]
        self.heads = [DenseHead(member) for member in self.members]
        self.padded = np.pad(image, PATCH_PADDING, constant_values=background)
        self.voxel_batch = int(voxel_batch)
        self.box = [(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask)] if mask.any() else None
        if tile_size is None:
            width = self.box[2][1] - self.box[2][0] if self.box else 1
            # the members' conv stages run one after the other: the widest sets the budget
            widths = tuple(
                max(getattr(m, name).out_channels for m in self.members) for name in ("conv1", "conv2", "conv3")
            )
            tile_size = choose_tile_size(width, memory_bytes=memory_bytes, widths=widths)
        self.tile = int(tile_size)

    def slabs(self) -> list[tuple[int, int]]:
        """Ranges ``[z0, z1)`` of the slabs of tiles along the first axis, covering the mask.

        Returns
        -------
        list of (int, int)
            ``[z0, z1)`` in voxels, :attr:`tile` thick (the last one may be thinner), over the mask's bounding
            box; empty when the mask is.
        """
        if self.box is None:
            return []
        lo, hi = self.box[0]
        return [(z, min(z + self.tile, hi)) for z in range(lo, hi, self.tile)]

    def tile_boxes(self, z0: int, z1: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(lo, hi)``: the mask bounding box ``[lo, hi)`` of each tile of the slab ``[z0, z1)`` that holds brain.

        Parameters
        ----------
        z0, z1 : int
            The slab ``[z0, z1)`` along the first axis, in voxels (from :meth:`slabs`).

        Yields
        ------
        lo, hi : ndarray of int, shape (3,)
            Voxel indices of the brain voxels' bounding box in each ``[z0, z1) x [y, y + tile)`` tile,
            tile by tile along the second axis; tiles without brain are skipped.
        """
        assert self.box is not None
        for y in range(self.box[1][0], self.box[1][1], self.tile):
            block = self.mask[z0:z1, y : y + self.tile]
            if block.any():
                where = np.nonzero(block)
                lo = np.array([z0, y, 0]) + [int(i.min()) for i in where]
                hi = np.array([z0, y, 0]) + [int(i.max()) + 1 for i in where]
                yield lo, hi

    def slab(self, z0: int, z1: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Per-task probabilities ``(n, T, C)`` float32 of the mask voxels ``(n, 3)`` of a slab, by chunks.

        Parameters
        ----------
        z0, z1 : int
            The slab ``[z0, z1)`` along the first axis, in voxels (from :meth:`slabs`).

        Yields
        ------
        voxels : ndarray of int64, shape (n, 3)
            Voxel indices of at most :attr:`voxel_batch` mask voxels of one tile.
        probabilities : torch.Tensor
            ``(n, T, C)`` float32 on the CPU: each head's softmax (logit bias added; a hierarchy's
            combined log-probabilities renormalised) at the voxel the patch is centred on.
        """
        for lo, hi in self.tile_boxes(z0, z1):
            yield from self._tile(lo, hi)

    @torch.no_grad()
    def _tile(self, lo: np.ndarray, hi: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        # Region of the padded image: padded index of voxel v is v + 11, its patch padded[v : v + 24].
        region = self.padded[tuple(slice(a, b + PATCH_SIZE - 1) for a, b in zip(lo, hi))]
        x = torch.from_numpy(np.ascontiguousarray(region))[None, None].to(self.device)
        inside = self.mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
        local = np.argwhere(inside)
        chunks = [local[start : start + self.voxel_batch] for start in range(0, len(local), self.voxel_batch)]
        # All members but the last (a cascade's foreground network: 2 classes) keep their logits of the whole
        # tile, so that only one conv stage is alive at a time; the last one's are combined chunk by chunk.
        earlier = []
        for stage, head in zip(self.stages[:-1], self.heads[:-1]):
            conv3 = ConvCells(stage(x))
            earlier.append([self._head(head, conv3, chunk, lo) for chunk in chunks])
            del conv3
        conv3 = ConvCells(self.stages[-1](x))
        for i, chunk in enumerate(chunks):
            logits = self._head(self.heads[-1], conv3, chunk, lo)
            if self.combine is not None:
                logits = self.combine(*(e[i] for e in earlier), logits)
            if self.bias is not None:
                logits = logits + self.bias
            yield chunk + lo, torch.softmax(logits, dim=2).float().cpu()

    def _head(self, head: DenseHead, conv3: ConvCells, chunk: np.ndarray, lo: np.ndarray) -> torch.Tensor:
        # Per-task logits (n, T, C) of one member at the tile's local voxels ``chunk``.
        features = conv3.features(torch.from_numpy(chunk).to(self.device))
        coords = None
        if self.coordinates is not None:
            voxels = chunk + lo
            values = self.coordinates[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T
            coords = torch.from_numpy(np.asarray(values, np.float32)).to(self.device)
        return head(features, coords)
