"""Chen and Merhof (2018) as a family: MixNet on whole 2-D slices, one network per view, the views fused.

L. Chen, D. Merhof, "MixNet: Multi-modality Mix Network for Brain Segmentation", in: Brainlesion (BrainLes
2018, MICCAI workshop), LNCS 11383, Springer 2019. doi:10.1007/978-3-030-11723-8_37, arXiv:2004.09832.

The network is :class:`brainseg.models.chen2018.MixNet` (section 2.1); this module wires it to
:class:`brainseg.families.Family` (model name ``mixnet``, settings :class:`brainseg.config.MixNetConfig`)
and adds what segmenting whole slices needs: the image cropped to the brain (:class:`MixNetInputs`), one
network per plane or one for all (:class:`MixNetViews`), the slice sampler (:class:`SliceSampler`, from
:mod:`brainseg.sampling.slices`, with :mod:`brainseg.sampling.slice_augmentation`), the
loss, and the multi-view inference (section 2.3: every plane's slices through its network, the
probability maps fused by weights; :mod:`brainseg.inference.dense_mixnet`).

Planes follow :data:`brainseg.sampling.orthogonal.ORTHOGONAL_PLANES` on the RAS+ working grid ``(D, H,
W)``: a sagittal slice is ``image[x]`` and spans ``(y, z)``, a coronal one ``image[:, y]`` spans ``(x,
z)``, an axial one ``image[:, :, z]`` spans ``(x, y)``.

Deviations from the paper
-------------------------
- T1 alone (one channel, ``M = 1``) by default; the paper mixes T1, T1-IR and FLAIR (MRBrainS18). With
  one modality the v2 summaries and the v3 streams have a single stream (``docs/mixnet.md``).
  ``modalities`` names ``M`` co-registered images (manifest columns ``image``, ``image_NAME``), each
  z-scored in the brain mask on its own (section 3.1), on the scan's own grid.
- Slices come from the scan's 1 mm RAS+ grid (or the reference template's), cropped to the brain mask's
  bounding box plus :data:`MARGIN` voxels of background; pixels outside the brain mask are ignored by
  the loss (target -1) and are background at inference: the mask decides background, as in brainseg's
  other families.
- Training draws square crops of ``crop`` pixels placed at random over a slice's brain (keeps a CPU
  batch small); inference reads whole (cropped) slices, padded to even sides when the InitUnit pools.
- Fusion (section 2.3) is the weighted mean of the views' softmax probabilities, the weights
  ``view_weights`` normalised (default equal; the paper's 1:1:4 is for anisotropic scans). ``shared_views``
  answers the paper's open question: one network trained on the slices of every plane.
- Loss: cross-entropy averaged over a batch's labelled pixels. The schedule is brainseg's (SGD with
  momentum, poly decay) unless set otherwise: the paper's (section 3.1) is ``nesterov: true``, ``momentum:
  0.99``, ``learning_rate: 2e-4`` halved at ``lr_milestones: [0.2, 0.4, 0.6, 0.75, 0.8, 0.85, 0.9, 0.95]``,
  ``weight_decay: 1e-3`` (on every parameter; the authors' code spared batch norm's).
- ``training.augment: true`` gives each training crop at most one of the paper's transforms (section
  3.2, never stacked): elastic, scale, rotation by a multiple of 45 degrees, translation, or a left-right
  flip with left and right classes swapped (coronal and axial crops only), each with probability 1/6
  (1/5 in sagittal crops, which cannot be flipped); see :mod:`brainseg.sampling.slice_augmentation`.
  Its scales and angles are the paper's constants: ``augment_scale`` and ``augment_rotation_deg`` are
  BaseNet's and must keep their defaults.
- Only ``training.sampling: uniform`` exists (slices, not voxels, are drawn); the sampling prior's
  frequencies are the brain's, so it corrects nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import MIXNET_PLANES, Config, MixNetConfig, TrainingConfig
from brainseg.errors import InputError
from brainseg.families import Family
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.labels import LabelTable
from brainseg.models.chen2018 import PARAMETER_COUNTS, MixNet
from brainseg.sampling.slice_augmentation import left_right_permutation
from brainseg.sampling.slices import PLANE_AXIS, SliceSampler, slice_along
from brainseg.sampling.slices import box as _box

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


@dataclass(frozen=True)
class MixNetInputs:
    """What a MixNet reads from one image: the normalised modalities cropped to the brain.

    Attributes
    ----------
    image : ndarray of float32, shape (M, D', H', W')
        The ``M`` modalities (1 for T1 alone) on the brain mask's bounding box grown by ``margin``
        voxels per side, each modality's background intensity where that box leaves the volume.
    origin : ndarray of int64, shape (3,)
        Index, in the full volume, of ``image[:, 0, 0, 0]`` (negative where the box starts outside).
    shape : tuple of 3 int
        Shape ``(D, H, W)`` of the full volume.
    background : ndarray of float32, shape (M,)
        The normalised intensity outside the brain (padding), per modality.
    """

    image: np.ndarray
    origin: np.ndarray
    shape: tuple[int, int, int]
    background: np.ndarray

    @property
    def modalities(self) -> int:
        """The number of modalities ``M`` (input channels)."""
        return int(self.image.shape[0])

    @classmethod
    def of(
        cls, image: np.ndarray, mask: np.ndarray, background: float | np.ndarray, margin: int = MARGIN
    ) -> MixNetInputs:
        """Crop ``image`` (D, H, W), or (M, D, H, W) for ``M`` modalities, to ``mask``'s bounding box plus ``margin``.

        ``background`` is one value, or one per modality ``(M,)``.

        Parameters
        ----------
        image : ndarray of float32, shape (D, H, W) or (M, D, H, W)
            The normalised image, or ``M`` co-registered modalities, on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask: its bounding box is kept.
        background : float or ndarray of float32, shape (M,)
            The normalised intensity outside the brain, filled in where the box leaves the volume.
        margin : int
            Voxels added to every side of the box (default :data:`MARGIN`).

        Returns
        -------
        MixNetInputs
            ``image`` float32 ``(M, D', H', W')``, ``M`` = 1 for a 3-D ``image``.

        Raises
        ------
        ValueError
            If the shapes differ or are not 3-D (4-D with modalities), ``background`` is not one value per
            modality, the mask is empty or ``margin`` < 0.
        """
        image, mask = np.asarray(image), np.asarray(mask, bool)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or mask.ndim != 3 or image.shape[1:] != mask.shape:
            raise ValueError(
                f"image (D, H, W) or (M, D, H, W) and mask (D, H, W) must agree, got {image.shape} and {mask.shape}"
            )
        fills = np.asarray(background, np.float32)
        if fills.ndim > 1 or (fills.ndim == 1 and fills.shape != (len(image),)):
            raise ValueError(f"need one background value, or one per modality ({len(image)}), got {fills.shape}")
        fills = np.broadcast_to(fills, (len(image),)).copy()
        if margin < 0:
            raise ValueError(f"margin must be >= 0 voxels, got {margin}")
        if not mask.any():
            raise ValueError("the brain mask is empty: no slice to segment")
        voxels = np.argwhere(mask)
        low, high = voxels.min(axis=0) - margin, voxels.max(axis=0) + 1 + margin
        crop = np.stack([_box(m.astype(np.float32, copy=False), low, high - low, f) for m, f in zip(image, fills)])
        return cls(crop, low.astype(np.int64), tuple(mask.shape), fills)  # type: ignore[arg-type]

    def crop(self, volume: np.ndarray, fill: float | int | bool) -> np.ndarray:
        """A volume of the full grid ``(D, H, W)`` on the crop's grid ``(D', H', W')``, ``fill`` outside.

        Parameters
        ----------
        volume : ndarray, shape (D, H, W)
            Any dtype (e.g. a bool mask or uint8 classes).
        fill : float or int or bool
            The value where the crop's box leaves the volume.

        Returns
        -------
        ndarray of the dtype of ``volume``, shape (D', H', W')
            A new array.

        Raises
        ------
        ValueError
            If ``volume`` is not of the full grid's shape.
        """
        volume = np.asarray(volume)
        if volume.shape != tuple(self.shape):
            raise ValueError(f"volume shape {volume.shape} differs from the inputs' grid {tuple(self.shape)}")
        return _box(volume, self.origin, self.image.shape[1:], fill)

    def slice(self, axis: int, index: int) -> np.ndarray:
        """Slice ``index`` along volume ``axis`` (0, 1 or 2) of every modality: ``(M, a, b)`` float32, a view.

        Parameters
        ----------
        axis : int
            The axis of the ``(D', H', W')`` grid the slice is normal to (:data:`PLANE_AXIS` of a plane).
        index : int
            Slice index on the crop's grid (not the full volume's: subtract ``origin[axis]``).

        Returns
        -------
        ndarray of float32, shape (M, a, b)
            A view of :attr:`image`; ``(a, b)`` the two other axes in array order.
        """
        return self.image[(slice(None),) * (axis + 1) + (int(index),)]


class MixNetViews(nn.Module):
    """One :class:`MixNet` per plane (section 2.3), or one shared by every plane; with their fusion weights.

    Parameters
    ----------
    planes : sequence of str
        The views, distinct names among ``sagittal``, ``coronal``, ``axial``.
    version, num_classes, pool, filters
        Of each :class:`~brainseg.models.chen2018.MixNet`.
    in_channels : int
        Modalities ``M`` each network reads (1: T1 alone).
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
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        planes = tuple(planes)
        if not planes or any(p not in MIXNET_PLANES for p in planes) or len(set(planes)) != len(planes):
            raise ValueError(f"planes must be distinct names among {MIXNET_PLANES}, got {planes}")
        weights = tuple(float(w) for w in weights) or (1.0,) * len(planes)
        if len(weights) != len(planes) or min(weights) < 0 or not sum(weights) > 0:
            raise ValueError(f"need one weight >= 0 per plane {planes}, not all 0; got {weights}")
        self.planes, self.shared, self.pool, self.num_classes = planes, bool(shared), bool(pool), int(num_classes)
        self.in_channels = int(in_channels)
        self.view_weights = tuple(w / sum(weights) for w in weights)

        def make() -> MixNet:
            return MixNet(version, in_channels=self.in_channels, num_classes=num_classes, pool=pool, filters=filters)

        self.nets = nn.ModuleDict({"shared": make()} if self.shared else {p: make() for p in planes})

    def for_plane(self, plane: str | int) -> MixNet:
        """The network segmenting ``plane`` (a name, or an index into :attr:`planes`).

        Parameters
        ----------
        plane : str or int
            ``'sagittal'``, ``'coronal'`` or ``'axial'``, or an integer (Python or NumPy) indexing :attr:`planes`.

        Returns
        -------
        MixNet
            That plane's network, or the shared one.

        Raises
        ------
        ValueError
            If ``plane`` names no view of this model.
        IndexError
            If an index is out of range.
        """
        name = self.planes[int(plane)] if isinstance(plane, Integral) and not isinstance(plane, bool) else plane
        if name not in self.planes:
            raise ValueError(f"no network for plane {name!r}; the views are {self.planes}")
        return self.nets["shared" if self.shared else name]  # type: ignore[return-value]

    def forward(self, slices: torch.Tensor, plane: str | int | torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` float32 of slices ``(B, M, H, W)`` float32 (``M`` = :attr:`in_channels`).

        ``plane`` names the plane of every slice (a name or an index into :attr:`planes`), or is a
        ``(B,)`` int64 tensor of indices, one per slice: each slice then goes through its plane's
        network (a network sees only, and all of, its plane's slices: its batch norm's batch). Under a
        bfloat16 autocast the logits are bfloat16.

        Parameters
        ----------
        slices : Tensor of float32, shape (B, M, H, W)
            Slices or crops (even sides when the InitUnit pools).
        plane : str or int or Tensor of int64, shape (B,)
            The plane of every slice, or of each slice.

        Raises
        ------
        ValueError
            If a plane tensor is not one index per slice, or a plane names no view.
        IndexError
            If a plane index is out of range.
        """
        if not isinstance(plane, torch.Tensor):
            return self.for_plane(plane)(slices)
        if plane.shape != slices.shape[:1]:
            raise ValueError(f"need one plane index per slice: {tuple(plane.shape)} for {tuple(slices.shape)}")
        if self.shared:
            return self.nets["shared"](slices)
        order = torch.argsort(plane, stable=True)  # the slices grouped by plane, their order kept inside a plane
        parts = [self.for_plane(int(k))(slices[plane == k]) for k in torch.unique(plane).tolist()]
        return torch.cat(parts)[torch.argsort(order)]


class MixNetFamily(Family):
    """Chen and Merhof (2018); model name ``mixnet``."""

    name = "chen2018"
    paper = "Chen and Merhof (2018)"
    training_examples = "slice crops"
    paper_parameters = "the paper gives none; per network for T1, T1-IR, FLAIR and 11 classes: " + ", ".join(
        f"v{v} {PARAMETER_COUNTS[(v, 3)]:,}" for v in (1, 2, 3)
    )
    # The paper's figures are for three modalities on MRBrainS18; no T1-only row to compare with.
    paper_results: dict[str, tuple[float | None, float | None, float | None, int | None]] = {}

    def build_network(self, cfg: MixNetConfig) -> nn.Module:
        """A :class:`MixNetViews` of the configuration's planes (one network, with ``shared_views``).

        Parameters
        ----------
        cfg : MixNetConfig
            The model configuration (``cfg.num_classes`` filled in); ``in_channels`` is the number of
            ``cfg.modalities``.

        Returns
        -------
        MixNetViews
            Untrained, with the normalised ``view_weights``.

        Raises
        ------
        ValueError
            If :class:`MixNetViews` refuses the planes or weights (which :class:`MixNetConfig` checks first).
        """
        return MixNetViews(
            cfg.planes,
            version=cfg.version,
            num_classes=cfg.num_classes,
            pool=cfg.pool,
            filters=cfg.filters or None,
            shared=cfg.shared_views,
            weights=cfg.view_weights,
            in_channels=len(cfg.modalities),
        )

    def row_label(self, config: Config) -> str:
        """Version, views and fusion, e.g. ``'MixNetv2, 3 views (sagittal, coronal, axial) fused 1:1:1'``.

        Parameters
        ----------
        config : Config
            The whole configuration (its ``model`` is read).

        Returns
        -------
        str
            The row label; ``', one network for all views'`` appended with ``shared_views``.
        """
        cfg = config.model
        n = len(cfg.planes)
        text = f"MixNetv{cfg.version}, {n} view{'s' if n > 1 else ''} ({', '.join(cfg.planes)})"
        if n > 1:
            text += " fused " + ":".join(f"{w:g}" for w in (cfg.view_weights or (1,) * n))
            if cfg.shared_views:
                text += ", one network for all views"
        return text

    def describe(self, config: Config) -> str:
        """:meth:`row_label`, with the width, pooling, training crops, loss and augmentation.

        Parameters
        ----------
        config : Config
            The whole configuration (``model``; ``training.augment``).

        Returns
        -------
        str
            One line; the modalities and the reference space are named too.
        """
        cfg = config.model
        names = ", ".join(m.upper() if len(m) <= 2 else m for m in cfg.modalities)
        text = self.row_label(config) + f", {names} slices cropped to the brain"
        if cfg.filters:
            text += f", F = {cfg.filters}"
        if not cfg.pool:
            text += ", no pooling"
        text += f", trained on {cfg.crop} x {cfg.crop} crops, cross-entropy, " + (
            "one of elastic, scale, 45-degree rotation, translation or left-right flip per crop"
            if config.training.augment
            else "no augmentation"
        )
        if cfg.needs_reference:
            text += ", in the reference space (affine registration)"
        return text

    def modalities(self, cfg: MixNetConfig) -> tuple[str, ...]:
        """``cfg.modalities`` (section 2.1's ``M`` co-registered inputs; default T1 alone).

        Parameters
        ----------
        cfg : MixNetConfig
            The model configuration.

        Returns
        -------
        tuple of str
            The modality names in channel order, e.g. ``('t1',)``.
        """
        return tuple(cfg.modalities)

    def case_inputs(
        self,
        cfg: MixNetConfig,
        image: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        background: float | np.ndarray,
        atlas: ProbabilisticAtlas | None,
    ) -> MixNetInputs:
        """The image (D, H, W), or the modalities (M, D, H, W), cropped to the brain plus :data:`MARGIN`.

        ``affine`` and ``atlas`` are unused.

        Parameters
        ----------
        cfg : MixNetConfig
            The model configuration (its ``modalities``).
        image : ndarray of float32, shape (D, H, W) or (M, D, H, W)
            The normalised image, or the ``M`` modalities, on the working grid (RAS+).
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.
        affine : ndarray of float64, shape (4, 4)
            Unused.
        background : float or ndarray of float32, shape (M,)
            The normalised intensity outside the brain, one or one per modality.
        atlas : ProbabilisticAtlas or None
            Unused.

        Returns
        -------
        MixNetInputs
            The modalities on the brain's bounding box plus :data:`MARGIN` voxels.

        Raises
        ------
        InputError
            If the brain mask is empty or the modalities are not the configuration's.
        """
        given = 1 if np.ndim(image) == 3 else len(image)
        if given != len(cfg.modalities):
            raise InputError(f"mixnet inputs: the model reads {len(cfg.modalities)} modalities, got {given}")
        try:
            return MixNetInputs.of(image, mask, background)
        except ValueError as err:
            raise InputError(f"mixnet inputs: {err}") from None

    def case_sampler(
        self, cfg: MixNetConfig, inputs: MixNetInputs, classes: np.ndarray, mask: np.ndarray
    ) -> SliceSampler:
        """A :class:`SliceSampler` of the configuration's planes and crop (no label table: it flips no crop).

        Parameters
        ----------
        cfg : MixNetConfig
            The model configuration (``planes``, ``crop``).
        inputs : MixNetInputs
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.

        Returns
        -------
        SliceSampler
            Draws the case's slice crops.
        """
        return SliceSampler(inputs, classes, mask, cfg.planes, cfg.crop)

    def case_sampler_with_labels(
        self, cfg: MixNetConfig, inputs: MixNetInputs, classes: np.ndarray, mask: np.ndarray, labels: LabelTable
    ) -> SliceSampler:
        """A :class:`SliceSampler` that flips crops left-right with the label table's left and right classes swapped.

        Parameters
        ----------
        cfg : MixNetConfig
            The model configuration (``planes``, ``crop``).
        inputs : MixNetInputs
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.
        labels : LabelTable
            The run's label table: its names pair left and right classes
            (:func:`~brainseg.sampling.slice_augmentation.left_right_permutation`).

        Returns
        -------
        SliceSampler
            Draws the case's slice crops (flips only with ``training.augment``).
        """
        return SliceSampler(inputs, classes, mask, cfg.planes, cfg.crop, left_right_permutation(labels))

    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """Cross-entropy over the labelled pixels (targets -1 ignored), each slice through its plane's network.

        In PyTorch's default memory format: channels-last steps are faster here (1.7 s against 2.1 s for 8 crops
        of 128² with 135 classes on 2 threads) but under bfloat16 autocast torch 2.13's CPU kernels give NaN
        weight gradients for the dilated convolutions of dilation 4 and 8 (``benchmarks/bench_mixnet_step.py``
        checks every way's gradients; a run that used them turned NaN in its 4th epoch).

        Parameters
        ----------
        network : MixNetViews
            From :meth:`build_network`, in training mode.
        batch : dict of str to Tensor
            ``'slices'`` float32 ``(B, M, crop, crop)`` and ``'plane'`` int64 ``(B,)``
            (:meth:`SliceSampler.draw`).
        targets : Tensor of int64, shape (B, crop, crop)
            Class indices, -1 outside the brain mask.
        tc : TrainingConfig
            Unused.

        Returns
        -------
        Tensor
            Scalar: the summed cross-entropy over the labelled pixels divided by their number (0 when none).

        Raises
        ------
        ValueError
            If ``batch['plane']`` is not one index per slice.
        """
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

        Parameters
        ----------
        network : MixNetViews
            In eval mode.
        inputs : MixNetInputs
            From :meth:`case_inputs`.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid; voxels outside are background (class 0).
        probabilities : bool
            Also return the fused probabilities.
        probability_dtype : numpy dtype
            Their storage type.
        progress : bool
            Show a progress bar per view.
        logit_bias : ndarray of float, shape (num_classes,), optional
            Added to every view's logits before its softmax (the sampling prior's correction).

        Returns
        -------
        classes : ndarray of uint8, shape (D, H, W)
            Arg-max of the fused probabilities in the mask, 0 outside.
        probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
            The fused probabilities (background 1 outside the mask), when asked.

        Raises
        ------
        ValueError
            If the network is in training mode, the mask does not fit the inputs, or ``logit_bias`` has
            the wrong shape.
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
