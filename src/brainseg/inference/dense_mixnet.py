"""Dense inference of MixNet (Chen and Merhof 2018, section 2.3): every view's slices, the views fused.

L. Chen, D. Merhof, "MixNet: Multi-modality Mix Network for Brain Segmentation", BrainLes 2018, LNCS
11383, Springer 2019. doi:10.1007/978-3-030-11723-8_37, arXiv:2004.09832.

For each plane of a :class:`~brainseg.families.chen2018.MixNetViews`, every slice of the cropped
volume (:class:`~brainseg.families.chen2018.MixNetInputs`) that holds brain voxels goes through the
plane's network in eval mode, a few slices at a time (channels-last memory format: faster here), padded
to even sides when the InitUnit pools; the last layer (the OutputUnit's 3 x 3 convolution to the classes,
most of the cost at 135 classes) runs at the slices' brain pixels only (:meth:`MixNet.logits_at`, about a
third of a slice cropped to the brain's box), and the softmax probabilities there are averaged into the
brain voxels (volume order) over the views with the fusion weights. The networks are fully convolutional,
so nothing needs converting: what the training crops went through is what a whole slice goes through.

Precision: where the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX; :func:`~brainseg.inference.bfloat16.bfloat16_available`),
each plane's network runs on a bfloat16 copy of its weights, the InitUnit excepted (it reads the image in
float32), and the logits are turned to float32 before the softmax: 0.6-0.8 of float32's time for three
views on such a CPU, with 0.19 % of brain voxels relabelled against float32 for the IBSR tissue model,
at near ties (docs/mixnet.md, "bfloat16"). Elsewhere, and with ``BFLOAT16 = False``, everything is float32.

Memory: the fused probabilities are kept at the brain voxels only, ``4 C N`` bytes for ``C`` classes
and ``N`` brain voxels (about 0.8 GB for 135 classes and 1.5 million voxels).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from brainseg.families.chen2018 import PLANE_AXIS, MixNetInputs, MixNetViews, slice_along
from brainseg.inference.bfloat16 import bfloat16_available
from brainseg.inference.dense_priors import logit_bias_tensor

__all__ = ["BFLOAT16", "CHANNELS_LAST", "SLICE_BATCH", "predict_mixnet", "view_probabilities"]

#: Slices per network pass.
SLICE_BATCH = 8
#: Run the convolutions in channels-last (NHWC) memory format (``benchmarks/bench_mixnet.py`` compares).
CHANNELS_LAST = True
#: Run the networks in bfloat16 on the CPU: True, False, or None for "where the CPU multiplies bfloat16
#: natively" (:func:`~brainseg.inference.bfloat16.bfloat16_available`; ``benchmarks/bench_mixnet.py`` compares).
BFLOAT16: bool | None = None


def _use_bfloat16(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    return bfloat16_available() if BFLOAT16 is None else bool(BFLOAT16)


class _Float32Init(nn.Module):
    """An InitUnit kept in float32 in a bfloat16 network: the image is not rounded, its output is.

    bfloat16's 8-bit significand would round the z-scored intensities themselves (by up to 0.4 %): with
    it, 0.42 % of one IBSR view's voxels changed label against float32, without it 0.33 %. The unit is
    one small convolution, so keeping it in float32 costs nothing measurable.
    """

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x.float()).to(torch.bfloat16)


def _inference_copy(net: nn.Module, bf16: bool) -> nn.Module:
    """A copy of one plane's MixNet in channels-last format and, with ``bf16``, bfloat16 weights."""
    net = copy.deepcopy(net)
    if CHANNELS_LAST:
        net = net.to(memory_format=torch.channels_last)
    if bf16:
        for name, child in net.named_children():
            if name != "inits":  # the InitUnits keep their float32 weights
                child.to(torch.bfloat16)
        for k, unit in enumerate(net.inits):
            net.inits[k] = _Float32Init(unit)
    return net


def _prepare(
    network: MixNetViews, inputs: MixNetInputs, mask: np.ndarray, slice_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mask on the crop's grid and its voxel numbers (-1 elsewhere), checking the call."""
    if any(m.training for m in network.modules()):
        raise ValueError("call network.eval() before inference")
    if slice_batch < 1:
        raise ValueError(f"slice_batch must be >= 1, got {slice_batch}")
    if network.num_classes > 256:
        raise ValueError(f"the class map is uint8: at most 256 classes, the network has {network.num_classes}")
    if inputs.modalities != network.in_channels:
        raise ValueError(f"the networks read {network.in_channels} modalities, the inputs hold {inputs.modalities}")
    mask = np.asarray(mask, bool)
    inside = inputs.crop(mask, False)
    if inside.sum() != mask.sum():
        raise ValueError("the brain mask reaches outside the box the inputs were cropped to")
    number = np.full(inside.shape, -1, np.int32)
    number[inside] = np.arange(int(inside.sum()), dtype=np.int32)
    return inside, number


def _accumulate(
    network: MixNetViews,
    inputs: MixNetInputs,
    inside: np.ndarray,
    number: np.ndarray,
    plane: str,
    weight: float,
    into: np.ndarray,
    bias: torch.Tensor | None,
    slice_batch: int,
    progress: bool,
) -> None:
    """Add ``weight`` times ``plane``'s softmax at the brain voxels to ``into`` ``(N, C)``."""
    axis = PLANE_AXIS[plane]
    device = next(network.parameters()).device
    # channels-last (NHWC) convolutions, about a quarter faster on this CPU, and bfloat16 where native
    # (benchmarks/bench_mixnet.py): on a copy, so that the caller's network keeps its format and dtype
    net = network.for_plane(plane)
    bf16 = _use_bfloat16(device)
    if CHANNELS_LAST or bf16:
        net = _inference_copy(net, bf16)
    other = tuple(a for a in range(3) if a != axis)
    brain_slices = np.flatnonzero(inside.any(axis=other))
    chunks = [brain_slices[i : i + slice_batch] for i in range(0, len(brain_slices), slice_batch)]
    for chunk in tqdm(chunks, desc=plane, disable=not progress, unit="batch"):
        x = np.stack([inputs.slice(axis, s) for s in chunk])
        a, b = x.shape[-2:]
        if network.pool and (a % 2 or b % 2):  # even sides: every pooling cell holds 2 x 2 pixels, as in training
            padded = np.empty(x.shape[:2] + (a + a % 2, b + b % 2), np.float32)
            padded[...] = inputs.background[None, :, None, None]
            padded[..., :a, :b] = x
            x = padded
        # the brain pixels of these slices, as flat indices into the (padded) batch (B, A, B')
        ids = np.stack([slice_along(number, axis, s) for s in chunk])
        k, i, j = np.nonzero(ids >= 0)
        pixels = (k * x.shape[-2] + i) * x.shape[-1] + j
        x = torch.from_numpy(x).to(device)
        logits = net.logits_at(
            x.contiguous(memory_format=torch.channels_last) if CHANNELS_LAST else x,
            torch.from_numpy(pixels).to(device),  # np.nonzero's int64
        ).float()
        if bias is not None:
            logits += bias.to(logits.device)
        p = torch.softmax(logits, dim=1).cpu().numpy()
        p *= weight
        into[ids[k, i, j]] += p


@torch.no_grad()
def view_probabilities(
    network: MixNetViews,
    inputs: MixNetInputs,
    mask: np.ndarray,
    plane: str,
    *,
    logit_bias: np.ndarray | None = None,
    slice_batch: int = SLICE_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """One view's softmax probabilities ``(C, N)`` float32 at the brain voxels (``np.argwhere(mask)`` order).

    Every slice of the cropped volume along ``plane`` that holds brain voxels goes through the
    plane's network (``slice_batch`` at a time; padded to even sides when the InitUnit pools, then
    cropped back). ``logit_bias`` ``(C,)`` is added to the logits before the softmax.

    Parameters
    ----------
    network : MixNetViews
        In eval mode.
    inputs : MixNetInputs
        The image cropped to the brain, with as many modalities as the network reads.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid; it must lie inside the box ``inputs`` was cropped to.
    plane : {'axial', 'coronal', 'sagittal'}
        The view, one of ``network.planes``.
    logit_bias : ndarray of float, shape (C,), optional
        Added to the logits before the softmax (the sampling prior's correction).
    slice_batch : int
        Slices per network pass.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ndarray of float32, shape (C, N)
        ``N = mask.sum()``, brain voxels in ``np.argwhere(mask)`` order.

    Raises
    ------
    ValueError
        If the network is in training mode, ``plane`` is not one of its views, the mask does not fit,
        ``logit_bias`` has the wrong shape, ``slice_batch`` < 1, the network has more than 256 classes or
        another number of modalities than ``inputs``.
    KeyError
        If ``plane`` is not a plane name at all.
    """
    inside, number = _prepare(network, inputs, mask, slice_batch)
    out = np.zeros((int(inside.sum()), network.num_classes), np.float32)
    _accumulate(
        network, inputs, inside, number, plane, 1.0, out, logit_bias_tensor(network, logit_bias), slice_batch, progress
    )
    return out.T


@torch.no_grad()
def predict_mixnet(
    network: MixNetViews,
    inputs: MixNetInputs,
    mask: np.ndarray,
    *,
    probabilities: bool = False,
    probability_dtype: type = np.float16,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
    slice_batch: int = SLICE_BATCH,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Multi-view inference (section 2.3): each view's probabilities, fused by weights, arg-max in the mask.

    Parameters
    ----------
    network : MixNetViews
        In eval mode.
    inputs : MixNetInputs
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid; voxels outside are background.
    probabilities : bool
        Also return the fused probabilities.
    probability_dtype : numpy dtype
        Their storage type.
    progress : bool
        Show a progress bar per view.
    logit_bias : ndarray of float, shape (C,), optional
        Added to every view's logits before its softmax (the sampling prior's correction).
    weights : sequence of float, optional
        Fusion weights in ``network.planes`` order (normalised here); default ``network.view_weights``.
        Views of weight 0 are not run.
    slice_batch : int
        Slices per network pass.

    Returns
    -------
    classes : ndarray of uint8, shape (D, H, W)
        Arg-max of the fused probabilities in the mask, 0 outside.
    probabilities : ndarray of ``probability_dtype``, shape (C, D, H, W), or None
        The fused probabilities, background 1 outside the mask; when asked.

    Raises
    ------
    ValueError
        If the network is in training mode, the mask does not fit the inputs, the weights or
        ``logit_bias`` have the wrong shape, ``slice_batch`` < 1, the network has more than 256 classes
        or another number of modalities than ``inputs``.
    """
    inside, number = _prepare(network, inputs, mask, slice_batch)
    weights = network.view_weights if weights is None else tuple(float(w) for w in weights)
    if len(weights) != len(network.planes) or min(weights) < 0 or not sum(weights) > 0:
        raise ValueError(f"need one weight >= 0 per plane {network.planes}, not all 0; got {weights}")
    bias = logit_bias_tensor(network, logit_bias)
    fused = np.zeros((int(inside.sum()), network.num_classes), np.float32)  # voxel-major: rows add at once
    for plane, weight in zip(network.planes, weights):
        if weight > 0:
            w = weight / sum(weights)
            _accumulate(network, inputs, inside, number, plane, w, fused, bias, slice_batch, progress)
    mask = np.asarray(mask, bool)
    classes = np.zeros(mask.shape, np.uint8)
    classes[mask] = fused.argmax(axis=1)
    probs = None
    if probabilities:
        probs = np.zeros((network.num_classes,) + mask.shape, probability_dtype)
        probs[0] = 1
        probs[:, mask] = fused.T
    return classes, probs
