"""Chen and Merhof (2018) as a family: MixNet on whole 2-D slices, one network per view, the views fused.

L. Chen, D. Merhof, "MixNet: Multi-modality Mix Network for Brain Segmentation", in: Brainlesion (BrainLes
2018, MICCAI workshop), LNCS 11383, Springer 2019. doi:10.1007/978-3-030-11723-8_37, arXiv:2004.09832.

The network is :class:`brainseg.models.chen2018.MixNet` (section 2.1); this module wires it to
:class:`brainseg.families.Family` (model name ``mixnet``, settings :class:`brainseg.config.MixNetConfig`)
and adds what segmenting whole slices needs: the image cropped to the brain (:class:`MixNetInputs`), one
network per plane or one for all (:class:`MixNetViews`), the slice sampler (:class:`SliceSampler`), the
loss, and the multi-view inference (section 2.3: every plane's slices through its network, the
probability maps fused by weights; :mod:`brainseg.inference.dense_mixnet`).

Planes follow :data:`brainseg.sampling.orthogonal.ORTHOGONAL_PLANES` on the RAS+ working grid ``(D, H,
W)``: a sagittal slice is ``image[x]`` and spans ``(y, z)``, a coronal one ``image[:, y]`` spans ``(x,
z)``, an axial one ``image[:, :, z]`` spans ``(x, y)``.

Deviations from the paper
-------------------------
- T1 alone (one channel, ``M = 1``); the paper mixes T1, T1-IR and FLAIR (MRBrainS18). With one
  modality the v2 summaries and the v3 streams have a single stream (``docs/mixnet.md``).
- Slices come from the scan's 1 mm RAS+ grid (or the reference template's), cropped to the brain mask's
  bounding box plus :data:`MARGIN` voxels of background; pixels outside the brain mask are ignored by
  the loss (target -1) and are background at inference: the mask decides background, as in brainseg's
  other families.
- Training draws square crops of ``crop`` pixels placed at random over a slice's brain (keeps a CPU
  batch small); inference reads whole (cropped) slices, padded to even sides when the InitUnit pools.
- Fusion (section 2.3) is the weighted mean of the views' softmax probabilities, the weights
  ``view_weights`` normalised (default equal; the paper's 1:1:4 is for anisotropic scans). ``shared_views``
  answers the paper's open question: one network trained on the slices of every plane.
- Loss: cross-entropy averaged over a batch's labelled pixels; brainseg's schedule (SGD with momentum,
  poly decay), not the authors' code's (Nesterov momentum 0.99, learning rate 1e-4 decaying by 0.85
  per 10,000 steps, batch 4).
- No augmentation yet: ``training.augment: true`` is refused (the paper's is to come). Only
  ``training.sampling: uniform`` exists (slices, not voxels, are drawn); the sampling prior's
  frequencies are the brain's, so it corrects nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import MIXNET_PLANES, Config, MixNetConfig, TrainingConfig
from brainseg.errors import InputError
from brainseg.families import Family
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.models.chen2018 import PARAMETER_COUNTS, MixNet
from brainseg.sampling.orthogonal import ORTHOGONAL_PLANES

__all__ = [
    "CHEN2018",
    "MARGIN",
    "PLANE_AXIS",
    "MixNetFamily",
    "MixNetInputs",
    "MixNetViews",
    "SliceSampler",
    "slice_along",
]

#: Background voxels kept around the brain's bounding box (context for the slices' borders).
MARGIN = 8
#: The array axis each plane's slices are taken along (the axis not in :data:`ORTHOGONAL_PLANES`).
PLANE_AXIS: dict[str, int] = {plane: 3 - sum(axes) for plane, axes in ORTHOGONAL_PLANES.items()}


def _box(volume: np.ndarray, low: Sequence[int], size: Sequence[int], fill: float | int | bool) -> np.ndarray:
    """``volume[low : low + size]`` (any number of axes), ``fill`` where the box leaves the volume."""
    low, size = np.asarray(low, np.int64), tuple(int(s) for s in size)
    out = np.full(size, fill, dtype=volume.dtype)
    lo, hi = np.maximum(low, 0), np.minimum(low + size, volume.shape)
    if (hi > lo).all():
        out[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, low))] = volume[
            tuple(slice(a, b) for a, b in zip(lo, hi))
        ]
    return out


def slice_along(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a 3-D array (a view; the two other axes in array order)."""
    return volume[(slice(None),) * axis + (int(index),)]


@dataclass(frozen=True)
class MixNetInputs:
    """What a MixNet reads from one image: the normalised T1 cropped to the brain (one channel).

    Attributes
    ----------
    image : ndarray of float32, shape (D', H', W')
        The image on the brain mask's bounding box grown by ``margin`` voxels per side, the
        background intensity where that box leaves the volume.
    origin : ndarray of int64, shape (3,)
        Index, in the full volume, of ``image[0, 0, 0]`` (negative where the box starts outside).
    shape : tuple of 3 int
        Shape ``(D, H, W)`` of the full volume.
    background : float
        The normalised intensity outside the brain (padding).
    """

    image: np.ndarray
    origin: np.ndarray
    shape: tuple[int, int, int]
    background: float

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray, background: float, margin: int = MARGIN) -> MixNetInputs:
        """Crop ``image`` (D, H, W) to ``mask``'s bounding box plus ``margin`` voxels.

        Raises
        ------
        ValueError
            If the shapes differ or are not 3-D, the mask is empty or ``margin`` < 0.
        """
        image, mask = np.asarray(image), np.asarray(mask, bool)
        if image.ndim != 3 or image.shape != mask.shape:
            raise ValueError(f"image and mask must be 3-D of one shape, got {image.shape} and {mask.shape}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0 voxels, got {margin}")
        if not mask.any():
            raise ValueError("the brain mask is empty: no slice to segment")
        voxels = np.argwhere(mask)
        low, high = voxels.min(axis=0) - margin, voxels.max(axis=0) + 1 + margin
        crop = _box(image.astype(np.float32, copy=False), low, high - low, np.float32(background))
        return cls(crop, low.astype(np.int64), tuple(image.shape), float(background))  # type: ignore[arg-type]

    def crop(self, volume: np.ndarray, fill: float | int | bool) -> np.ndarray:
        """A volume of the full grid ``(D, H, W)`` on the crop's grid ``(D', H', W')``, ``fill`` outside.

        Raises
        ------
        ValueError
            If ``volume`` is not of the full grid's shape.
        """
        volume = np.asarray(volume)
        if volume.shape != tuple(self.shape):
            raise ValueError(f"volume shape {volume.shape} differs from the inputs' grid {tuple(self.shape)}")
        return _box(volume, self.origin, self.image.shape, fill)


class MixNetViews(nn.Module):
    """One :class:`MixNet` per plane (section 2.3), or one shared by every plane; with their fusion weights.

    Parameters
    ----------
    planes : sequence of str
        The views, distinct names among ``sagittal``, ``coronal``, ``axial``.
    version, num_classes, pool, filters
        Of each :class:`~brainseg.models.chen2018.MixNet` (one input channel: T1).
    shared : bool
        One network for every plane (stored under ``nets.shared``) instead of ``nets.<plane>``.
    weights : sequence of float
        Fusion weight per plane (>= 0, not all 0); empty means equal. Kept normalised in
        :attr:`view_weights` (not in the state dict: a setting, not a trained value).

    Raises
    ------
    ValueError
        On unknown or repeated planes, or weights of the wrong length or sign.
    """

    def __init__(
        self,
        planes: Sequence[str],
        version: int = 2,
        num_classes: int = 11,
        pool: bool = True,
        filters: int | None = None,
        shared: bool = False,
        weights: Sequence[float] = (),
    ) -> None:
        super().__init__()
        planes = tuple(planes)
        if not planes or any(p not in MIXNET_PLANES for p in planes) or len(set(planes)) != len(planes):
            raise ValueError(f"planes must be distinct names among {MIXNET_PLANES}, got {planes}")
        weights = tuple(float(w) for w in weights) or (1.0,) * len(planes)
        if len(weights) != len(planes) or min(weights) < 0 or not sum(weights) > 0:
            raise ValueError(f"need one weight >= 0 per plane {planes}, not all 0; got {weights}")
        self.planes, self.shared, self.pool, self.num_classes = planes, bool(shared), bool(pool), int(num_classes)
        self.view_weights = tuple(w / sum(weights) for w in weights)

        def make() -> MixNet:
            return MixNet(version, in_channels=1, num_classes=num_classes, pool=pool, filters=filters)

        self.nets = nn.ModuleDict({"shared": make()} if self.shared else {p: make() for p in planes})

    def for_plane(self, plane: str | int) -> MixNet:
        """The network segmenting ``plane`` (a name, or an index into :attr:`planes`)."""
        name = self.planes[plane] if isinstance(plane, int) else plane
        if name not in self.planes:
            raise ValueError(f"no network for plane {name!r}; the views are {self.planes}")
        return self.nets["shared" if self.shared else name]  # type: ignore[return-value]

    def forward(self, slices: torch.Tensor, plane: str | int | torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` float32 of slices ``(B, 1, H, W)`` float32.

        ``plane`` names the plane of every slice (a name or an index into :attr:`planes`), or is a
        ``(B,)`` int64 tensor of indices, one per slice: each slice then goes through its plane's
        network (a network sees only, and all of, its plane's slices: its batch norm's batch).
        """
        if not isinstance(plane, torch.Tensor):
            return self.for_plane(plane)(slices)
        if plane.shape != slices.shape[:1]:
            raise ValueError(f"need one plane index per slice: {tuple(plane.shape)} for {tuple(slices.shape)}")
        if self.shared:
            return self.nets["shared"](slices)
        out = slices.new_empty((slices.shape[0], self.num_classes) + tuple(slices.shape[-2:]))
        for k in torch.unique(plane).tolist():
            rows = plane == k
            out[rows] = self.for_plane(int(k))(slices[rows])
        return out


class SliceSampler:
    """Training crops of one case's slices: a plane uniformly, a slice holding brain, a window over its brain.

    Parameters
    ----------
    inputs : MixNetInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    planes : sequence of str
        The views; a draw's ``plane`` indexes them.
    crop : int
        Side of the square crops, in pixels.
    """

    def __init__(self, inputs: MixNetInputs, classes: np.ndarray, mask: np.ndarray, planes: Sequence[str], crop: int):
        self.inputs, self.planes, self.crop = inputs, tuple(planes), int(crop)
        inside = inputs.crop(np.asarray(mask, bool), False)
        #: Targets on the crop's grid: the class inside the brain mask, -1 (ignored) elsewhere.
        self.targets = np.where(inside, inputs.crop(np.asarray(classes, np.int16), 0), np.int16(-1))
        self.counts = np.bincount(self.targets[inside].astype(np.int64))
        self.voxels = np.argwhere(inside).astype(np.int32)
        # plane -> (voxel order by slice, slice indices, first voxel of each, voxels in each)
        self._slices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for plane in self.planes:
            order = np.argsort(self.voxels[:, PLANE_AXIS[plane]], kind="stable").astype(np.int32)
            ids, first, count = np.unique(self.voxels[order, PLANE_AXIS[plane]], return_index=True, return_counts=True)
            self._slices[plane] = (order, ids, first, count)

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """The brain's class frequencies ``(num_classes,)`` (``mode`` must be ``'uniform'``).

        Slices are not voxels: the exact expectation of the crops' labelled pixels is not computed, so
        the sampling prior's correction is nil.

        Raises
        ------
        InputError
            If ``mode`` is not ``'uniform'``.
        """
        _check_sampling(mode)
        out = np.zeros(num_classes)
        out[: len(self.counts)] = self.counts / self.counts.sum()
        return out

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` crops: ``{'slices': (n, 1, crop, crop) float32, 'plane': (n,) int64}`` and targets ``(n, crop, crop)`` int16.

        The plane is drawn uniformly, then a slice among those holding brain voxels, then a brain voxel
        of that slice, and the window is placed so that it holds that voxel at a uniform offset. Pixels
        outside the inputs' crop (the brain's box plus :data:`MARGIN`) are the background intensity, as
        at inference; targets are -1 outside the brain mask.

        Raises
        ------
        InputError
            If ``tc.augment`` is on or ``tc.sampling`` is not ``'uniform'``.
        """
        if tc.augment:
            raise InputError("mixnet has no augmentation yet (the paper's is to come); set training.augment: false")
        _check_sampling(tc.sampling)
        c = self.crop
        which = rng.integers(len(self.planes), size=n)
        slices = np.empty((n, 1, c, c), np.float32)
        targets = np.empty((n, c, c), np.int16)
        for i, k in enumerate(which):
            plane = self.planes[k]
            order, ids, first, count = self._slices[plane]
            j = rng.integers(len(ids))
            voxel = self.voxels[order[first[j] + rng.integers(count[j])]]
            low = voxel[list(ORTHOGONAL_PLANES[plane])] - rng.integers(c, size=2)
            axis, index = PLANE_AXIS[plane], voxel[PLANE_AXIS[plane]]
            slices[i, 0] = _box(
                slice_along(self.inputs.image, axis, index), low, (c, c), np.float32(self.inputs.background)
            )
            targets[i] = _box(slice_along(self.targets, axis, index), low, (c, c), -1)
        return {"slices": slices, "plane": which.astype(np.int64)}, targets


def _check_sampling(mode: str) -> None:
    if mode != "uniform":
        raise InputError(f"mixnet draws slices uniformly: training.sampling must be 'uniform', got {mode!r}")


class MixNetFamily(Family):
    """Chen and Merhof (2018); model name ``mixnet``."""

    name = "chen2018"
    paper = "Chen and Merhof (2018)"
    paper_parameters = "the paper gives none; per network for T1, T1-IR, FLAIR and 11 classes: " + ", ".join(
        f"v{v} {PARAMETER_COUNTS[(v, 3)]:,}" for v in (1, 2, 3)
    )
    # The paper's figures are for three modalities on MRBrainS18; no T1-only row to compare with.
    paper_results: dict[str, tuple[float | None, float | None, float | None, int | None]] = {}

    def build_network(self, cfg: MixNetConfig) -> nn.Module:
        """A :class:`MixNetViews` of the configuration's planes (one network, with ``shared_views``)."""
        return MixNetViews(
            cfg.planes,
            version=cfg.version,
            num_classes=cfg.num_classes,
            pool=cfg.pool,
            filters=cfg.filters or None,
            shared=cfg.shared_views,
            weights=cfg.view_weights,
        )

    def row_label(self, config: Config) -> str:
        """Version, views and fusion, e.g. ``'MixNetv2, 3 views (sagittal, coronal, axial) fused 1:1:1'``."""
        cfg = config.model
        n = len(cfg.planes)
        text = f"MixNetv{cfg.version}, {n} view{'s' if n > 1 else ''} ({', '.join(cfg.planes)})"
        if n > 1:
            text += " fused " + ":".join(f"{w:g}" for w in (cfg.view_weights or (1,) * n))
            if cfg.shared_views:
                text += ", one network for all views"
        return text

    def describe(self, config: Config) -> str:
        """:meth:`row_label`, with the width, pooling, training crops, loss and augmentation."""
        cfg = config.model
        text = self.row_label(config) + ", T1 slices cropped to the brain"
        if cfg.filters:
            text += f", F = {cfg.filters}"
        if not cfg.pool:
            text += ", no pooling"
        text += f", trained on {cfg.crop} x {cfg.crop} crops, cross-entropy, no augmentation"
        if cfg.needs_reference:
            text += ", in the reference space (affine registration)"
        return text

    def case_inputs(
        self,
        cfg: MixNetConfig,
        image: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        background: float,
        atlas: ProbabilisticAtlas | None,
    ) -> MixNetInputs:
        """The image cropped to the brain plus :data:`MARGIN` (``affine`` and ``atlas`` unused).

        Raises
        ------
        InputError
            If the brain mask is empty.
        """
        try:
            return MixNetInputs.of(image, mask, background)
        except ValueError as err:
            raise InputError(f"mixnet inputs: {err}") from None

    def case_sampler(
        self, cfg: MixNetConfig, inputs: MixNetInputs, classes: np.ndarray, mask: np.ndarray
    ) -> SliceSampler:
        """A :class:`SliceSampler` of the configuration's planes and crop."""
        return SliceSampler(inputs, classes, mask, cfg.planes, cfg.crop)

    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """Cross-entropy over the labelled pixels (targets -1 ignored), each slice through its plane's network."""
        logits = network(batch["slices"], batch["plane"])
        total = F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
        return total / (targets >= 0).sum().clamp(min=1)

    def predict(
        self,
        network: nn.Module,
        inputs: MixNetInputs,
        mask: np.ndarray,
        *,
        probabilities: bool = False,
        probability_dtype: type = np.float16,
        progress: bool = False,
        logit_bias: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every view's slices through its network, fused by the view weights.

        See :func:`brainseg.inference.dense_mixnet.predict_mixnet`.
        """
        from brainseg.inference.dense_mixnet import predict_mixnet

        return predict_mixnet(
            network,  # type: ignore[arg-type]
            inputs,
            mask,
            probabilities=probabilities,
            probability_dtype=probability_dtype,
            progress=progress,
            logit_bias=logit_bias,
        )


#: The family object registered for the model name ``mixnet``.
CHEN2018 = MixNetFamily()
