"""Dense (whole-volume) inference of patch networks, and the patch-by-patch reference.

A patch classifier with pooling can be run over a whole slice at once by
turning every stride-2 pooling into a stride-1 pooling and dilating every
later layer (the "a trous" / shift-and-stitch equivalence, Long et al. 2015;
Sermanet et al. 2014). :class:`~brainseg.models.ganaye2018.ConvBranch` does
that when called with ``dilation=s``; :class:`~brainseg.inference.dense_network.DenseBaseNet` does the same
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
from brainseg.inference.dense_network import DenseBaseNet
from brainseg.inference.dense_priors import BrainRows, Dense3dBranch, DenseAtlas
from brainseg.inference.int8 import Int8Report
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

    Raises
    ------
    ValueError
        If the network needs ``spatial`` and it is missing, or ``logit_bias`` has the wrong shape.
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


def _slice_inputs(
    net: DenseBaseNet,
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
        run in int8 (:meth:`~brainseg.inference.dense_network.DenseBaseNet.classes`), and every voxel whose two largest logits lie less
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

    Raises
    ------
    ValueError
        If the model is in training mode, the network needs ``spatial`` and it is missing, the stack was not
        built for 25 x 25 patches, ``mask`` does not match the stack's shape, ``logit_bias`` has the wrong
        shape, or the network has more than 256 classes (the class map is uint8).
    """
    if model.training:
        raise ValueError("call model.eval() before dense inference")
    if model.num_classes > 256:
        raise ValueError(f"the class map is uint8: at most 256 classes, the network has {model.num_classes}")
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
    net = DenseBaseNet(model, int8=not probabilities and int8_margin is not None)
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

    Raises
    ------
    ValueError
        If the model is in training mode, the network needs ``spatial`` and it is missing, or ``logit_bias``
        has the wrong shape.
    """
    if model.training:
        raise ValueError("call model.eval() before dense inference")
    _check_spatial(model, spatial)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    out = np.zeros((len(indices), model.num_classes), np.float32)
    net = DenseBaseNet(model, int8=False)
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
