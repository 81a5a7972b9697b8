"""Dense (whole-volume) inference of patch networks, and the patch-by-patch reference.

A patch classifier with pooling can be run over a whole slice at once by
turning every stride-2 pooling into a stride-1 pooling and dilating every
later layer (the "a trous" / shift-and-stitch equivalence, Long et al. 2015;
Sermanet et al. 2014). :class:`~brainseg.models.ganaye2018.ConvBranch` does
that when called with ``dilation=s``; :class:`_DenseBaseNet` does the same
with batch normalisation folded into the convolutions. The branch maps are
computed once per slice over the brain's bounding box; the fully connected
head then runs only on brain voxels, fed with the 3 x 3 branch cells gathered
at each voxel. The result equals patch-by-patch classification up to float
rounding (tested: max abs difference of probabilities <= 1e-5).

The spatial priors are dense too: the 3dBranch runs fully convolutionally
over the brain's bounding box (in chunks of slices), and the landmark
distances and atlas probabilities of all of a slice's brain voxels are
computed in one call (:class:`~brainseg.features.spatial.SpatialInputs`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from brainseg.allocator import keep_freed_memory, release_freed_memory
from brainseg.features.spatial import SpatialInputs
from brainseg.inference.branch_cache import AtlasFeatureTable, DistanceFeatureTable
from brainseg.inference.dense_priors import BrainRows, Dense3dBranch, DenseAtlas, fold_batch_norm
from brainseg.inference.int8 import Int8Linear, Int8Report, int8_available
from brainseg.models.ganaye2018 import ConvBranch, GanayeNet
from brainseg.sampling.patches import (
    HALF,
    MultiScaleStack,
    extract_patches,
    from_plane,
    patch_origin,
    plane_to_volume_indices,
    to_plane,
)
from brainseg.timing import stage

__all__ = ["INT8_MARGIN", "predict_dense", "predict_dense_at", "predict_patches"]

log = logging.getLogger(__name__)

#: Logit margin below which :func:`predict_dense` recomputes a voxel's int8 head in float32 (see
#: docs/speed.md: the int8 logits of the shipped default move by at most about 0.2 on validation data).
INT8_MARGIN = 0.5


def _extras(spatial: SpatialInputs | None, voxels: np.ndarray, **kwargs: bool) -> dict[str, torch.Tensor]:
    if spatial is None:
        return {}
    return {k: torch.from_numpy(v) for k, v in spatial.at(voxels, **kwargs).items()}


def _check_spatial(model: GanayeNet, spatial: SpatialInputs | None) -> None:
    if model.inputs and spatial is None:
        raise ValueError(f"this network needs spatial inputs ({', '.join(model.inputs)}); pass spatial=")


@torch.no_grad()
def predict_patches(
    model: GanayeNet,
    stack: MultiScaleStack,
    indices: np.ndarray,
    *,
    spatial: SpatialInputs | None = None,
    batch_size: int = 512,
    logit_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Classify voxels one patch at a time (the slow reference).

    Parameters
    ----------
    model : GanayeNet
        In eval mode.
    stack : MultiScaleStack
        Precomputed patch source of the image.
    indices : ndarray of int, shape (N, 3)
        Voxels in the plane's ``(S, A, B)`` order.
    spatial : SpatialInputs, optional
        Inputs of the spatial priors (required when the network has any).
    batch_size : int
        Patches per forward pass.
    logit_bias : ndarray of float, shape (num_classes,), optional
        Added to the logits before the softmax (the sampling prior's
        correction, :mod:`brainseg.postprocessing.prior`).

    Returns
    -------
    ndarray of float32, shape (N, num_classes)
        Softmax probabilities.
    """
    _check_spatial(model, spatial)
    bias = _bias(model, logit_bias)
    out = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        patches = torch.from_numpy(extract_patches(stack, batch))
        extras = _extras(spatial, plane_to_volume_indices(batch, stack.plane))
        out.append(torch.softmax(model(patches, **extras) + bias, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


def _check_stack(stack: MultiScaleStack) -> None:
    if stack.half != HALF:
        raise ValueError(f"GanayeNet reads 25 x 25 patches: build the stack with half={HALF}, not {stack.half}")


def _bias(model: GanayeNet, logit_bias: np.ndarray | None) -> torch.Tensor:
    """The logit shift as a tensor (zeros when None)."""
    if logit_bias is None:
        return torch.zeros(model.num_classes)
    bias = torch.as_tensor(np.asarray(logit_bias, np.float32))
    if bias.shape != (model.num_classes,):
        raise ValueError(f"logit_bias has shape {tuple(bias.shape)}, the network {model.num_classes} classes")
    return bias


class _DenseBaseNet:
    """A network rearranged for dense inference (eval mode only).

    Batch normalisation is folded into the convolutions; the 1 x 1 mixing
    convolution is split per branch and applied to the branch maps *before*
    the per-voxel gather (it is linear, so this is exact and 9 times cheaper).
    The fully connected part is :meth:`GanayeNet.classify` with each layer's
    weight split by input block, so that no ``torch.cat`` copies the blocks
    (``W [x; d] = W_x x + W_d d``), and the first layer's columns reordered to
    the gathered cells' cell-major order, so that no permute copies them either.
    ``int8=False`` skips building the int8 layers (:attr:`int8` None), for passes that never use them.
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
        """Dense branch ``j`` then its share of the mixing convolution: ``(H', W', M)``."""
        s = self.scales[j]
        (w1, b1), (w2, b2), (w3, b3) = self.branches[j]
        x = torch.relu_(F.conv2d(region, w1, b1, dilation=s))
        # channels-last from here: oneDNN's dilated convolutions run about 1.4x faster on it (same values)
        x = _max_pool2(x, s).contiguous(memory_format=torch.channels_last)
        x = torch.relu_(F.conv2d(x, w2, b2, dilation=2 * s))
        x = torch.relu_(F.conv2d(x, w3, b3, dilation=2 * s))
        x = _max_pool2(x, 2 * s)[0]  # (C, H', W')
        return torch.matmul(x.permute(1, 2, 0), self.mix[j].T)  # (H', W', M)

    def head(self, mixed: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, num_classes)`` from the summed, gathered mixing outputs ``(N, 9, M)`` and the priors' inputs.

        ``extras`` holds what :meth:`GanayeNet.classify` takes: ``features_3d``, either ``prob_features``
        (the ProbBranch's output, from :class:`~brainseg.inference.branch_cache.AtlasFeatureTable`) or
        ``atlas``, and either ``dist_features`` or ``distances``. ``mixed`` is overwritten.
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

        Returns
        -------
        classes : Tensor of int64, shape (N,)
        recomputed : int
            Voxels computed again in float32.
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


def _layers(branch: ConvBranch) -> list[tuple[torch.nn.Conv2d, torch.nn.Module]]:
    return [(branch.conv1, branch.norm1), (branch.conv2, branch.norm2), (branch.conv3, branch.norm3)]


def _max_pool2(x: torch.Tensor, dilation: int) -> torch.Tensor:
    # 2 x 2 max pooling with stride 1 and the given dilation, as two pairwise maxima.
    d = dilation
    x = torch.maximum(x[..., :-d, :], x[..., d:, :])
    return torch.maximum(x[..., :, :-d], x[..., :, d:])


def _slice_inputs(
    net: _DenseBaseNet,
    stack: MultiScaleStack,
    i: int,
    rows: np.ndarray,
    cols: np.ndarray,
    spatial: SpatialInputs | None = None,
    features_3d: Dense3dBranch | None = None,
    atlas: DenseAtlas | None = None,
    distances: DistanceFeatureTable | None = None,
    prob_table: AtlasFeatureTable | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The head's inputs at one slice's voxels: the gathered mixing outputs ``(N, 9, M)`` and the extras."""
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cell = ConvBranch.CELL_STRIDE * np.arange(3)
    maps, cells, offset = [], [], 0
    for j, (s, boxed) in enumerate(zip(stack.scales, stack.stacks)):
        start = stack.margin + patch_origin(s)
        extent = 2 * ConvBranch.CELL_STRIDE * s + ConvBranch.SPAN * s
        region = boxed[i, y0 + start : y1 + start + extent, x0 + start : x1 + start + extent]
        with stage("branch maps"):
            maps_j = net.branch_maps(j, torch.from_numpy(np.ascontiguousarray(region))[None, None])
        height, width, m = maps_j.shape
        maps.append(maps_j.reshape(height * width, m))
        r = (rows - y0)[:, None, None] + s * cell[None, :, None]  # (N, 3, 1)
        c = (cols - x0)[:, None, None] + s * cell[None, None, :]  # (N, 1, 3)
        cells.append(offset + (r * width + c).reshape(-1))  # cells in row-major (i, j) order
        offset += height * width
    # each (voxel, cell)'s sum over the scales, gathered in one pass: embedding_bag's sum of the rows of
    # the stacked maps runs about 3.5x faster than gathering each scale (index_select or numpy's take)
    # and adding
    bags = torch.from_numpy(np.stack(cells, axis=1))  # (N * 9, scales)
    mixed = F.embedding_bag(bags, torch.cat(maps), mode="sum").view(len(rows), 9, -1)
    voxels = plane_to_volume_indices(np.stack([np.full_like(rows, i), rows, cols], axis=1), stack.plane)
    with stage("spatial inputs"):
        extras = _extras(
            spatial,
            voxels,
            with_patches_3d=False,
            with_atlas=atlas is None and prob_table is None,
            with_distances=distances is None,
        )
        if distances is not None:
            extras["dist_features"] = distances.at(voxels)
        if features_3d is not None:
            extras["features_3d"] = features_3d.at(voxels)
        if prob_table is not None:
            extras["prob_features"] = prob_table.at(voxels)
        elif atlas is not None:
            extras["atlas"] = atlas.at(voxels)
    return mixed, extras


@torch.no_grad()
def predict_dense(
    model: GanayeNet,
    stack: MultiScaleStack,
    mask: np.ndarray,
    *,
    spatial: SpatialInputs | None = None,
    probabilities: bool = False,
    probability_dtype: type = np.float16,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
    int8_margin: float | None = INT8_MARGIN,
    int8_report: Int8Report | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Classify every brain voxel of a volume with a fully convolutional pass per slice.

    Parameters
    ----------
    model : GanayeNet
        In eval mode.
    stack : MultiScaleStack
        From :func:`brainseg.sampling.patches.build_stack` for the same plane.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask, RAS+ order; voxels outside are background (class 0).
    spatial : SpatialInputs, optional
        Inputs of the spatial priors on the same grid (required when the
        network has any).
    probabilities : bool
        Also return the class probabilities.
    probability_dtype : numpy dtype
        Storage type of the probabilities (float16 keeps a 1 mm brain under 2 GB).
    progress : bool
        Show a tqdm progress bar over slices.
    logit_bias : ndarray of float, shape (num_classes,), optional
        Added to the logits before the softmax (the sampling prior's
        correction, :mod:`brainseg.postprocessing.prior`).
    int8_margin : float or None
        Without ``probabilities``, the labels come from a head whose first two fully connected layers
        run in int8 (:meth:`_DenseBaseNet.classes`), and every voxel whose two largest logits lie less
        than this far apart is computed again in float32; None: float32 throughout (so too where
        :func:`~brainseg.inference.int8.int8_available` is False). The probabilities are always float32's.
    int8_report : Int8Report, optional
        Filled in with the brain voxels the int8 head labelled and those it computed again in float32
        (left at zero where the pass ran in float32 throughout).

    Returns
    -------
    classes : ndarray of uint8, shape (D, H, W)
        Arg-max class index per voxel.
    probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
        Softmax probabilities (background = 1 outside the mask).
    """
    if model.training:
        raise ValueError("call model.eval() before dense inference")
    _check_spatial(model, spatial)
    _check_stack(stack)
    mask_p = to_plane(mask, stack.plane)
    if mask_p.shape != stack.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the stack {stack.shape} in plane {stack.plane}")
    classes = np.zeros(stack.shape, np.uint8)
    probs = None
    if probabilities:
        # volume order, background 1 outside the brain; filled class by class after the slices (below)
        probs = np.zeros((model.num_classes,) + mask.shape, probability_dtype)
        probs[0] = 1
    # int8 only for labels without probabilities (the probabilities are always float32's)
    net = _DenseBaseNet(model, int8=not probabilities and int8_margin is not None)
    bias = _bias(model, logit_bias)
    has_support = spatial is not None and spatial.support is not None and bool(mask.any())
    table = prob_table = None
    if model.dist_branch is not None and has_support:
        with stage("DistBranch table"):
            table = DistanceFeatureTable.cached(
                model.dist_branch,
                spatial.affine,  # type: ignore[union-attr]
                spatial.landmarks,  # type: ignore[union-attr]
                spatial.support,  # type: ignore[union-attr]
                stack.plane,
            )
    if model.prob_branch is not None and has_support:
        with stage("ProbBranch table"):
            prob_table = AtlasFeatureTable.cached(
                model.prob_branch,
                spatial.atlas,  # type: ignore[union-attr, arg-type]
                spatial.support,  # type: ignore[union-attr]
                stack.plane,
            )
    # from here (after any table was built) the 3dBranch's chunks and the slices' 10-50 MB arrays reuse
    # the heap instead of page-faulting afresh
    keep_freed_memory()
    needs_atlas = model.prob_branch is not None and prob_table is None
    brain = BrainRows(mask) if (model.branch_3d is not None or needs_atlas) else None
    dense_3d = dense_atlas = None
    if brain is not None and len(brain.voxels):
        if model.branch_3d is not None:
            with stage("3dBranch maps"):
                dense_3d = Dense3dBranch(model.branch_3d, spatial, mask, brain)  # type: ignore[arg-type]
                release_freed_memory()  # its chunks' 0.4 GB, which the slices' smaller arrays would not reuse
        if needs_atlas:
            with stage("atlas lookup"):
                dense_atlas = DenseAtlas(spatial, brain)  # type: ignore[arg-type]
    slices = [i for i in range(stack.shape[0]) if mask_p[i].any()]
    # Probabilities are gathered class-major at the brain voxels in slice order (each slice's values one
    # contiguous run per class), then copied class by class into the volume-order array: scattering each
    # slice's voxels straight into the strided (C, D, H, W) view wrote every value to its own cache line
    # (about 30 s for a 1 mm brain's 135 classes).
    compact = None if probs is None else np.empty((model.num_classes, int(mask_p.sum())), probs.dtype)
    offset = recomputed = 0
    labels_in_int8 = net.int8 is not None
    for i in tqdm(slices, desc="slices", unit="slice", disable=not progress, leave=False):
        rows, cols = np.nonzero(mask_p[i])
        n = len(rows)
        mixed, extras = _slice_inputs(net, stack, i, rows, cols, spatial, dense_3d, dense_atlas, table, prob_table)
        with stage("head"):
            if labels_in_int8:
                labels, doubtful = net.classes(mixed, extras, bias, int8_margin)  # type: ignore[arg-type]
                recomputed += doubtful
            else:
                p = torch.softmax(net.head(mixed, extras) + bias, dim=1)
                labels = p.argmax(dim=1)
        classes[i, rows, cols] = labels.numpy().astype(np.uint8)
        if compact is not None:
            with stage("probabilities"):
                compact[:, offset : offset + n] = p.T.to(
                    torch.float16 if compact.dtype == np.float16 else p.dtype
                ).numpy()
        offset += n
    if compact is not None:
        assert probs is not None
        release_freed_memory()  # the slices' transient arrays, before the class-by-class copies
        with stage("probabilities"):
            # brain voxel k of the volume (C order) is column order[k] of the slice-order array
            column = np.full(mask_p.shape, -1, np.int64)
            column[mask_p] = np.arange(offset)  # slice order: C order of the plane-order mask
            order = from_plane(column, stack.plane)[mask]
            index, columns = torch.from_numpy(order), torch.from_numpy(compact)
            for c0 in range(0, model.num_classes, 16):  # torch's gather: numpy's took 13 s of scattered reads
                block = torch.index_select(columns[c0 : c0 + 16], 1, index).numpy()
                for k, values in enumerate(block):
                    probs[c0 + k][mask] = values
    if labels_in_int8:
        log.debug("int8 head: %d of %d brain voxels computed again in float32", recomputed, offset)
    if int8_report is not None:
        int8_report.voxels, int8_report.recomputed = (offset, recomputed) if labels_in_int8 else (0, 0)
    return np.ascontiguousarray(from_plane(classes, stack.plane)), probs


@torch.no_grad()
def predict_dense_at(
    model: GanayeNet,
    stack: MultiScaleStack,
    indices: np.ndarray,
    *,
    spatial: SpatialInputs | None = None,
    logit_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Dense inference restricted to given voxels: the counterpart of :func:`predict_patches`.

    The branch maps are computed once per slice over the bounding box of that
    slice's requested voxels, and the head runs on those voxels only.

    Parameters
    ----------
    model : GanayeNet
        In eval mode.
    stack : MultiScaleStack
        Precomputed patch source of the image.
    indices : ndarray of int, shape (N, 3)
        Voxels in the plane's ``(S, A, B)`` order.
    spatial : SpatialInputs, optional
        Inputs of the spatial priors (required when the network has any).
    logit_bias : ndarray of float, shape (num_classes,), optional
        Added to the logits before the softmax.

    Returns
    -------
    ndarray of float32, shape (N, num_classes)
        Softmax probabilities, in the order of ``indices``.
    """
    if model.training:
        raise ValueError("call model.eval() before dense inference")
    _check_spatial(model, spatial)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    out = np.zeros((len(indices), model.num_classes), np.float32)
    net = _DenseBaseNet(model, int8=False)
    bias = _bias(model, logit_bias)
    dense_3d = None
    if model.branch_3d is not None and len(indices):
        mask = np.zeros(stack.shape, bool)
        mask[indices[:, 0], indices[:, 1], indices[:, 2]] = True
        volume_mask = np.ascontiguousarray(from_plane(mask, stack.plane))
        dense_3d = Dense3dBranch(model.branch_3d, spatial, volume_mask, BrainRows(volume_mask))  # type: ignore[arg-type]
    for i in np.unique(indices[:, 0]):
        which = np.flatnonzero(indices[:, 0] == i)
        rows, cols = indices[which, 1], indices[which, 2]
        mixed, extras = _slice_inputs(net, stack, int(i), rows, cols, spatial, dense_3d)
        out[which] = torch.softmax(net.head(mixed, extras) + bias, dim=1).numpy()
    return out
