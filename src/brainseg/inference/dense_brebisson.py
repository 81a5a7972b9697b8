"""Dense (whole-brain) inference of de Brébisson and Montana's network (2015, Fig. 1, §3.1, §3.4).

A. de Brébisson, G. Montana, "Deep neural networks for anatomical brain segmentation", CVPR Workshops
2015. :class:`~brainseg.models.brebisson2015.BrebissonNet` classifies one voxel from its patches
(:func:`brainseg.families.brebisson2015.pathway_inputs`); run patch by patch, every 2-D convolution
would be computed once per patch holding its input, 29^2 times per plane. Here each pathway runs once
over the brain, and every brain voxel gets exactly the patch network's output (tested: max abs
difference of probabilities <= 1e-5).

The first merged layer is linear, so its pre-activation is a sum of per-pathway contributions,
``W x + b = b + sum_p W_p f_p`` (``W_p`` the columns of pathway ``p``'s features ``f_p``), accumulated
into one float32 row of ``h`` units per brain voxel (rows in ``np.argwhere(mask)`` order):

- **2-D pathways** (:class:`~brainseg.models.brebisson2015.PlanarPathway`: conv 5, ReLU, max pool 2
  stride 2, conv 5, ReLU, max pool 2 stride 2), slice by slice along each plane's fixed axis over the
  padded brain crop (:class:`~brainseg.sampling.orthogonal.OrthogonalPatches`). Sample ``k`` of a patch
  at scale ``s`` (1: orthogonal, 3: compressed) is ``x_s[u + s (k - 14)]``, ``x_s`` the slice averaged in
  ``s x s`` blocks (centred), so in 1-D (the same along both in-plane axes), ReLU after each convolution::

      A[t] = sum_d w1[d] x_s[t + s d]      B[t] = max(A[t], A[t + s])
      C[t] = sum_d w2[d] B[t + 2 s d]      E[t] = max(C[t], C[t + 2 s])

  (convolutions dilated by ``s`` and ``2 s``, stride-1 poolings dilated likewise: the "a trous"
  equivalence, as in :mod:`brainseg.inference.dense`), and feature ``(c, i, j)`` of voxel ``u``'s patch
  is ``E[c, u_a + s (4 i - 14), u_b + s (4 j - 14)]``. ``E`` is kept channel-last, so a voxel's 16 cells
  are 16 gathered rows; they meet the matching columns of ``W``, reordered to cell-major.
- **3-D pathway**: the 13^3 cubes of a tile of voxels are gathered (a strided view of the padded crop)
  and run through the pathway's fully connected layers.
- **coordinates** and **centroid distances** (§3.1.2): computed per voxel, times their columns.

The rest of the network (ReLU, the other merged layers, the softmax) runs on tiles of ``tile`` voxels.

Two stages (§3.4). A :class:`~brainseg.models.brebisson2015.BrebissonTwoStage` is run through
:func:`~brainseg.inference.two_stage.iterate_centroids`: the first-stage network's pre-activations are
computed, classified and freed; the full network's image contributions (every pathway but the
centroids) are computed once and kept, and each pass adds only the distances to the latest centroids
and runs the head. The kept array is ``N x h`` float32: 1.5 GB for 1.5 M voxels and ``h = 256``, 18 GB
with the paper's ``h = 3000``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from brainseg.families.brebisson2015 import CUBE, HALF, BrebissonInputs
from brainseg.features.centroids import RegionCentroids
from brainseg.inference.dense_network import max_pool2_dilated
from brainseg.inference.dense_priors import logit_bias_tensor
from brainseg.inference.two_stage import TwoStageResult, iterate_centroids
from brainseg.models.brebisson2015 import BrebissonNet, BrebissonTwoStage, PlanarPathway
from brainseg.sampling.orthogonal import ORTHOGONAL_PLANES
from brainseg.timing import stage

__all__ = ["brebisson_probabilities", "predict_brebisson"]

#: Block size of each 2-D pathway kind (the compressed patches' is the paper's 3).
_SCALES = {"patch_2d": 1, "orthogonal": 1, "compressed": 3}


class _DenseNet:
    """A :class:`BrebissonNet` in eval mode with its first merged layer split by pathway.

    ``planes[plane]`` lists the 2-D pathways reading that plane's patch, as ``(pathway, scale)``, and
    ``plane_weights[plane]`` their columns of the first layer side by side, each block reordered from
    the patch network's channel-major ``(c, i, j)`` to the gathered cells' ``(i, j, c)``.
    """

    def __init__(self, network: BrebissonNet) -> None:
        self.network = network
        layers = [*network.merge, network.out]
        first = layers[0]
        self.head = nn.Sequential(*layers[1:])  # the ReLU after the first layer, then the rest
        weight, self.bias = first.weight.detach(), first.bias.detach()
        self.width = weight.shape[0]
        blocks: list[tuple[str, str | None, int]] = []
        for name in network.pathways:
            if name in _SCALES:
                c2 = (network.single if name == "patch_2d" else getattr(network, name)[0]).second.out_channels
                planes = ("axial",) if name == "patch_2d" else tuple(ORTHOGONAL_PLANES)
                blocks += [(name, plane, 16 * c2) for plane in planes]
            elif name == "patch_3d":
                linear = [m for m in network.volume if isinstance(m, nn.Linear)]
                blocks.append((name, None, linear[-1].out_features if linear else CUBE**3))
            else:
                blocks.append((name, None, 3 if name == "coordinates" else network.num_centroids))
        parts = torch.split(weight, [n for _, _, n in blocks], dim=1)
        self.planes: dict[str, list[tuple[PlanarPathway, int]]] = {plane: [] for plane in ORTHOGONAL_PLANES}
        columns: dict[str, list[torch.Tensor]] = {plane: [] for plane in ORTHOGONAL_PLANES}
        self.columns: dict[str, torch.Tensor] = {}
        for (name, plane, n), w in zip(blocks, parts):
            if plane is None:
                self.columns[name] = w.contiguous()
                continue
            k = list(ORTHOGONAL_PLANES).index(plane)
            path = network.single if name == "patch_2d" else getattr(network, name)[k]
            self.planes[plane].append((path, _SCALES[name]))
            columns[plane].append(w.reshape(self.width, n // 16, 4, 4).permute(0, 2, 3, 1).reshape(self.width, n))
        self.plane_weights = {p: torch.cat(c, dim=1).T.contiguous() for p, c in columns.items() if c}

    def image_partials(
        self, inputs: BrebissonInputs, voxels: np.ndarray, tile: int, progress: bool = False
    ) -> torch.Tensor:
        """The first layer's bias plus every contribution but the centroids', ``(N, h)`` float32, rows of ``voxels``."""
        patches = inputs.patches
        device = self.bias.device
        pre = self.bias.expand(len(voxels), self.width).clone()
        local = voxels - patches.origin + patches.margin  # indices into the padded crop
        for plane, (a, b) in ORTHOGONAL_PLANES.items():
            if not self.planes[plane] or not len(voxels):
                continue
            fixed = 3 - a - b
            order = np.argsort(local[:, fixed], kind="stable")
            keys = local[order, fixed]
            bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
            for lo, hi in tqdm(
                list(zip(bounds[:-1], bounds[1:])), desc=f"{plane} slices", disable=not progress, leave=False
            ):
                rows = order[lo:hi]
                image = np.take(patches.padded, keys[lo], axis=fixed)  # (A, B): the plane's in-plane axes
                self._slice(pre, plane, image, local[rows, a], local[rows, b], torch.from_numpy(rows), tile)
        if "patch_3d" in self.columns:
            windows = np.lib.stride_tricks.sliding_window_view(patches.padded, (CUBE,) * 3)
            for start in range(0, len(voxels), tile):
                corner = local[start : start + tile] - CUBE // 2
                cubes = np.ascontiguousarray(windows[corner[:, 0], corner[:, 1], corner[:, 2]])
                features = self.network.volume(torch.from_numpy(cubes).to(device).reshape(len(corner), -1))
                pre[start : start + len(corner)].addmm_(features, self.columns["patch_3d"].T)
        if "coordinates" in self.columns:
            coordinates = torch.from_numpy(inputs.coordinates(voxels)).to(device)
            pre.addmm_(coordinates, self.columns["coordinates"].T)
        return pre

    def _slice(
        self,
        pre: torch.Tensor,
        plane: str,
        image: np.ndarray,
        ua: np.ndarray,
        ub: np.ndarray,
        rows: torch.Tensor,
        tile: int,
    ) -> None:
        """Add the 2-D pathways' contributions of one slice's voxels (padded in-plane indices ``ua``, ``ub``)."""
        a0, a1, b0, b1 = int(ua.min()), int(ua.max()) + 1, int(ub.min()), int(ub.max()) + 1
        maps, firsts, cells = [], [], []
        for path, s in self.planes[plane]:
            h = (s - 1) // 2  # a block's reach beyond its centre
            # rows a0 - 14 s .. a1 - 1 + 13 s of x_s (the last patch row reaches no feature), and their blocks
            region = image[a0 - HALF * s - h : a1 + (HALF - 1) * s + h, b0 - HALF * s - h : b1 + (HALF - 1) * s + h]
            x = torch.from_numpy(np.ascontiguousarray(region, np.float64 if s > 1 else np.float32))[None, None]
            if s > 1:  # block means in float64, as the patches take them: x_s[t] is centred at a0 - 14 s + t
                x = F.avg_pool2d(x, s, stride=1)
            x = x.float().to(self.bias.device)
            x = max_pool2_dilated(torch.relu_(F.conv2d(x, path.first.weight, path.first.bias, dilation=s)), s)
            x = max_pool2_dilated(
                torch.relu_(F.conv2d(x, path.second.weight, path.second.bias, dilation=2 * s)), 2 * s
            )[0]
            c2, _, width = x.shape
            maps.append(x.permute(1, 2, 0).reshape(-1, c2))  # (A' B', c2): E at a0 - 14 s + t
            firsts.append(torch.from_numpy((ua - a0) * width + (ub - b0)))
            grid = 4 * s * np.arange(4)
            cells.append(torch.from_numpy((grid[:, None] * width + grid[None, :]).reshape(-1)))  # (i, j) C order
        weights = self.plane_weights[plane]
        for start in range(0, len(rows), tile):
            gathered = [
                m[(f[start : start + tile, None] + c[None]).reshape(-1)].view(len(f[start : start + tile]), -1)
                for m, f, c in zip(maps, firsts, cells)
            ]
            features = gathered[0] if len(gathered) == 1 else torch.cat(gathered, dim=1)
            pre.index_add_(0, rows[start : start + tile].to(pre.device), features @ weights)

    def logits(self, pre: torch.Tensor, distances: np.ndarray | None) -> torch.Tensor:
        """Logits ``(n, C)`` from pre-activations ``(n, h)`` (left unchanged) and centroid distances ``(n, K)``."""
        if distances is not None:
            pre = torch.addmm(pre, torch.from_numpy(distances).to(pre.device), self.columns["centroids"].T)
        return self.head(pre)


def _check(network: BrebissonNet, inputs: BrebissonInputs, mask: np.ndarray, tile: int) -> np.ndarray:
    """The brain voxels ``(N, 3)`` of a valid call (ValueError naming the problem otherwise)."""
    if any(m.training for m in network.modules()):
        raise ValueError("call network.eval() before dense inference")
    if (network.patch_2d, network.patch_3d) != (2 * HALF + 1, CUBE):
        raise ValueError(
            f"the patches are {2 * HALF + 1}^2 and {CUBE}^3, the network reads "
            f"{network.patch_2d}^2 and {network.patch_3d}^3"
        )
    if network.num_classes > 256:
        raise ValueError(f"the class map is uint8: at most 256 classes, the network has {network.num_classes}")
    if "centroids" in network.pathways and network.num_centroids != inputs.num_regions:
        raise ValueError(
            f"the network reads {network.num_centroids} centroid distances, the inputs have "
            f"{inputs.num_regions} regions"
        )
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    mask = np.asarray(mask)
    if mask.shape != tuple(inputs.patches.shape):
        raise ValueError(f"mask shape {mask.shape} differs from the inputs' grid {tuple(inputs.patches.shape)}")
    voxels = np.argwhere(mask.astype(bool, copy=False))
    local = voxels - inputs.patches.origin + inputs.patches.margin
    if len(local) and (
        (local < inputs.patches.margin).any()
        or (local >= np.array(inputs.patches.padded.shape) - inputs.patches.margin).any()
    ):
        raise ValueError("mask voxels lie outside the brain's bounding box the inputs were cropped to")
    return voxels


def _softmax_tiles(
    dense: _DenseNet,
    pre: torch.Tensor,
    inputs: BrebissonInputs,
    voxels: np.ndarray,
    centroids: RegionCentroids | None,
    bias: torch.Tensor | None,
    tile: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, probabilities (n, C) float32 tensor)`` over tiles of the rows."""
    for start in range(0, len(voxels), tile):
        distances = None
        if centroids is not None:
            distances = centroids.distances(inputs.points_mm(voxels[start : start + tile]))
        logits = dense.logits(pre[start : start + tile], distances)
        yield start, torch.softmax(logits if bias is None else logits + bias, dim=1).float().cpu()


@torch.no_grad()
def brebisson_probabilities(
    network: BrebissonNet,
    inputs: BrebissonInputs,
    mask: np.ndarray,
    centroids: RegionCentroids | None = None,
    *,
    logit_bias: np.ndarray | None = None,
    tile: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """Softmax of one network at every brain voxel, computed densely (equal to the patch-by-patch network).

    Parameters
    ----------
    network : BrebissonNet
        In eval mode.
    inputs : BrebissonInputs
        From :meth:`brainseg.families.brebisson2015.BrebissonFamily.case_inputs`.
    mask : ndarray of bool, shape (D, H, W)
        Brain voxels, inside the bounding box of the mask ``inputs`` were cropped to.
    centroids : RegionCentroids, optional
        The region centroids the distances are measured to; required when the network reads them.
    logit_bias : ndarray of float, shape (C,), optional
        Added to the logits before the softmax.
    tile : int
        Voxels per pass through the fully connected layers.
    progress : bool
        Show progress bars over slices.

    Returns
    -------
    ndarray of float32, shape (N, C)
        Row ``i`` is voxel ``np.argwhere(mask)[i]``.

    Raises
    ------
    ValueError
        If the network is in training mode, the centroids are missing, or the shapes disagree.
    """
    voxels = _check(network, inputs, mask, tile)
    if ("centroids" in network.pathways) != (centroids is not None):
        raise ValueError("pass centroids exactly when the network reads the centroid distances")
    dense, bias = _DenseNet(network), logit_bias_tensor(network, logit_bias)
    pre = dense.image_partials(inputs, voxels, tile, progress)
    out = np.empty((len(voxels), network.num_classes), np.float32)
    for start, p in _softmax_tiles(dense, pre, inputs, voxels, centroids, bias, tile):
        out[start : start + len(p)] = p.numpy()
    return out


@torch.no_grad()
def predict_brebisson(
    network: BrebissonNet | BrebissonTwoStage,
    inputs: BrebissonInputs,
    mask: np.ndarray,
    *,
    probabilities: bool = False,
    probability_dtype: type = np.float16,
    progress: bool = False,
    logit_bias: np.ndarray | None = None,
    max_iterations: int | None = None,
    tolerance: float | None = None,
    tile: int = 4096,
    keep_passes: bool = False,
    centroids: RegionCentroids | None = None,
) -> tuple[np.ndarray, np.ndarray | None, TwoStageResult | None]:
    """Segment a brain densely; with two networks, by the iterative two-stage inference (§3.4).

    Parameters
    ----------
    network : BrebissonNet or BrebissonTwoStage
        In eval mode (the caller's task, as for the other dense predictors). A single
        :class:`BrebissonNet` must not read the centroid distances (they need a first stage).
    inputs : BrebissonInputs
        From :meth:`brainseg.families.brebisson2015.BrebissonFamily.case_inputs`.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid (``inputs.patches.shape``); voxels outside are background.
    probabilities : bool
        Also return the class probabilities (of the last pass, the one the classes come from).
    probability_dtype : numpy dtype
        Their storage type.
    progress : bool
        Show progress bars over slices.
    logit_bias : ndarray of float, shape (C,), optional
        Added to the logits of every network and pass before the softmax (the sampling prior's
        correction, :mod:`brainseg.postprocessing.prior`).
    max_iterations, tolerance : int, float, optional
        Of :func:`~brainseg.inference.two_stage.iterate_centroids`; default ``inputs.max_iterations``
        and ``inputs.tolerance``.
    tile : int
        Voxels per pass through the fully connected layers (and per gather of 3-D patches).
    keep_passes : bool
        Keep every pass's class map in the result (:attr:`TwoStageResult.passes`).
    centroids : RegionCentroids, optional
        Known centroids (e.g. of the reference label map: the "true centroids" with which the
        paper's Table 1 scored its centroid-only network). A two-stage network then skips its first
        stage and the loop: one pass of the full network with these distances (result: 1
        iteration, nothing changed counted).

    Returns
    -------
    classes : ndarray of uint8, shape (D, H, W)
        Class indices (arg-max of the probabilities), 0 outside the mask.
    probabilities : ndarray of ``probability_dtype``, shape (C, D, H, W), or None
        Softmax probabilities, background 1 outside the mask; when asked.
    result : TwoStageResult or None
        What the iterative inference did (a :class:`BrebissonTwoStage`), else None.

    Raises
    ------
    ValueError
        If a network is in training mode, a single network reads the centroid distances, the
        shapes disagree, ``max_iterations`` < 1 or ``tolerance`` < 0, or ``centroids`` are given
        to a single network.
    """
    two_stage = isinstance(network, BrebissonTwoStage)
    first_net = network.first if two_stage else network
    if centroids is not None and not two_stage:
        raise ValueError("centroids are read by the full network of a BrebissonTwoStage; this is a single network")
    if not two_stage and "centroids" in network.pathways:
        raise ValueError("a network reading the centroid distances needs a first stage: use BrebissonTwoStage")
    voxels = _check(first_net, inputs, mask, tile)
    if two_stage:
        _check(network.full, inputs, mask, tile)
    bias = logit_bias_tensor(first_net, logit_bias)
    index = tuple(voxels.T)
    probs = None
    if probabilities:
        probs = np.zeros((first_net.num_classes,) + tuple(np.shape(mask)), probability_dtype)
        probs[0] = 1

    def classify(dense: _DenseNet, pre: torch.Tensor, centroids: RegionCentroids | None) -> np.ndarray:
        # Every call overwrites ``probs``: they end as those of the last classes returned.
        classes = np.zeros(np.shape(mask), np.uint8)
        with stage("centroids and head" if centroids is not None else "head"):
            for start, p in _softmax_tiles(dense, pre, inputs, voxels, centroids, bias, tile):
                rows = tuple(i[start : start + len(p)] for i in index)
                classes[rows] = p.argmax(dim=1).numpy().astype(np.uint8)
                if probs is not None:
                    probs[(slice(None),) + rows] = p.numpy().T
        return classes

    def first_stage() -> np.ndarray:
        dense = _DenseNet(first_net)
        with stage("image pathways"):
            pre = dense.image_partials(inputs, voxels, tile, progress)
        return classify(dense, pre, None)  # the partial sums are freed on return

    if not two_stage:
        return first_stage(), probs, None
    full = _DenseNet(network.full)
    kept: list[torch.Tensor] = []  # the full network's image contributions, computed on the first pass

    def full_network(centroids: RegionCentroids) -> np.ndarray:
        if not kept:
            with stage("image pathways"):
                kept.append(full.image_partials(inputs, voxels, tile, progress))
        return classify(full, kept[0], centroids)

    if centroids is not None:
        classes = full_network(centroids)
        given = TwoStageResult(classes, iterations=1, missing=[int((~centroids.present).sum())])
        if keep_passes:
            given.passes.append(classes)
        return classes, probs, given
    result = iterate_centroids(
        first_stage,
        full_network,
        np.asarray(mask, bool),
        inputs.affine,
        inputs.num_regions,
        max_iterations=inputs.max_iterations if max_iterations is None else max_iterations,
        tolerance=inputs.tolerance if tolerance is None else tolerance,
        keep_passes=keep_passes,
    )
    return result.classes, probs, result
