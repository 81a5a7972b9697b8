"""Dense (whole-volume) inference of patch networks, and the patch-by-patch reference.

A patch classifier with pooling can be run over a whole slice at once by
turning every stride-2 pooling into a stride-1 pooling and dilating every
later layer (the "a trous" / shift-and-stitch equivalence, Long et al. 2015;
Sermanet et al. 2014). :class:`~brainseg.models.ganaye2018.ConvBranch` does
that when called with ``dilation=s``. The branch maps are computed once per
slice over the brain's bounding box; the fully connected head then runs only
on brain voxels, fed with the 3 x 3 branch cells gathered at each voxel. The
result equals patch-by-patch classification up to float rounding (tested).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from brainseg.models.ganaye2018 import BaseNet, ConvBranch
from brainseg.sampling.patches import MultiScaleStack, extract_patches, from_plane, patch_origin, to_plane

__all__ = ["predict_dense", "predict_patches"]


@torch.no_grad()
def predict_patches(
    model: BaseNet, stack: MultiScaleStack, indices: np.ndarray, *, batch_size: int = 512
) -> np.ndarray:
    """Classify voxels one patch at a time (the slow reference).

    Parameters
    ----------
    model : BaseNet
        In eval mode.
    stack : MultiScaleStack
        Precomputed patch source of the image.
    indices : ndarray of int, shape (N, 3)
        Voxels in the plane's ``(S, A, B)`` order.
    batch_size : int
        Patches per forward pass.

    Returns
    -------
    ndarray of float32, shape (N, num_classes)
        Softmax probabilities.
    """
    out = []
    for start in range(0, len(indices), batch_size):
        patches = torch.from_numpy(extract_patches(stack, indices[start : start + batch_size]))
        out.append(torch.softmax(model(patches), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


@torch.no_grad()
def _slice_probabilities(
    model: BaseNet, stack: MultiScaleStack, i: int, rows: np.ndarray, cols: np.ndarray
) -> torch.Tensor:
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cells = ConvBranch.CELL_STRIDE * np.arange(3)
    features = []
    for branch, s, boxed in zip(model.branches, stack.scales, stack.stacks):
        start = stack.margin + patch_origin(s)
        extent = 2 * ConvBranch.CELL_STRIDE * s + ConvBranch.SPAN * s
        region = boxed[i, y0 + start : y1 + start + extent, x0 + start : x1 + start + extent]
        maps = branch(torch.from_numpy(np.ascontiguousarray(region))[None, None], dilation=s)[0]
        r = torch.from_numpy((rows - y0)[:, None] + s * cells)  # (N, 3)
        c = torch.from_numpy((cols - x0)[:, None] + s * cells)
        features.append(maps[:, r[:, :, None], c[:, None, :]].permute(1, 0, 2, 3))  # (N, C, 3, 3)
    return torch.softmax(model.head(torch.cat(features, dim=1)), dim=1)


@torch.no_grad()
def predict_dense(
    model: BaseNet,
    stack: MultiScaleStack,
    mask: np.ndarray,
    *,
    probabilities: bool = False,
    probability_dtype: type = np.float16,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Classify every brain voxel of a volume with a fully convolutional pass per slice.

    Parameters
    ----------
    model : BaseNet
        In eval mode.
    stack : MultiScaleStack
        From :func:`brainseg.sampling.patches.build_stack` for the same plane.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask, RAS+ order; voxels outside are background (class 0).
    probabilities : bool
        Also return the class probabilities.
    probability_dtype : numpy dtype
        Storage type of the probabilities (float16 keeps a 1 mm brain under 2 GB).
    progress : bool
        Show a tqdm progress bar over slices.

    Returns
    -------
    classes : ndarray of uint8, shape (D, H, W)
        Arg-max class index per voxel.
    probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
        Softmax probabilities (background = 1 outside the mask).
    """
    if model.training:
        raise ValueError("call model.eval() before dense inference")
    mask_p = to_plane(mask, stack.plane)
    if mask_p.shape != stack.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the stack {stack.shape} in plane {stack.plane}")
    classes = np.zeros(stack.shape, np.uint8)
    probs = None
    if probabilities:
        probs = np.zeros((model.num_classes,) + stack.shape, probability_dtype)
        probs[0] = 1
    slices = [i for i in range(stack.shape[0]) if mask_p[i].any()]
    for i in tqdm(slices, desc="slices", unit="slice", disable=not progress, leave=False):
        rows, cols = np.nonzero(mask_p[i])
        p = _slice_probabilities(model, stack, i, rows, cols)
        classes[i, rows, cols] = p.argmax(dim=1).numpy().astype(np.uint8)
        if probs is not None:
            probs[:, i, rows, cols] = p.numpy().T
    return (
        np.ascontiguousarray(from_plane(classes, stack.plane)),
        None if probs is None else np.ascontiguousarray(from_plane(probs, stack.plane)),
    )
