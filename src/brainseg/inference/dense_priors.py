"""The spatial priors over a whole brain for dense inference, and layer helpers both dense predictors share.

Dense inference of Ganaye et al.'s network (:mod:`brainseg.inference.dense`) computes each prior once
per brain: the 3dBranch fully convolutionally over the brain's box (:class:`Dense3dBranch`), the atlas
vectors of every brain voxel in one lookup (:class:`DenseAtlas`), both stored by brain row
(:class:`BrainRows`) and read slice by slice. :func:`fold_batch_norm` and :func:`max_pool3_stride1` serve
DeepNAT's dense pass too (:mod:`brainseg.inference.dense3d`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from brainseg.features.spatial import SpatialInputs
from brainseg.models.ganaye2018 import ConvBranch3d
from brainseg.preprocessing.masking import brain_bounding_box

__all__ = ["BrainRows", "Dense3dBranch", "DenseAtlas", "fold_batch_norm", "logit_bias_tensor", "max_pool3_stride1"]


def logit_bias_tensor(network: torch.nn.Module, logit_bias: np.ndarray | None) -> torch.Tensor | None:
    """The sampling prior's logit shift as a float32 tensor on the network's device (the dense predictors').

    Parameters
    ----------
    network : nn.Module
        Has ``num_classes`` and at least one parameter.
    logit_bias : ndarray of float, shape (num_classes,), or None
        :meth:`brainseg.postprocessing.prior.ClassPrior.logit_bias`.

    Returns
    -------
    Tensor of float32, shape (num_classes,), or None when ``logit_bias`` is None.

    Raises
    ------
    ValueError
        If ``logit_bias`` has another shape.
    """
    if logit_bias is None:
        return None
    bias = torch.as_tensor(np.asarray(logit_bias, np.float32))
    if tuple(bias.shape) != (network.num_classes,):
        raise ValueError(f"logit_bias has shape {tuple(bias.shape)}, the network {network.num_classes} classes")
    return bias.to(next(network.parameters()).device)


def fold_batch_norm(
    conv: torch.nn.Conv2d | torch.nn.Conv3d, norm: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight and bias with its batch normalisation (if any; eval mode) folded in.

    Shared by the dense predictors of every family (:mod:`brainseg.inference.dense3d` too).

    Parameters
    ----------
    conv : nn.Conv2d or nn.Conv3d
        The convolution; it needs a bias unless ``norm`` is a batch normalisation.
    norm : nn.Module
        The layer after it: a ``BatchNorm2d`` or ``BatchNorm3d`` (its running statistics are folded in), or
        anything else (e.g. ``nn.Identity``: nothing to fold).

    Returns
    -------
    weight : Tensor of float32, shape of ``conv.weight``
        Detached, contiguous.
    bias : Tensor of float32, shape (out_channels,)
        Detached, contiguous.
    """
    weight, bias = conv.weight, conv.bias
    if isinstance(norm, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
        weight, bias = fuse_conv_bn_weights(
            weight, bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
    return weight.detach().contiguous(), bias.detach().contiguous()


class BrainRows:
    """Row numbers of a mask's voxels: per-voxel arrays of the whole brain are stored once, in this order.

    Parameters
    ----------
    mask : ndarray of bool, shape (D, H, W)
        The brain mask.

    Attributes
    ----------
    voxels : ndarray of int64, shape (N, 3)
        The mask's voxels in C order (``np.argwhere``): row ``r`` is voxel ``voxels[r]``.
    index : ndarray of int64, shape (D, H, W)
        Each mask voxel's row, -1 elsewhere.
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.voxels = np.argwhere(mask)
        self.index = np.full(mask.shape, -1, np.int64)
        self.index[tuple(self.voxels.T)] = np.arange(len(self.voxels))

    def rows(self, voxels: np.ndarray, what: str) -> np.ndarray:
        """Rows ``(N,)`` of voxels ``(N, 3)``; ValueError naming ``what`` if one lies outside the mask.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the mask's grid.
        what : str
            What is being looked up, named in the error message.

        Returns
        -------
        ndarray of int64, shape (N,)

        Raises
        ------
        ValueError
            If a voxel lies outside the mask.
        """
        rows = self.index[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
        if (rows < 0).any():
            raise ValueError(f"{what} asked for voxels outside the brain mask")
        return rows


class DenseAtlas:
    """The atlas' stored values at every brain voxel, looked up once (uint8, normalised per slice).

    Parameters
    ----------
    spatial : SpatialInputs
        Holds the atlas (must not be None), on the grid of ``brain``.
    brain : BrainRows
        The brain voxels; :attr:`values` is ``(N, C)`` uint8 in its row order.

    Raises
    ------
    ValueError
        If ``spatial`` holds no atlas.
    """

    def __init__(self, spatial: SpatialInputs, brain: BrainRows) -> None:
        if spatial.atlas is None:
            raise ValueError("the ProbBranch needs the atlas: build SpatialInputs with the reference's atlas")
        self.atlas, self.brain = spatial.atlas, brain
        self.values = self.atlas.quantised(brain.voxels)

    def at(self, voxels: np.ndarray) -> torch.Tensor:
        """Atlas probabilities ``(N, C)`` float32 at brain voxels ``(N, 3)``.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Brain voxels (ProbBranch input, Ganaye et al. 2018, section 2.3).

        Returns
        -------
        Tensor of float32, shape (N, C)
            :meth:`~brainseg.features.atlas.ProbabilisticAtlas.normalise` of the stored values.

        Raises
        ------
        ValueError
            From :meth:`BrainRows.rows`, if a voxel lies outside the brain mask.
        """
        return torch.from_numpy(self.atlas.normalise(self.values[self.brain.rows(voxels, "atlas values")]))


def max_pool3_stride1(x: torch.Tensor, offset: int) -> torch.Tensor:
    """2 x 2 x 2 max pooling of ``(N, C, D, H, W)`` with stride 1 and dilation ``offset``, as three pairwise maxima.

    Much faster than ``max_pool3d`` with stride 1 on the CPU; used by both families' dense predictors.

    Parameters
    ----------
    x : Tensor, shape (N, C, D, H, W)
        Feature maps.
    offset : int
        Dilation, voxels: the two voxels compared along each axis are ``offset`` apart.

    Returns
    -------
    Tensor, shape (N, C, D - offset, H - offset, W - offset), dtype of ``x``
    """
    for axis in (2, 3, 4):
        n = x.shape[axis] - offset
        x = torch.maximum(x.narrow(axis, 0, n), x.narrow(axis, offset, n))
    return x


def _dense_branch_3d(layers: list[tuple[torch.Tensor, torch.Tensor]], region: torch.Tensor) -> torch.Tensor:
    """:meth:`ConvBranch3d.forward` with ``dense=True``, batch normalisation folded into the convolutions.

    ``(1, 1, D, H, W)`` -> ``(1, c2, D - 13, H - 13, W - 13)``.
    """
    (w1, b1), (w2, b2), (w3, b3) = layers
    x = max_pool3_stride1(torch.relu_(F.conv3d(region, w1, b1)), 1)
    # channels-last from here: the dilated convolutions run about 15 % faster on it (same values), and
    # each voxel's features come out contiguous for the gather
    x = torch.relu_(F.conv3d(x.contiguous(memory_format=torch.channels_last_3d), w2, b2, dilation=2))
    x = torch.relu_(F.conv3d(x, w3, b3, dilation=2))
    return max_pool3_stride1(x, 2)


class Dense3dBranch:
    """3dBranch features of every brain voxel, computed fully convolutionally in chunks of slices.

    Ganaye et al. (2018, section 2)'s 3dBranch on every brain voxel's 15 x 15 x 15 patch at once, batch
    normalisation folded in (:func:`fold_batch_norm`), over the brain's bounding box, :attr:`CHUNK` slices of
    the first axis at a time.

    Parameters
    ----------
    branch : ConvBranch3d
        The trained 3dBranch (eval mode).
    spatial : SpatialInputs
        Holds ``padded_image`` (built with ``patches_3d=True``).
    mask : ndarray of bool, shape (D, H, W)
        The brain mask, the one ``brain`` was made from.
    brain : BrainRows
        Row order of :attr:`features`.

    Attributes
    ----------
    features : Tensor of float32, shape (N, c2)
        The 3dBranch output of each brain voxel, in ``brain``'s row order.

    Raises
    ------
    ValueError
        If ``spatial`` holds no padded image, or ``mask`` is empty.
    """

    CHUNK = 24  # output slices per chunk along the first axis (each chunk recomputes 14 slices of margin)

    def __init__(self, branch: ConvBranch3d, spatial: SpatialInputs, mask: np.ndarray, brain: BrainRows) -> None:
        if spatial.padded_image is None:
            raise ValueError("the 3dBranch needs spatial inputs built with patches_3d=True")
        box = brain_bounding_box(mask)
        lo = np.array([b.start for b in box])
        hi = np.array([b.stop for b in box])
        self.brain = brain
        self.features = torch.empty((len(brain.voxels), branch.out_channels), dtype=torch.float32)
        image = spatial.padded_image
        layers = [
            fold_batch_norm(conv, norm)
            for conv, norm in ((branch.conv1, branch.norm1), (branch.conv2, branch.norm2), (branch.conv3, branch.norm3))
        ]
        extent = ConvBranch3d.SPAN + 1  # padded region = outputs + 14
        for a in range(lo[0], hi[0], self.CHUNK):
            b = min(a + self.CHUNK, hi[0])
            region = image[a : b + extent, lo[1] : hi[1] + extent, lo[2] : hi[2] + extent]
            maps = _dense_branch_3d(layers, torch.from_numpy(np.ascontiguousarray(region))[None, None])[0]
            maps = maps[:, : b - a, : hi[1] - lo[1], : hi[2] - lo[2]]  # (C, b - a, H', W')
            inside = mask[a:b, lo[1] : hi[1], lo[2] : hi[2]]
            rows = brain.index[a:b, lo[1] : hi[1], lo[2] : hi[2]][inside]
            self.features[torch.from_numpy(rows)] = maps.permute(1, 2, 3, 0)[torch.from_numpy(inside)]

    def at(self, voxels: np.ndarray) -> torch.Tensor:
        """3dBranch features ``(N, c2)`` float32 at brain voxels ``(N, 3)``.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Brain voxels.

        Returns
        -------
        Tensor of float32, shape (N, c2)

        Raises
        ------
        ValueError
            From :meth:`BrainRows.rows`, if a voxel lies outside the brain mask.
        """
        return self.features[torch.from_numpy(self.brain.rows(voxels, "3dBranch features"))]
