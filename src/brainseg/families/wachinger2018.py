"""Wachinger et al. (2018) as a family: DeepNAT's 3-D patches, coordinates, multi-task heads, dense 3-D inference.

C. Wachinger, M. Reuter, T. Klein, "DeepNAT: Deep convolutional neural network for segmenting
neuroanatomy", NeuroImage 170:434-445, 2018. doi:10.1016/j.neuroimage.2017.02.035, arXiv:1702.08192.

Its pieces live where the pipeline puts them: the network and Eq. 3 in
:mod:`brainseg.models.wachinger2018`, the Cartesian and spectral coordinates (section 2.4) in
:mod:`brainseg.features.coordinates`, the voxel sampler in :mod:`brainseg.sampling.samplers` and the
dense predictor in :mod:`brainseg.inference.dense3d`. This module wires them to
:class:`brainseg.families.Family` (model name ``deepnat``, settings
:class:`brainseg.config.DeepNATConfig`), and adds the multi-task targets and loss (section 2.3).

What a case gives the network: its normalised image on the working grid, padded by the 11-voxel
halo of the 23^3 patch with the background intensity, and ``K`` coordinate channels
(0, 3 or 6) of every voxel. A training example is the patch centred on a drawn voxel, the
coordinates of that voxel, and ``T`` targets: the classes of the voxels at the heads' offsets
(:func:`~brainseg.models.wachinger2018.task_offsets`). The loss is the sum of the ``T`` heads'
cross entropies with equal weights (section 2.3). Inference runs the convolutions fully
convolutionally over the volume and averages, at each voxel, the heads' predictions that point at it
(Eq. 3).

Deviations from the paper
-------------------------
- One step only: a single network classifies every brain-mask voxel into all classes, background
  included. The paper's hierarchy (section 2.2: a first network separates foreground from
  background, a second one classifies the 25 structures on the foreground) is not wired yet; its
  seam is :meth:`DeepNATFamily.predict` (the second network would classify only the first one's
  foreground voxels) and :func:`variant_name` (which will name it "hierarchical"). The 3-D fully
  connected CRF (section 2.5) and the training jittering (section 3) are not implemented either:
  ``training.augment`` is refused.
- Sampling: voxels are drawn afresh for every batch from the brain mask (and labelled voxels
  outside it), ``'uniform'``, class-``'balanced'`` or ``'mixed'`` as ``training.sampling`` says
  (:class:`~brainseg.sampling.samplers.VoxelSampler`), instead of the paper's fixed per-epoch pool
  of class-balanced voxels with per-class caps.
- Coordinates: the spectral ones are solved on a grid of ``spectral_grid_mm`` (2 mm by default) and
  interpolated to 1 mm, ordered and signed by the world axes and scaled to [-1, 1]; the Cartesian
  ones are mm from the brain mask's centre of mass divided by 100 mm
  (:mod:`brainseg.features.coordinates` gives the rules). Voxels outside the mask have coordinates 0.
- Intensities: brainseg's z-score within the brain mask
  (:class:`~brainseg.preprocessing.intensity.IntensityNormalization`), not FreeSurfer's conformed
  intensities with white matter at 110; patches reaching beyond the volume are padded with the
  normalised background intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import Config, DeepNATConfig, TrainingConfig
from brainseg.errors import InputError
from brainseg.families import Family
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.coordinates import deepnat_coordinates
from brainseg.inference.dense3d import HALO, segment_dense3d
from brainseg.models.wachinger2018 import PAPER_PARAMETER_COUNTS, PATCH_SIZE, DeepNAT, task_offsets
from brainseg.sampling.samplers import VoxelSampler

__all__ = [
    "COORDINATE_CHANNELS",
    "WACHINGER2018",
    "DeepNATFamily",
    "DeepNATInputs",
    "DeepNATSampler",
    "multitask_cross_entropy",
    "task_targets",
    "variant_name",
]

#: Coordinate channels ``K`` the network reads, by ``DeepNATConfig.coordinates``.
COORDINATE_CHANNELS = {"none": 0, "cartesian": 3, "spectral": 3, "both": 6}
_COORDINATE_NAMES = {
    "none": "no coordinates",
    "cartesian": "Cartesian coordinates",
    "spectral": "spectral coordinates",
    "both": "Cartesian + spectral coordinates",
}
_PAPER_WIDTHS, _PAPER_FC_WIDTHS = (32, 64, 64), (1024, 512)


@dataclass(frozen=True)
class DeepNATInputs:
    """What DeepNAT reads from one image.

    Attributes
    ----------
    padded : ndarray of float32, shape (D + 22, H + 22, W + 22)
        The normalised image on the working grid, padded by the patch's 11-voxel halo with
        ``background`` on every side: the patch of voxel ``v`` is ``padded[v : v + 23]`` along
        each axis (as :func:`brainseg.inference.dense3d.extract_patches3d` cuts it).
    coordinates : ndarray of float32, shape (K, D, H, W)
        Per-voxel coordinates (:func:`brainseg.features.coordinates.deepnat_coordinates`), ``K`` =
        0, 3 or 6; zero outside the brain mask.
    background : float
        The normalised intensity outside the brain (the padding value).
    """

    padded: np.ndarray
    coordinates: np.ndarray
    background: float

    @property
    def image(self) -> np.ndarray:
        """The unpadded image, float32 ``(D, H, W)`` (a view of :attr:`padded`)."""
        return self.padded[HALO:-HALO, HALO:-HALO, HALO:-HALO]


def task_targets(classes: np.ndarray, voxels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The class each head must predict: that of the voxel at its offset (section 2.3).

    Parameters
    ----------
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices.
    voxels : ndarray of int, shape (n, 3)
        Patch centres, array-axis order.
    offsets : ndarray of int, shape (T, 3)
        The heads' offsets (:func:`~brainseg.models.wachinger2018.task_offsets`).

    Returns
    -------
    ndarray of the dtype of ``classes``, shape (n, T)
        ``[i, t]`` is ``classes[voxels[i] + offsets[t]]``, or 0 (background) where that voxel
        lies outside the volume.

    Examples
    --------
    >>> classes = np.arange(3, dtype=np.uint8).reshape(1, 1, 3)
    >>> task_targets(classes, np.array([[0, 0, 0], [0, 0, 2]]), np.array([[0, 0, 0], [0, 0, 1]])).tolist()
    [[0, 1], [2, 0]]
    """
    voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
    offsets = np.asarray(offsets, np.int64).reshape(-1, 3)
    out = np.zeros((len(voxels), len(offsets)), classes.dtype)
    for t, offset in enumerate(offsets):
        target = voxels + offset
        inside = ((target >= 0) & (target < classes.shape)).all(axis=1)
        out[inside, t] = classes[tuple(target[inside].T)]
    return out


def multitask_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the heads of their mean cross entropies, with equal weights (section 2.3).

    Parameters
    ----------
    logits : Tensor of float, shape (n, T, C)
        Per-task logits (:meth:`DeepNAT.forward`).
    targets : Tensor of int64, shape (n, T)
        Class indices (:func:`task_targets`).

    Returns
    -------
    Tensor, scalar
        ``sum_t mean_i CE(logits[i, t], targets[i, t])``.

    Raises
    ------
    ValueError
        If the shapes do not agree.
    """
    if logits.ndim != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"expected logits (n, T, C) and targets (n, T), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return torch.stack([F.cross_entropy(logits[:, t], targets[:, t]) for t in range(logits.shape[1])]).sum()


def _check_training(tc: TrainingConfig) -> None:
    # Training settings of Ganaye et al.'s family that mean nothing here: refuse them rather than ignore them.
    if tc.augment:
        raise InputError(
            "training.augment: DeepNAT has no training augmentation yet (the paper's jittering, section 3); "
            "set augment: false"
        )
    if any(tc.auxiliary_weights):
        raise InputError(
            f"training.auxiliary_weights {list(tc.auxiliary_weights)}: DeepNAT has no auxiliary classifiers; "
            "remove the setting"
        )


class DeepNATSampler:
    """Training batches of one case: voxels drawn by :class:`VoxelSampler`, their patches, coordinates and targets.

    Parameters
    ----------
    inputs : DeepNATInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid (RAS+).
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    tasks : {1, 7, 27}
        The network's heads.

    Raises
    ------
    ValueError
        If the shapes disagree.
    """

    def __init__(self, inputs: DeepNATInputs, classes: np.ndarray, mask: np.ndarray, tasks: int) -> None:
        if classes.shape != inputs.image.shape or mask.shape != classes.shape:
            raise ValueError(
                f"image {inputs.image.shape}, classes {classes.shape} and mask {mask.shape} must share a grid"
            )
        self.inputs, self.classes = inputs, classes
        self.offsets = task_offsets(tasks)
        self.voxels = VoxelSampler(classes, mask)
        self._windows = np.lib.stride_tricks.sliding_window_view(inputs.padded, (PATCH_SIZE,) * 3)

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """Class frequencies of the drawn voxels themselves (the centre head's targets).

        The other heads' targets, the drawn voxels' neighbours, differ from them only at
        structure borders. See :meth:`VoxelSampler.class_frequencies`.
        """
        return self.voxels.class_frequencies(num_classes, mode)

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` voxels drawn by ``tc.sampling``: network inputs and targets.

        Returns
        -------
        inputs : dict of str to ndarray
            ``'patches'``: float32 ``(n, 1, 23, 23, 23)`` centred on the voxels;
            ``'coordinates'``: float32 ``(n, K)``, only when ``K > 0``.
        targets : ndarray of uint8, shape (n, T)
            :func:`task_targets` of the voxels.

        Raises
        ------
        InputError
            If ``tc`` asks for augmentation or auxiliary losses, which DeepNAT lacks.
        """
        _check_training(tc)
        idx = self.voxels.sample(n, rng, tc.sampling).astype(np.int64)
        d, h, w = idx.T
        inputs = {"patches": np.ascontiguousarray(self._windows[d, h, w])[:, None]}
        if len(self.inputs.coordinates):
            inputs["coordinates"] = np.ascontiguousarray(self.inputs.coordinates[:, d, h, w].T)
        return inputs, task_targets(self.classes, idx, self.offsets)


def variant_name(cfg: DeepNATConfig) -> str:
    """``'one step'``: the only variant so far (the paper's hierarchy, section 2.2, will be ``'hierarchical'``)."""
    return "one step"


class DeepNATFamily(Family):
    """DeepNAT (Wachinger et al. 2018), one step; model name ``deepnat``."""

    name = "wachinger2018"
    paper = "Wachinger et al. (2018)"
    paper_parameters = (
        f"paper's DeepNAT, 25 outputs, weights only: {PAPER_PARAMETER_COUNTS[1]:,} (1 task), "
        f"{PAPER_PARAMETER_COUNTS[7]:,} (7 tasks)"
    )
    # The paper compares its variants (Fig. 4) in box plots, not in a table of means: none are quoted.
    paper_results: dict[str, tuple[float | None, float | None, float | None, int | None]] = {}

    def build_network(self, cfg: DeepNATConfig) -> nn.Module:
        """A :class:`DeepNAT` with ``cfg.tasks`` heads and the coordinates ``cfg.coordinates`` names."""
        return DeepNAT(
            num_classes=cfg.num_classes,
            tasks=cfg.tasks,
            coordinates=COORDINATE_CHANNELS[cfg.coordinates],
            widths=cfg.widths,
            fc_widths=cfg.fc_widths,
            dropout=cfg.dropout,
        )

    def describe(self, config: Config) -> str:
        """Patch, tasks, coordinates and variant, e.g. ``DeepNAT (23^3 patches, 7 tasks, ..., one step)``."""
        cfg = config.model
        coordinates = _COORDINATE_NAMES[cfg.coordinates]
        if cfg.coordinates in ("spectral", "both") and cfg.spectral_grid_mm != 2.0:
            coordinates += f" (spectral on a {cfg.spectral_grid_mm:g} mm grid)"
        tasks = f"{cfg.tasks} task{'s' if cfg.tasks > 1 else ''}"
        text = f"DeepNAT ({PATCH_SIZE}^3 patches, {tasks}, {coordinates}, {variant_name(cfg)})"
        if tuple(cfg.widths) != _PAPER_WIDTHS or tuple(cfg.fc_widths) != _PAPER_FC_WIDTHS:
            text += f", conv widths {list(cfg.widths)}, fully connected widths {list(cfg.fc_widths)}"
        if cfg.needs_reference:
            text += ", in the reference space (affine registration)"
        return text

    def case_inputs(
        self,
        cfg: DeepNATConfig,
        image: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        background: float,
        atlas: ProbabilisticAtlas | None,
    ) -> DeepNATInputs:
        """The padded image and the coordinates of every voxel (``atlas`` unused).

        Raises
        ------
        InputError
            If the coordinates cannot be computed (an empty mask, or one too small for three
            spectral coordinates on the ``spectral_grid_mm`` grid).
        """
        padded = np.pad(np.asarray(image, np.float32), HALO, constant_values=background)
        try:
            coordinates = deepnat_coordinates(mask, affine, cfg.coordinates, grid_mm=cfg.spectral_grid_mm)
        except ValueError as err:
            raise InputError(f"DeepNAT's {cfg.coordinates} coordinates: {err}") from None
        return DeepNATInputs(padded, coordinates.astype(np.float32, copy=False), float(background))

    def case_sampler(
        self, cfg: DeepNATConfig, inputs: DeepNATInputs, classes: np.ndarray, mask: np.ndarray
    ) -> DeepNATSampler:
        """A :class:`DeepNATSampler` with ``cfg.tasks`` targets per voxel."""
        return DeepNATSampler(inputs, classes, mask, cfg.tasks)

    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """Sum of the heads' cross entropies, equal weights (:func:`multitask_cross_entropy`, section 2.3)."""
        return multitask_cross_entropy(network(**batch), targets)

    def predict(
        self,
        network: nn.Module,
        inputs: DeepNATInputs,
        mask: np.ndarray,
        *,
        probabilities: bool = False,
        probability_dtype: type = np.float16,
        progress: bool = False,
        logit_bias: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense 3-D inference over the mask with Eq. 3 task averaging (:func:`~brainseg.inference.dense3d.segment_dense3d`).

        ``logit_bias`` is added to every head's logits before its softmax. One step: every mask
        voxel is classified into all classes (the hierarchy would first restrict ``mask`` to the
        foreground network's foreground).
        """
        coordinates = inputs.coordinates if len(inputs.coordinates) else None
        return segment_dense3d(
            network,  # type: ignore[arg-type]
            inputs.image,
            mask,
            coordinates,
            probabilities=probabilities,
            probability_dtype=probability_dtype,
            background=inputs.background,
            progress=progress,
            logit_bias=logit_bias,
        )

    def row_label(self, config: Config) -> str:
        """The variant's name among the paper's Fig. 4 variants: coordinates, hierarchy, tasks.

        E.g. ``'Cartesian + spectral, one step, 7 tasks'``; a network narrower or wider than the
        paper's gets its widths appended (not the paper's network).
        """
        cfg = config.model
        coordinates = {"none": "no coordinates", "cartesian": "Cartesian", "spectral": "spectral"}.get(
            cfg.coordinates, "Cartesian + spectral"
        )
        label = f"{coordinates}, {variant_name(cfg)}, {cfg.tasks} task{'s' if cfg.tasks > 1 else ''}"
        if tuple(cfg.widths) != _PAPER_WIDTHS or tuple(cfg.fc_widths) != _PAPER_FC_WIDTHS:
            label += f" [widths {list(cfg.widths)}, {list(cfg.fc_widths)}]"
        return label


#: The family object registered for the model name ``deepnat``.
WACHINGER2018 = DeepNATFamily()
