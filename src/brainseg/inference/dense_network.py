"""BaseNet (Ganaye et al. 2018) rearranged for dense inference, and the dilated pooling of dense passes.

:class:`DenseBaseNet` holds a :class:`~brainseg.models.ganaye2018.GanayeNet`'s weights in the form
:func:`brainseg.inference.dense.predict_dense` runs them over whole slices: batch normalisation folded
into the convolutions, the mixing convolution split per branch, the fully connected layers split by
input block (and the first two in int8 for labels without probabilities). :func:`max_pool2_dilated`
is the stride-1 form of a 2 x 2, stride-2 max pooling that dense passes use (here and in
:mod:`brainseg.inference.dense_brebisson`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainseg.inference.dense_priors import fold_batch_norm
from brainseg.inference.int8 import Int8Linear, int8_available
from brainseg.models.ganaye2018 import ConvBranch, GanayeNet

__all__ = ["DenseBaseNet", "max_pool2_dilated"]


def max_pool2_dilated(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """2 x 2 max pooling with stride 1 and the given dilation, as two pairwise maxima.

    The dense form of a 2 x 2, stride-2 max pooling applied after ``dilation`` - 1 earlier stride-2
    reductions (the "a trous" equivalence): output ``[..., i, j]`` is the maximum of the input at
    ``(i, j)``, ``(i + d, j)``, ``(i, j + d)`` and ``(i + d, j + d)``.

    Parameters
    ----------
    x : Tensor of float, shape (..., H, W)
    dilation : int
        ``d >= 1``, in pixels.

    Returns
    -------
    Tensor, shape (..., H - d, W - d)

    Examples
    --------
    >>> x = torch.arange(12.0).reshape(3, 4)
    >>> max_pool2_dilated(x, 2)
    tensor([[10., 11.]])
    """
    d = dilation
    x = torch.maximum(x[..., :-d, :], x[..., d:, :])
    return torch.maximum(x[..., :, :-d], x[..., :, d:])


def _layers(branch: ConvBranch) -> list[tuple[torch.nn.Conv2d, torch.nn.Module]]:
    return [(branch.conv1, branch.norm1), (branch.conv2, branch.norm2), (branch.conv3, branch.norm3)]


class DenseBaseNet:
    """A network rearranged for dense inference (eval mode only).

    Batch normalisation is folded into the convolutions; the 1 x 1 mixing
    convolution is split per branch and applied to the branch maps *before*
    the per-voxel gather (it is linear, so this is exact and 9 times cheaper).
    The fully connected part is :meth:`GanayeNet.classify` with each layer's
    weight split by input block, so that no ``torch.cat`` copies the blocks
    (``W [x; d] = W_x x + W_d d``), and the first layer's columns reordered to
    the gathered cells' cell-major order, so that no permute copies them either.

    Parameters
    ----------
    model : GanayeNet
        In eval mode (its batch-norm statistics are folded as they stand). Its weights are read, not
        copied where no rearrangement is needed: do not train it while this object is in use.
    int8 : bool
        Build the int8 copies of the first two fully connected layers (:meth:`classes`); False (or a
        torch without CPU int8 products, :func:`~brainseg.inference.int8.int8_available`) leaves
        :attr:`int8` None, for passes that never use them.
    """

    def __init__(self, model: GanayeNet, *, int8: bool = True) -> None:
        self.model = model
        self.scales = model.scales
        self.branches = [[fold_batch_norm(conv, norm) for conv, norm in _layers(b)] for b in model.branches]
        widths = [b.out_channels for b in model.branches]
        mix = model.mix.weight[:, :, 0, 0]  # (M, sum widths)
        self.mix = list(torch.split(mix, widths, dim=1))  # per branch (M, C_j)
        self.mix_bias = model.mix.bias.detach()
        m = mix.shape[0]
        first = model.fc[0].weight.detach()
        # columns of the 2-D block are channel-major (c * 9 + cell); the gathered features are (cell, c)
        self.w2d = first[:, : 9 * m].reshape(-1, m, 9).permute(0, 2, 1).reshape(first.shape[0], 9 * m).contiguous()
        self.w3d = first[:, 9 * m :].contiguous() if model.branch_3d is not None else None
        self.biases = [layer.bias.detach() for layer in model.fc]
        self.hidden = []  # layers after the first: (weight of the previous layer's output, weight of d or None)
        d_width = model.dist_branch.width if model.dist_branch is not None else 0
        for k, layer in enumerate(list(model.fc)[1:] + [model.out], start=1):
            w = layer.weight.detach()
            takes_d = d_width and k == 1
            self.hidden.append((w[:, : w.shape[1] - d_width] if takes_d else w, w[:, -d_width:] if takes_d else None))
        self.out_bias = model.out.bias.detach()
        # the first two fully connected layers in int8, for labels without probabilities (classes()); None
        # where this torch has no CPU int8 matrix product (predict_dense then stays in float32)
        second_bias = (self.biases[1:] + [self.out_bias])[0]  # the output layer's, with one hidden layer
        self.int8 = (
            (Int8Linear(self.w2d, self.biases[0]), Int8Linear(self.hidden[0][0], second_bias))
            if int8 and int8_available()
            else None
        )

    def branch_maps(self, j: int, region: torch.Tensor) -> torch.Tensor:
        """Dense branch ``j`` then its share of the mixing convolution: ``(H', W', M)``.

        Parameters
        ----------
        j : int
            The branch (scale) index, into :attr:`scales` and :attr:`branches`.
        region : Tensor of float32, shape (1, 1, H, W)
            The slice's image region the branch reads, at full resolution (the branch's convolutions are
            dilated by its scale ``s = scales[j]``).

        Returns
        -------
        Tensor of float32, shape (H', W', M)
            Per output position, the branch's 2-D features times its block of the 1 x 1 mixing weights (no
            mixing bias: it is added after the gather, :meth:`head`); ``H' = H - SPAN * s`` (``SPAN = 13``; likewise
            ``W'``), ``M`` the mixing convolution's output channels.
        """
        s = self.scales[j]
        (w1, b1), (w2, b2), (w3, b3) = self.branches[j]
        x = torch.relu_(F.conv2d(region, w1, b1, dilation=s))
        # channels-last from here: oneDNN's dilated convolutions run about 1.4x faster on it (same values)
        x = max_pool2_dilated(x, s).contiguous(memory_format=torch.channels_last)
        x = torch.relu_(F.conv2d(x, w2, b2, dilation=2 * s))
        x = torch.relu_(F.conv2d(x, w3, b3, dilation=2 * s))
        x = max_pool2_dilated(x, 2 * s)[0]  # (C, H', W')
        return torch.matmul(x.permute(1, 2, 0), self.mix[j].T)  # (H', W', M)

    def head(self, mixed: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, num_classes)`` from the summed, gathered mixing outputs ``(N, 9, M)`` and the priors' inputs.

        ``extras`` holds what :meth:`GanayeNet.classify` takes: ``features_3d``, either ``prob_features``
        (the ProbBranch's output, from :class:`~brainseg.inference.branch_cache.AtlasFeatureTable`) or
        ``atlas``, and either ``dist_features`` or ``distances``. ``mixed`` is overwritten.

        Parameters
        ----------
        mixed : Tensor of float32, shape (N, 9, M)
            Per voxel and cell (row-major over the 3 x 3 cells), the mixing outputs summed over the branches,
            without the mixing bias; overwritten (bias and ReLU in place).
        extras : dict of str to Tensor
            The priors' inputs of the ``N`` voxels, as above; those the network lacks are ignored.

        Returns
        -------
        Tensor of float32, shape (N, num_classes)
            Logits, without the sampling prior's logit bias.

        Raises
        ------
        ValueError
            From :meth:`GanayeNet._check`, if ``extras`` lacks an input the network needs.
        """
        return self._fully_connected(self._cells(mixed), extras, int8=False)

    def classes(
        self, mixed: torch.Tensor, extras: dict[str, torch.Tensor], bias: torch.Tensor, margin: float
    ) -> tuple[torch.Tensor, int]:
        """Arg-max classes ``(N,)`` from the int8 head, float32 wherever the int8 logits leave a doubt.

        The first two fully connected layers (about 90 % of the head's multiply-adds) run in int8
        (:class:`~brainseg.inference.int8.Int8Linear`); every voxel whose two largest logits (``bias`` added) lie less than
        ``margin`` apart is computed again in float32. Its label can differ from the float32 head's only
        where int8 rounding moves some logit by more than ``margin / 2``.

        Needs the int8 layers: only for an object built with ``int8=True`` where :attr:`int8` is not None.

        Parameters
        ----------
        mixed : Tensor of float32, shape (N, 9, M)
            As in :meth:`head`; overwritten.
        extras : dict of str to Tensor
            As in :meth:`head`.
        bias : Tensor of float32, shape (num_classes,)
            The sampling prior's logit shift (zeros for none), added to the logits before the arg-max.
        margin : float
            Logit gap (nats) below which a voxel is recomputed in float32.

        Returns
        -------
        classes : Tensor of int64, shape (N,)
        recomputed : int
            Voxels computed again in float32.

        Raises
        ------
        ValueError
            From :meth:`GanayeNet._check`, if ``extras`` lacks an input the network needs.
        """
        x = self._cells(mixed)
        logits = self._fully_connected(x, extras, int8=True).add_(bias)
        top = logits.topk(2, dim=1).values
        doubt = torch.nonzero(top[:, 0] - top[:, 1] < margin)[:, 0]
        if len(doubt):
            part = {k: v[doubt] for k, v in extras.items()}
            logits[doubt] = self._fully_connected(x[doubt], part, int8=False).add_(bias)
        return logits.argmax(dim=1), len(doubt)

    def _cells(self, mixed: torch.Tensor) -> torch.Tensor:
        # the mixing convolution's bias and ReLU, in place: (N, 9, M) -> (N, 9 M), cell-major
        return torch.relu_(mixed.add_(self.mix_bias)).reshape(mixed.shape[0], -1)

    def _fully_connected(self, x: torch.Tensor, extras: dict[str, torch.Tensor], int8: bool) -> torch.Tensor:
        model = self.model
        x = self.int8[0](x) if int8 else torch.addmm(self.biases[0], x, self.w2d.T)
        if self.w3d is not None:
            x.addmm_(model._check("patches_3d", extras.get("features_3d")), self.w3d.T)
        d = None
        if model.dist_branch is not None:
            d = extras.get("dist_features")
            if d is None:
                d = model.dist_branch(model._check("distances", extras.get("distances")))
        biases = self.biases[1:] + [self.out_bias]
        for k, ((w, w_d), bias) in enumerate(zip(self.hidden, biases)):
            x = torch.relu_(x)
            x = self.int8[1](x) if (int8 and k == 0) else torch.addmm(bias, x, w.T)
            if w_d is not None:
                x.addmm_(d, w_d.T)
        if model.prob_branch is not None:
            p = extras.get("prob_features")
            x += p if p is not None else model.prob_branch(model._check("atlas", extras.get("atlas")))
        return x
