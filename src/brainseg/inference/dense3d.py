"""Dense (whole-volume) inference of DeepNAT, and the patch-by-patch reference.

:class:`~brainseg.models.wachinger2018.DeepNAT` classifies one 24^3 patch at a
time. Here its convolutions run fully convolutionally over a zero-padded
volume: the stride-2 max-pool becomes a stride-1 pool and the two later
convolutions are dilated by 2 (the "a trous" / shift-and-stitch equivalence,
Long et al. 2015; Sermanet et al. 2014). The fully connected layers then run
only on brain voxels, fed with the 3 x 3 x 3 cells gathered at each voxel, so
every voxel gets exactly the patch network's per-task output for the patch
of which it is voxel (11, 11, 11) (tested: max abs difference of
probabilities <= 1e-5). This equivalence is why the network takes 24^3
patches, not the paper's 23^3: with 23 voxels the patch network's last
pooling window holds one conv1 output (Caffe's rounding up), and the dense
conv stage then needs eight corrected variants of the conv2 and conv3 maps
(built, tested and measured 5-7 times slower; see
:mod:`brainseg.models.wachinger2018`).

The tiling, its memory budget and how a hierarchy runs are :class:`~brainseg.inference.dense3d_runner.DenseRunner`'s
(:mod:`brainseg.inference.dense3d_runner`). :func:`predict_dense3d` combines the heads by Eq. 3 on the
fly, keeping float32 sums only for the mask voxels of the ``t + 2`` slices a slab of tiles points at;
:func:`segment_dense3d` also reduces each finished slab to its arg-max, so that a class map never needs
the ``(C, D, H, W)`` array.

Speed: the fully connected layers dominate (2.3 M multiply-adds per voxel
and network, against about 0.6 M for the convolutions with the halo); see
``benchmarks/bench_deepnat_dense.py`` for measured figures. bfloat16 is not
offered: on the days this machine's CPU reported AVX2 only, PyTorch ran
bfloat16 matrix products at 0.7 GFLOP/s against 57 for float32, and its
bfloat16 ``conv3d`` was slower still. Some days it reports AVX-512 BF16
(:mod:`brainseg.inference.bfloat16`); DeepNAT has not been re-measured on
those, and its labels take the int8 path (:mod:`brainseg.inference.dense3d_int8`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from brainseg.inference.dense3d_network import DEFAULT_MEMORY_BYTES
from brainseg.inference.dense3d_runner import DenseRunner, as_coordinates, check_deepnat_inputs
from brainseg.inference.dense_priors import logit_bias_tensor
from brainseg.models.wachinger2018 import PATCH_PADDING, PATCH_SIZE, DeepNATModel

__all__ = [
    "combine_task_probabilities",
    "extract_patches3d",
    "predict_dense3d",
    "predict_patches3d",
    "predict_task_probabilities3d",
    "segment_dense3d",
]


def extract_patches3d(image: np.ndarray, indices: np.ndarray, *, background: float = 0.0) -> np.ndarray:
    """Cut the 24^3 patches of voxels, padding outside the volume with ``background``.

    Parameters
    ----------
    image : ndarray of float32, shape (D, H, W)
        Preprocessed intensities.
    indices : ndarray of int, shape (N, 3)
        Patch centres, voxel indices in array-axis order.
    background : float
        Value of voxels outside the volume (default 0).

    Returns
    -------
    ndarray of float32, shape (N, 1, 24, 24, 24)
        Patch of voxel ``v`` covers ``v - 11 .. v + 12`` along each axis
        (:data:`~brainseg.models.wachinger2018.PATCH_CENTRE`).

    Raises
    ------
    ValueError
        If ``image`` is not 3-D or an index lies outside the volume.
    """
    image = np.asarray(image, np.float32)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    if image.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {image.shape}")
    if indices.size and ((indices < 0).any() or (indices >= np.array(image.shape)).any()):
        raise ValueError(f"voxel indices outside the volume of shape {image.shape}")
    padded = np.pad(image, PATCH_PADDING, constant_values=background)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (PATCH_SIZE,) * 3)
    return np.ascontiguousarray(windows[indices[:, 0], indices[:, 1], indices[:, 2]])[:, None]


@torch.no_grad()
def predict_patches3d(
    model: DeepNATModel,
    image: np.ndarray,
    indices: np.ndarray,
    coordinates: np.ndarray | None = None,
    *,
    background: float = 0.0,
    batch_size: int = 256,
    logit_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Per-task probabilities of voxels, one explicit patch at a time (the slow reference).

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade
        In eval mode; a cascade's forward pass gives its combined log-probabilities, which
        stand for the logits here.
    image : ndarray of float32, shape (D, H, W)
        Preprocessed intensities.
    indices : ndarray of int, shape (N, 3)
        Voxels to classify (patch centres), array-axis order.
    coordinates : ndarray of float32, shape (K, D, H, W), optional
        Per-voxel coordinates (:mod:`brainseg.features.coordinates`); required
        when the network has ``K > 0``, None or empty when ``K = 0``.
    background : float
        Value of voxels outside the volume.
    batch_size : int
        Patches per forward pass.
    logit_bias : ndarray of float, shape (C,), optional
        Added to every head's logits (a cascade's combined log-probabilities)
        before its softmax (the sampling prior's correction,
        :mod:`brainseg.postprocessing.prior`).

    Returns
    -------
    ndarray of float32, shape (N, T, C)
        Softmax of head ``t`` at voxel ``indices[i]`` in ``[i, t]``; it is a
        prediction for voxel ``indices[i] + model.offsets[t]``.

    Raises
    ------
    ValueError
        If the model is in training mode or the shapes are wrong.
    """
    image, coordinates = np.asarray(image, np.float32), as_coordinates(coordinates)
    check_deepnat_inputs(model, image, coordinates)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    device = next(model.parameters()).device
    bias = logit_bias_tensor(model, logit_bias)
    out = np.empty((len(indices), model.tasks, model.num_classes), np.float32)
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        patches = torch.from_numpy(extract_patches3d(image, batch, background=background)).to(device)
        coords = None
        if coordinates is not None:
            coords = torch.from_numpy(np.asarray(coordinates[:, batch[:, 0], batch[:, 1], batch[:, 2]].T, np.float32))
            coords = coords.to(device)
        logits = model(patches, coords)
        if bias is not None:
            logits = logits + bias
        out[start : start + len(batch)] = torch.softmax(logits, dim=2).cpu().numpy()
    return out


def _mask_rows(mask: np.ndarray) -> np.ndarray:
    """Row of each mask voxel in ``np.argwhere(mask)`` order, -1 outside (int32 unless the mask is huge)."""
    n = int(mask.sum())
    rows = np.full(mask.shape, -1, np.int32 if n < 2**31 else np.int64)
    rows[mask] = np.arange(n)
    return rows


def _scatter(
    total: torch.Tensor,
    count: torch.Tensor,
    first_row: int,
    rows: np.ndarray,
    voxels: np.ndarray,
    probs: torch.Tensor,
    offsets: np.ndarray,
) -> None:
    """Add head ``t``'s probabilities at ``voxels`` to the sums of the mask voxels ``voxels + offsets[t]`` (Eq. 3).

    ``total`` ``(R, C)`` and ``count`` ``(R,)`` hold the mask rows
    ``first_row .. first_row + R - 1`` (see :func:`_mask_rows`); every target
    in the mask must be among them. Targets outside the mask are dropped.
    """
    for t, offset in enumerate(offsets):
        target = voxels + offset
        inside = ((target >= 0) & (target < rows.shape)).all(axis=1)
        row = np.full(len(target), -1, np.int64)
        row[inside] = rows[tuple(target[inside].T)]
        keep = row >= 0
        index = torch.from_numpy(row[keep] - first_row)
        total.index_add_(0, index, probs[torch.from_numpy(keep), t])
        count.index_add_(0, index, torch.ones(len(index)))


def _finish(out: np.ndarray, mask: np.ndarray, total: torch.Tensor, count: torch.Tensor, first: int, stop: int) -> None:
    """Write the means of the mask voxels of slices ``[first, stop)`` (clipped to the volume), held in row order."""
    first, stop = max(first, 0), min(stop, mask.shape[0])
    if first >= stop:
        return
    z, y, x = np.nonzero(mask[first:stop])
    out[:, z + first, y, x] = (total / count[:, None]).numpy().T


def predict_task_probabilities3d(
    model: DeepNATModel,
    image: np.ndarray,
    mask: np.ndarray,
    coordinates: np.ndarray | None = None,
    *,
    tile_size: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    background: float = 0.0,
    voxel_batch: int = 2048,
    probability_dtype: type = np.float32,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Per-task probabilities of every mask voxel, computed densely (equal to :func:`predict_patches3d`).

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade
        In eval mode (a cascade: see the module docstring).
    image : ndarray of float32, shape (D, H, W)
        Preprocessed intensities.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask: the voxels to classify.
    coordinates : ndarray of float32, shape (K, D, H, W), optional
        Per-voxel coordinates (:mod:`brainseg.features.coordinates`); required
        when the network has ``K > 0``, None or empty when ``K = 0``.
    tile_size : int, optional
        Tile side along the first two axes, in voxels; by default
        :func:`~brainseg.inference.dense3d_network.choose_tile_size` for ``memory_bytes``.
    memory_bytes : int
        Budget of the conv stage of one tile (see the module docstring).
    background : float
        Value of voxels outside the volume (the patches' zero padding).
    voxel_batch : int
        Voxels per pass through the fully connected layers.
    probability_dtype : numpy dtype
        Type of the returned array (float32 or float16).
    progress : bool
        Show a tqdm progress bar over slabs.
    logit_bias : ndarray of float, shape (C,), optional
        Added to every head's logits before its softmax (as in :func:`predict_patches3d`).

    Returns
    -------
    ndarray of ``probability_dtype``, shape (N, T, C)
        Row ``i`` belongs to voxel ``np.argwhere(mask)[i]``; ``[i, t]`` is
        head ``t``'s softmax, a prediction for that voxel plus
        ``model.offsets[t]``. Needs ``N T C`` x itemsize bytes (5.7 GB in
        float32 for 1.5 M voxels, 7 tasks and 135 classes):
        :func:`predict_dense3d` combines on the fly instead.

    Raises
    ------
    ValueError
        If the model is in training mode or the shapes disagree.
    """
    runner = DenseRunner(model, image, mask, coordinates, tile_size, memory_bytes, background, voxel_batch, logit_bias)
    rows = _mask_rows(runner.mask)
    out = np.empty((int(runner.mask.sum()), model.tasks, model.num_classes), probability_dtype)
    for z0, z1 in tqdm(runner.slabs(), desc="slabs", unit="slab", disable=not progress, leave=False):
        for voxels, probs in runner.slab(z0, z1):
            out[rows[voxels[:, 0], voxels[:, 1], voxels[:, 2]]] = probs.numpy()
    return out


def combine_task_probabilities(
    probabilities: np.ndarray, mask: np.ndarray, offsets: np.ndarray, *, probability_dtype: type = np.float32
) -> np.ndarray:
    """Combine per-task probabilities of mask voxels into one map by Eq. 3.

    Each mask voxel gets the mean of the heads' predictions that point at it:
    head ``t`` at mask voxel ``v`` predicts ``v + offsets[t]``. Near the mask
    and volume border fewer heads point at a voxel (the centre head always
    does); predictions that point outside the mask are dropped. This equals
    :func:`~brainseg.models.wachinger2018.average_task_probabilities` on the
    maps, restricted to the mask.

    Parameters
    ----------
    probabilities : ndarray of float, shape (N, T, C)
        From :func:`predict_task_probabilities3d`: row ``i`` is voxel
        ``np.argwhere(mask)[i]``.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask.
    offsets : ndarray of int, shape (T, 3)
        The heads' offsets, ``model.offsets``.
    probability_dtype : numpy dtype
        Type of the result (float32 or float16).

    Returns
    -------
    ndarray of ``probability_dtype``, shape (C, D, H, W)
        Probabilities; outside the mask background (class 0) has probability 1.

    Raises
    ------
    ValueError
        If the shapes disagree.
    """
    mask = np.asarray(mask, bool)
    offsets = np.asarray(offsets, np.int64)
    voxels = np.argwhere(mask)
    if probabilities.ndim != 3 or probabilities.shape[:2] != (len(voxels), len(offsets)):
        raise ValueError(
            f"expected probabilities of shape ({len(voxels)}, {len(offsets)}, C), got {probabilities.shape}"
        )
    num_classes = probabilities.shape[2]
    total, count = torch.zeros((len(voxels), num_classes)), torch.zeros(len(voxels))
    probs = torch.from_numpy(np.asarray(probabilities, np.float32))
    _scatter(total, count, 0, _mask_rows(mask), voxels, probs, offsets)
    out = np.zeros((num_classes,) + mask.shape, probability_dtype)
    out[0] = 1
    _finish(out, mask, total, count, 0, mask.shape[0])
    return out


def predict_dense3d(
    model: DeepNATModel,
    image: np.ndarray,
    mask: np.ndarray,
    coordinates: np.ndarray | None = None,
    *,
    tile_size: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    background: float = 0.0,
    voxel_batch: int = 2048,
    probability_dtype: type = np.float32,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities of every voxel: dense per-task inference combined by Eq. 3 on the fly.

    The same result as ``combine_task_probabilities(predict_task_probabilities3d(...), mask,
    model.offsets)`` without holding all per-task probabilities: float32 sums
    are kept only for the mask voxels of the ``t + 2`` slices the current
    slab of tiles points at.

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade
        In eval mode (a cascade: see the module docstring).
    image : ndarray of float32, shape (D, H, W)
        Preprocessed intensities.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask: the voxels to classify.
    coordinates : ndarray of float32, shape (K, D, H, W), optional
        Per-voxel coordinates (:mod:`brainseg.features.coordinates`); required
        when the network has ``K > 0``, None or empty when ``K = 0``.
    tile_size, memory_bytes, background, voxel_batch, progress, logit_bias
        See :func:`predict_task_probabilities3d`.
    probability_dtype : numpy dtype
        Type of the result: float32, or float16 to halve its size.

    Returns
    -------
    ndarray of ``probability_dtype``, shape (C, D, H, W)
        Eq. 3 probabilities in the mask; outside it background (class 0) has
        probability 1.

    Raises
    ------
    ValueError
        If the model is in training mode or the shapes disagree.
    """
    runner = DenseRunner(model, image, mask, coordinates, tile_size, memory_bytes, background, voxel_batch, logit_bias)
    out = np.zeros((model.num_classes,) + runner.mask.shape, probability_dtype)
    out[0] = 1
    for first, stop, means in _combined(runner, progress):
        z, y, x = np.nonzero(runner.mask[first:stop])
        out[:, z + first, y, x] = means.numpy().T
    return out


def segment_dense3d(
    model: DeepNATModel,
    image: np.ndarray,
    mask: np.ndarray,
    coordinates: np.ndarray | None = None,
    *,
    probabilities: bool = False,
    probability_dtype: type = np.float32,
    tile_size: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    background: float = 0.0,
    voxel_batch: int = 2048,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class map of a volume (arg-max of the Eq. 3 probabilities), and the probabilities if asked.

    Without ``probabilities`` no ``(C, D, H, W)`` array is ever held (1.9 GB
    in float16 for 135 classes on a 180 x 220 x 180 grid): each slab's
    means are reduced to their arg-max as they complete.

    Parameters
    ----------
    model, image, mask, coordinates
        As in :func:`predict_dense3d`.
    probabilities : bool
        Also return the probabilities of :func:`predict_dense3d`.
    probability_dtype : numpy dtype
        Their type (float32 or float16); the class map is the arg-max of the
        float32 means whatever this type.
    tile_size, memory_bytes, background, voxel_batch, progress, logit_bias
        See :func:`predict_task_probabilities3d`.

    Returns
    -------
    classes : ndarray of uint8, shape (D, H, W)
        Class indices (not label numbers); 0 (background) outside the mask.
    probabilities : ndarray of ``probability_dtype``, shape (C, D, H, W), or None
        As :func:`predict_dense3d` returns them, when asked.

    Raises
    ------
    ValueError
        If the model is in training mode, the shapes disagree, or the model
        has more than 256 classes (the class map is uint8).
    """
    if model.num_classes > 256:
        raise ValueError(f"the class map is uint8: at most 256 classes, the network has {model.num_classes}")
    runner = DenseRunner(model, image, mask, coordinates, tile_size, memory_bytes, background, voxel_batch, logit_bias)
    classes = np.zeros(runner.mask.shape, np.uint8)
    probs = None
    if probabilities:
        probs = np.zeros((model.num_classes,) + runner.mask.shape, probability_dtype)
        probs[0] = 1
    for first, stop, means in _combined(runner, progress):
        z, y, x = np.nonzero(runner.mask[first:stop])
        classes[z + first, y, x] = means.argmax(dim=1).numpy().astype(np.uint8)
        if probs is not None:
            probs[:, z + first, y, x] = means.numpy().T
    return classes, probs


def _combined(runner: DenseRunner, progress: bool) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Eq. 3 means, slab by slab: ``(first, stop, means)`` for the mask voxels of slices ``[first, stop)``.

    ``means`` is float32 ``(R, C)`` in ``np.argwhere`` order of those voxels;
    the ranges are disjoint, clipped to the volume, and cover every mask slice.
    """
    mask, offsets, num_classes = runner.mask, runner.model.offsets, runner.model.num_classes
    reach = int(np.abs(offsets[:, 0]).max())  # heads point this many slices up or down
    rows = _mask_rows(mask)
    starts = np.concatenate([[0], np.cumsum(mask.sum(axis=(1, 2)))])  # first row of each slice

    def row_at(z: int) -> int:
        return int(starts[min(max(z, 0), mask.shape[0])])

    def means(total: torch.Tensor, count: torch.Tensor, first: int, stop: int) -> Iterator:
        first, stop = max(first, 0), min(stop, mask.shape[0])
        if first < stop:
            yield first, stop, total / count[:, None]

    slabs = runner.slabs()
    carry = (torch.zeros((0, num_classes)), torch.zeros(0))
    for z0, z1 in tqdm(slabs, desc="slabs", unit="slab", disable=not progress, leave=False):
        first, done = row_at(z0 - reach), row_at(z1 - reach)  # the window holds slices [z0 - reach, z1 + reach)
        total, count = torch.zeros((row_at(z1 + reach) - first, num_classes)), torch.zeros(row_at(z1 + reach) - first)
        total[: len(carry[0])], count[: len(carry[1])] = carry
        for voxels, probs in runner.slab(z0, z1):
            _scatter(total, count, first, rows, voxels, probs, offsets)
        yield from means(total[: done - first], count[: done - first], z0 - reach, z1 - reach)
        carry = (total[done - first :].clone(), count[done - first :].clone())  # later slabs add to these
    if slabs:
        yield from means(carry[0], carry[1], slabs[-1][1] - reach, slabs[-1][1] + reach)
