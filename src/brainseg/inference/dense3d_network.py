"""DeepNAT rearranged for dense inference: the conv stage as a dilated network, its cells, the fully connected stage.

:class:`~brainseg.models.wachinger2018.DeepNAT` (Wachinger et al. 2018, Table 1) classifies one 24^3
patch at a time. For a whole volume (:mod:`brainseg.inference.dense3d`) its convolutions run as a
fully convolutional network (:class:`DenseConvStage`: the stride-2 max-pool as a stride-1 pool, the
two later convolutions dilated by 2), each voxel's 3 x 3 x 3 conv3 cells are gathered from that map
(:class:`ConvCells`), and the fully connected stage runs on the gathered cells of brain voxels only
(:class:`DenseHead`, float32 or with its first two layers in int8). :func:`conv_stage_bytes` and
:func:`choose_tile_size` size the tiles of the conv stage to a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from brainseg.inference.dense_priors import fold_batch_norm, max_pool3_stride1
from brainseg.inference.int8 import Int8Linear
from brainseg.models.wachinger2018 import FEATURE_GRID, DeepNAT

__all__ = ["DEFAULT_MEMORY_BYTES", "ConvCells", "DenseConvStage", "DenseHead", "choose_tile_size", "conv_stage_bytes"]

#: Default budget of the conv stage of one tile, in bytes.
DEFAULT_MEMORY_BYTES = 1024 * 2**20


def conv_stage_bytes(tile_shape: tuple[int, int, int], widths: tuple[int, int, int] = (32, 64, 64)) -> int:
    """Estimated peak memory, in bytes, of the dense conv stage on a tile of ``tile_shape`` output voxels.

    ``4 x 2 x [c1 V(18) + c2 V(9) + c3 V(5)]`` with ``V(m)`` the tile grown
    by ``m`` voxels along each axis: the conv1, conv2 and conv3 maps (float32)
    with one copy each (the pooling's, or the convolution library's
    reordered input and output).

    Parameters
    ----------
    tile_shape : tuple of 3 int
        Output voxels of the tile along each axis.
    widths : tuple of 3 int
        The convolution widths ``(c1, c2, c3)`` (paper Table 1: 32, 64, 64).

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> round(conv_stage_bytes((16, 16, 180)) / 2**20)
    153
    """
    c1, c2, c3 = widths

    def volume(m: int) -> int:
        return int(np.prod([n + m for n in tile_shape]))

    return 4 * 2 * (c1 * volume(18) + c2 * volume(9) + c3 * volume(5))


def choose_tile_size(
    width: int,
    *,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    widths: tuple[int, int, int] = (32, 64, 64),
    max_size: int = 64,
) -> int:
    """Tile side ``t`` along the first two axes that keeps the conv stage within ``memory_bytes``.

    Parameters
    ----------
    width : int
        Extent of the tile along the third axis, in voxels (the mask's bounding box).
    memory_bytes : int
        Budget for :func:`conv_stage_bytes` of a ``(t, t, width)`` tile.
    widths : tuple of 3 int
        The network's convolution widths.
    max_size : int
        Upper limit of ``t``.

    Returns
    -------
    int
        The largest ``t <= max_size`` within the budget, and at least 1.

    Examples
    --------
    >>> choose_tile_size(180)
    57
    """
    best = 1
    for t in range(1, max_size + 1):
        if conv_stage_bytes((t, t, width), widths) <= memory_bytes:
            best = t
    return best


class DenseHead:
    """The fully connected stage of a :class:`DeepNAT` (eval mode) rearranged for dense inference.

    The batch normalisation after the second layer is folded into it, the second layer's columns that
    read the coordinates are a separate product (no concatenation copies the first layer's output), and
    the heads are one stacked product: the same logits as :meth:`DeepNAT.head` up to float32 rounding,
    about 1.4 times faster (one thread, 4,096 voxels). With ``int8``, the first two layers (96 % of the
    stage's multiply-adds at the paper's widths) run in int8 (:class:`~brainseg.inference.int8.Int8Linear`,
    per-row scales; their inputs are ReLU outputs, never negative); the coordinates' columns and the heads
    stay float32.

    Parameters
    ----------
    network : DeepNAT
        In eval mode.
    int8 : bool
        Run the first two layers in int8 (needs :func:`~brainseg.inference.int8.int8_available`).
    """

    def __init__(self, network: DeepNAT, *, int8: bool = False) -> None:
        self.tasks, self.num_classes = network.tasks, network.num_classes
        fc1, fc2, norm = network.fc1, network.fc2, network.norm_fc2
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
        weight = fc2.weight.detach() * scale[:, None]
        bias = (norm.bias - norm.running_mean * scale).detach()
        width = fc1.out_features
        if int8:
            self.fc1: Callable[[torch.Tensor], torch.Tensor] = Int8Linear(fc1.weight.detach(), fc1.bias.detach())
            self.fc2: Callable[[torch.Tensor], torch.Tensor] = Int8Linear(weight[:, :width].contiguous(), bias)
        else:
            w1, b1, w2 = fc1.weight.detach().T.contiguous(), fc1.bias.detach(), weight[:, :width].T.contiguous()
            self.fc1 = lambda x: torch.addmm(b1, x, w1)
            self.fc2 = lambda x: torch.addmm(bias, x, w2)
        self.fc2_coordinates = weight[:, width:].T.contiguous() if network.coordinates else None  # (K, f2)
        self.heads_weight = torch.cat([h.weight.detach() for h in network.heads]).T.contiguous()  # (f2, T C)
        self.heads_bias = torch.cat([h.bias.detach() for h in network.heads])

    def __call__(self, features: torch.Tensor, coordinates: torch.Tensor | None) -> torch.Tensor:
        """Per-task logits ``(N, T, C)`` float32 of conv features ``(N, c3 * 27)`` and coordinates ``(N, K)``."""
        x = self.fc2(torch.relu_(self.fc1(features)))
        if self.fc2_coordinates is not None:
            x.addmm_(coordinates, self.fc2_coordinates)  # type: ignore[arg-type]
        logits = torch.addmm(self.heads_bias, torch.relu_(x), self.heads_weight)
        return logits.view(len(features), self.tasks, self.num_classes)


class DenseConvStage:
    """DeepNAT's convolutions as a fully convolutional network (eval mode; batch norm folded in).

    Parameters
    ----------
    model : DeepNAT
        In eval mode (its batch norms' running statistics are folded into conv2 and conv3); the weights are
        read once, at construction.
    """

    def __init__(self, model: DeepNAT) -> None:
        self.w1, self.b1 = model.conv1.weight.detach(), model.conv1.bias.detach()  # type: ignore[union-attr]
        self.w2, self.b2 = fold_batch_norm(model.conv2, model.norm2)
        self.w3, self.b3 = fold_batch_norm(model.conv3, model.norm3)

    def __call__(self, region: torch.Tensor) -> torch.Tensor:
        """Map a padded region ``(1, 1, L + 23)`` to the conv3 map ``(c3, L + 5)``.

        At local position ``u + 2 n`` the map holds the patch network's conv3
        output cell ``n`` (0..2 per axis) of the patch whose first voxel is
        region voxel ``u``.
        """
        a = torch.relu_(F.conv3d(region, self.w1, self.b1))  # (1, c1, L + 18)
        a = max_pool3_stride1(a, 1)  # -> (1, c1, L + 17)
        a = torch.relu_(F.conv3d(a, self.w2, self.b2, dilation=2))  # (1, c2, L + 9)
        return torch.relu_(F.conv3d(a, self.w3, self.b3, dilation=2))[0]  # (c3, L + 5)


class ConvCells:
    """A tile's conv3 map as one row of features per voxel, for gathering patches' 3 x 3 x 3 cells.

    ``rows`` is ``(M, c3)`` (voxel-major), so that a cell of many voxels is a
    gather of whole rows; a channel-major ``(c3, M)`` map would be gathered
    column by column (about 2.6 times slower, measured on one thread).

    Parameters
    ----------
    conv3 : torch.Tensor
        A :class:`DenseConvStage` output ``(c3, L0 + 5, L1 + 5, L2 + 5)`` float32.
    """

    def __init__(self, conv3: torch.Tensor) -> None:
        c, d1, d2, d3 = conv3.shape
        self.channels, self.strides = c, (d2 * d3, d3, 1)
        self.rows = conv3.reshape(c, -1).T.contiguous()  # (M, c3)
        cells = torch.tensor(list(np.ndindex(*(FEATURE_GRID,) * 3)), dtype=torch.int64, device=conv3.device)
        self.cell_offsets = 2 * cells @ torch.tensor(self.strides, device=conv3.device)  # (27,), flat, C order

    def features(self, local: torch.Tensor) -> torch.Tensor:
        """Flat conv3 features ``(N, c3 * 27)``, channel-major like the patch network, at local voxels ``(N, 3)``.

        Parameters
        ----------
        local : torch.Tensor
            ``(N, 3)`` integer voxel indices local to the tile: voxel ``u`` is the patch whose first voxel is
            region voxel ``u`` (see :class:`DenseConvStage`).

        Returns
        -------
        torch.Tensor
            ``(N, c3 * 27)`` float32, the patch network's :meth:`DeepNAT.features` of those patches up to
            float32 rounding.
        """
        first = local.to(torch.int64) @ torch.tensor(self.strides, device=local.device)  # (N,)
        cells = self.rows[(first[:, None] + self.cell_offsets[None]).reshape(-1)]  # (N * 27, c3)
        return cells.view(len(local), -1, self.channels).transpose(1, 2).reshape(len(local), -1)
