"""Wachinger et al. (2018) as a family: DeepNAT's hierarchy, 3-D patches, coordinates, multi-task heads, dense inference.

C. Wachinger, M. Reuter, T. Klein, "DeepNAT: Deep convolutional neural network for segmenting
neuroanatomy", NeuroImage 170:434-445, 2018. doi:10.1016/j.neuroimage.2017.02.035, arXiv:1702.08192.

Its pieces live where the pipeline puts them: the networks, the hierarchy's combination and Eq. 3
in :mod:`brainseg.models.wachinger2018`, the Cartesian and spectral coordinates (section 2.4) in
:mod:`brainseg.features.coordinates`, the voxel sampler in :mod:`brainseg.sampling.samplers` and the
dense predictor in :mod:`brainseg.inference.dense3d`, the training examples (the paper's capped
pools and jitter, section 3) in :mod:`brainseg.sampling.patches3d`. This module wires them to
:class:`brainseg.families.Family` (model name ``deepnat``, settings
:class:`brainseg.config.DeepNATConfig`) and adds the losses (sections 2.2-2.3).

What a case gives the network: its normalised image on the working grid, padded by the halo of the
24^3 patch (11 voxels before, 12 after; the paper's 23^3, see :mod:`brainseg.models.wachinger2018`)
with the background intensity, and ``K`` coordinate channels (0, 3 or 6) of
every voxel. A training example is the patch centred on a drawn voxel, the coordinates of that
voxel, and ``T`` targets: the classes of the voxels at the heads' offsets
(:func:`~brainseg.models.wachinger2018.task_offsets`). Inference runs the convolutions fully
convolutionally over the volume and averages, at each voxel, the heads' predictions that point at it
(Eq. 3).

The two variants (``DeepNATConfig.cascade``):

- **hierarchical** (the paper's DeepNAT, section 2.2; the default): one
  :class:`~brainseg.models.wachinger2018.DeepNATCascade` holds network 1 (background / foreground)
  and network 2 (the ``C - 1`` structures, no background class). Each draws its own examples
  (:class:`~brainseg.sampling.patches3d.DeepNATCascadeSampler`): a draw of ``n`` gives ``n`` examples
  to each network, row ``i`` of ``'patches'`` / ``'coordinates'`` (network 1) and of ``'structure_patches'`` /
  ``'structure_coordinates'`` (network 2), with targets ``(n, T, 2)``: ``[..., 0]`` network 1's,
  ``[..., 1]`` network 2's, so the trainer's concatenation over cases keeps them aligned, and
  ``samples_per_epoch`` and ``batch_size`` count examples per network. The loss is network 1's
  summed per-task cross entropy over its examples plus network 2's over its examples
  (:func:`cascade_loss`), each head's the mean over its examples. A network-2 head whose target
  voxel is background (or outside the volume) is **masked** out of the loss: network 2 has no
  background class. We mask rather than draw only centres whose neighbours are all foreground,
  because that would never train network 2 on the foreground voxels next to background, where it is
  evaluated all the same. At inference both networks run densely over the brain mask and are combined
  head by head into one distribution, ``P(bg) = P1(bg)``, ``P(c) = P1(fg) P2(c | fg)``
  (:func:`~brainseg.models.wachinger2018.cascade_log_probabilities`); the sampling prior's
  ``logit_bias`` is added to these combined log-probabilities and renormalised (``P exp(b) / sum``),
  then Eq. 3 averages the heads, so that Eq. 3, calibration and a later CRF see one distribution.
- **one step** (``cascade: false``, the paper's ablation): one :class:`DeepNAT` classifies every
  brain voxel into all classes, background included; loss: the sum of its heads' cross entropies.


How examples are drawn (``training.sampling``, the ``'deepnat'`` pools, the class frequencies read for
the sampling prior, the jitter) is told in :mod:`brainseg.sampling.patches3d`.

Deviations from the paper
-------------------------
- The hierarchy's two networks are trained jointly (one optimiser, the sum of their losses; they
  share no parameters) and stored as one module; network 2 is evaluated on every brain-mask voxel and
  its probabilities combined with network 1's (above), where the paper classifies network 1's
  foreground with network 2. The 3-D fully connected CRF (section 2.5) is brainseg's ``--crf``
  (:mod:`brainseg.postprocessing.dense_crf`), for every family.
- Sampling and jitter: see :mod:`brainseg.sampling.patches3d`.
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import Config, DeepNATConfig, TrainingConfig
from brainseg.errors import InputError
from brainseg.families import Family
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.coordinates import deepnat_coordinates
from brainseg.inference.dense3d import segment_dense3d
from brainseg.inference.dense3d_int8 import segment_dense3d_int8
from brainseg.inference.int8 import int8_available
from brainseg.models.wachinger2018 import (
    PAPER_PARAMETER_COUNTS,
    PATCH_PADDING,
    PATCH_SIZE,
    DeepNAT,
    DeepNATCascade,
    DeepNATModel,
)
from brainseg.sampling.patches3d import (
    JITTER_VOXELS,
    DeepNATCascadeSampler,
    DeepNATInputs,
    DeepNATSampler,
)

__all__ = [
    "COORDINATE_CHANNELS",
    "WACHINGER2018",
    "DeepNATFamily",
    "cascade_loss",
    "multitask_cross_entropy",
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


def multitask_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the heads of their mean cross entropies, with equal weights (section 2.3); negative targets masked.

    Parameters
    ----------
    logits : Tensor of float, shape (n, T, C)
        Per-task logits (:meth:`DeepNAT.forward`).
    targets : Tensor of int64, shape (n, T)
        Class indices (:func:`~brainseg.sampling.patches3d.task_targets`), or
        :data:`~brainseg.sampling.patches3d.IGNORE` (any negative value) for entries left out
        (:func:`~brainseg.sampling.patches3d.structure_targets`).

    Returns
    -------
    Tensor, scalar
        ``sum_t mean_{i : targets[i, t] >= 0} CE(logits[i, t], targets[i, t])``; a head with no
        valid entry adds 0. Without negative targets this is ``sum_t mean_i CE``.

    Raises
    ------
    ValueError
        If the shapes do not agree.
    """
    if logits.ndim != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"expected logits (n, T, C) and targets (n, T), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    total = logits.new_zeros(())
    for t in range(logits.shape[1]):
        valid = targets[:, t] >= 0
        entropy = F.cross_entropy(logits[:, t], targets[:, t].clamp(min=0), reduction="none")
        total = total + (entropy * valid).sum() / valid.sum().clamp(min=1)
    return total


def cascade_loss(network: DeepNATCascade, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """The hierarchy's joint loss: network 1's summed per-task cross entropy plus network 2's (section 2.2).

    Parameters
    ----------
    network : DeepNATCascade
    batch : dict of str to Tensor
        Network 1's examples ``'patches'`` ``(n, 1, 24, 24, 24)`` (and ``'coordinates'`` ``(n, K)``),
        network 2's ``'structure_patches'`` (and ``'structure_coordinates'``), as
        :meth:`~brainseg.sampling.patches3d.DeepNATCascadeSampler.draw` returns them.
    targets : Tensor of int64, shape (n, T, 2)
        ``[..., 0]``: network 1's targets (0 background, 1 foreground) of its example ``i``;
        ``[..., 1]``: network 2's (structure ``c`` as ``c - 1``, or
        :data:`~brainseg.sampling.patches3d.IGNORE` where the head's voxel is background: masked) of
        its example ``i``.

    Returns
    -------
    Tensor, scalar
        ``multitask_cross_entropy(network 1) + multitask_cross_entropy(network 2)``.

    Raises
    ------
    ValueError
        If the targets are not ``(n, T, 2)``.
    """
    if targets.ndim != 3 or targets.shape[2] != 2:
        raise ValueError(f"the cascade's targets are (n, T, 2), got {tuple(targets.shape)}")
    foreground = network.foreground(batch["patches"], batch.get("coordinates"))
    structures = network.structures(batch["structure_patches"], batch.get("structure_coordinates"))
    return multitask_cross_entropy(foreground, targets[..., 0]) + multitask_cross_entropy(structures, targets[..., 1])


def variant_name(cfg: DeepNATConfig) -> str:
    """``'hierarchical'`` (the paper's two networks, section 2.2) or ``'one step'`` (``cascade: false``).

    Parameters
    ----------
    cfg : DeepNATConfig
        The model configuration; its ``cascade`` is read.

    Returns
    -------
    str
        The variant's name.
    """
    return "hierarchical" if cfg.cascade else "one step"


class DeepNATFamily(Family):
    """DeepNAT (Wachinger et al. 2018), hierarchical or one step; model name ``deepnat``."""

    name = "wachinger2018"
    paper = "Wachinger et al. (2018)"
    paper_parameters = (
        f"paper's DeepNAT, 25 outputs, weights only: {PAPER_PARAMETER_COUNTS[1]:,} (1 task), "
        f"{PAPER_PARAMETER_COUNTS[7]:,} (7 tasks) per network; the hierarchy adds a 2-output network"
    )
    # The paper compares its variants (Fig. 4) in box plots, not in a table of means; the one mean Dice it
    # quotes is full DeepNAT's over the 25 structures in its 15 train / 15 test experiment with jitter (median
    # 0.906). No distances are quoted.
    paper_results: dict[str, tuple[float | None, float | None, float | None, int | None]] = {
        "Cartesian + spectral, hierarchical, 7 tasks, jitter": (0.891, None, None, None),
    }

    def build_network(self, cfg: DeepNATConfig) -> nn.Module:
        """A :class:`DeepNATCascade` (``cfg.cascade``) or a :class:`DeepNAT`, with ``cfg.tasks`` heads.

        Parameters
        ----------
        cfg : DeepNATConfig
            The model configuration (``cfg.num_classes`` filled in).

        Returns
        -------
        DeepNAT or DeepNATCascade
            With :data:`COORDINATE_CHANNELS` coordinate inputs for ``cfg.coordinates``.

        Raises
        ------
        InputError
            If the hierarchy is asked for fewer than 3 classes.
        """
        shared = dict(
            tasks=cfg.tasks,
            coordinates=COORDINATE_CHANNELS[cfg.coordinates],
            widths=cfg.widths,
            fc_widths=cfg.fc_widths,
            dropout=cfg.dropout,
        )
        if not cfg.cascade:
            return DeepNAT(num_classes=cfg.num_classes, **shared)  # type: ignore[arg-type]
        if cfg.num_classes < 3:
            raise InputError(
                f"cascade: the hierarchy needs at least 3 classes (background and two structures), got "
                f"{cfg.num_classes}; set cascade: false"
            )
        return DeepNATCascade(num_classes=cfg.num_classes, **shared)  # type: ignore[arg-type]

    def describe(self, config: Config) -> str:
        """Patch, tasks, coordinates, variant and jitter, e.g. ``DeepNAT (24^3 patches, 7 tasks, ..., hierarchical)``.

        Parameters
        ----------
        config : Config
            The whole configuration (``model``; ``training.augment`` for the jitter).

        Returns
        -------
        str
            One line; widths other than the paper's and the reference space are named too.
        """
        cfg = config.model
        coordinates = _COORDINATE_NAMES[cfg.coordinates]
        if cfg.coordinates in ("spectral", "both") and cfg.spectral_grid_mm != 2.0:
            coordinates += f" (spectral on a {cfg.spectral_grid_mm:g} mm grid)"
        tasks = f"{cfg.tasks} task{'s' if cfg.tasks > 1 else ''}"
        text = f"DeepNAT ({PATCH_SIZE}^3 patches, {tasks}, {coordinates}, {variant_name(cfg)})"
        if tuple(cfg.widths) != _PAPER_WIDTHS or tuple(cfg.fc_widths) != _PAPER_FC_WIDTHS:
            text += f", conv widths {list(cfg.widths)}, fully connected widths {list(cfg.fc_widths)}"
        if config.training.augment:
            text += f", jitter of {JITTER_VOXELS} voxel"
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

        Parameters
        ----------
        cfg : DeepNATConfig
            The model configuration (``coordinates``, ``spectral_grid_mm``).
        image : ndarray of float32, shape (D, H, W)
            The normalised image on the working grid (RAS+).
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid: the coordinates' domain (zero outside).
        affine : ndarray of float64, shape (4, 4)
            Voxel -> mm of the working grid.
        background : float
            The normalised intensity outside the brain (padding value).
        atlas : ProbabilisticAtlas or None
            Unused.

        Returns
        -------
        DeepNATInputs
            The image padded by :data:`~brainseg.models.wachinger2018.PATCH_PADDING` (11 voxels before,
            12 after), float32 ``(D + 23, H + 23, W + 23)``; the coordinates, float32 ``(K, D, H, W)``
            with ``K`` = :data:`COORDINATE_CHANNELS` of ``cfg.coordinates``; the background.

        Raises
        ------
        InputError
            If the coordinates cannot be computed (an empty mask, or one too small for three
            spectral coordinates on the ``spectral_grid_mm`` grid).
        """
        padded = np.pad(np.asarray(image, np.float32), PATCH_PADDING, constant_values=background)
        try:
            coordinates = deepnat_coordinates(mask, affine, cfg.coordinates, grid_mm=cfg.spectral_grid_mm)
        except ValueError as err:
            raise InputError(f"DeepNAT's {cfg.coordinates} coordinates: {err}") from None
        return DeepNATInputs(padded, coordinates.astype(np.float32, copy=False), float(background))

    def case_sampler(
        self, cfg: DeepNATConfig, inputs: DeepNATInputs, classes: np.ndarray, mask: np.ndarray
    ) -> DeepNATSampler | DeepNATCascadeSampler:
        """A :class:`DeepNATCascadeSampler` (``cfg.cascade``) or a :class:`DeepNATSampler`, with the config's caps.

        Parameters
        ----------
        cfg : DeepNATConfig
            The model configuration (``cascade``, ``tasks``, and the ``'deepnat'`` pools' caps
            ``fg_bg_per_image``, ``per_structure``, ``double_classes``).
        inputs : DeepNATInputs
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.

        Returns
        -------
        DeepNATSampler or DeepNATCascadeSampler
            Draws the case's examples (section 3).

        Raises
        ------
        ValueError
            If the image, ``classes`` and ``mask`` do not share a grid.
        InputError
            For the hierarchy, if the case has no structure voxel.
        """
        caps = dict(
            fg_bg_per_image=cfg.fg_bg_per_image, per_structure=cfg.per_structure, double_classes=cfg.double_classes
        )
        sampler = DeepNATCascadeSampler if cfg.cascade else DeepNATSampler
        return sampler(inputs, classes, mask, cfg.tasks, **caps)  # type: ignore[arg-type]

    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """Summed per-task cross entropies (section 2.3): of both networks for the hierarchy (:func:`cascade_loss`).

        Parameters
        ----------
        network : DeepNAT or DeepNATCascade
            From :meth:`build_network`, in training mode.
        batch : dict of str to Tensor
            The sampler's inputs: ``'patches'`` float32 ``(B, 1, 24, 24, 24)`` (and ``'coordinates'``
            ``(B, K)``); for the hierarchy also ``'structure_patches'`` (and ``'structure_coordinates'``).
        targets : Tensor of int64, shape (B, T), or (B, T, 2) for the hierarchy
            Class indices per head (:func:`multitask_cross_entropy`, :func:`cascade_loss`).
        tc : TrainingConfig
            Unused.

        Returns
        -------
        Tensor
            Scalar.

        Raises
        ------
        ValueError
            If the logits and targets do not have the shapes above.
        """
        if isinstance(network, DeepNATCascade):
            return cascade_loss(network, batch, targets)
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

        One step: ``logit_bias`` is added to every head's logits before its softmax. Hierarchy: both
        networks run over every mask voxel, their outputs are combined head by head into
        ``P(bg) = P1(bg)``, ``P(c) = P1(fg) P2(c | fg)``, ``logit_bias`` is added to these
        log-probabilities and renormalised; then Eq. 3 averages the heads in both variants. Without
        ``probabilities``, the labels come from int8 fully connected layers with every doubtful voxel
        checked in float32 (:func:`~brainseg.inference.dense3d_int8.segment_dense3d_int8`), where this
        torch has an int8 product on the CPU and the network runs there.

        Parameters
        ----------
        network : DeepNAT or DeepNATCascade
            In eval mode.
        inputs : DeepNATInputs
            From :meth:`case_inputs`.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid; voxels outside are background (class 0).
        probabilities : bool
            Also return the class probabilities (then the float32 path is taken).
        probability_dtype : numpy dtype
            Their storage type.
        progress : bool
            Show a progress bar.
        logit_bias : ndarray of float, shape (num_classes,), optional
            The sampling prior's correction, applied as above.

        Returns
        -------
        classes : ndarray of uint8, shape (D, H, W)
            Class indices, 0 outside the mask.
        probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
            The Eq. 3 probabilities, when asked.

        Raises
        ------
        ValueError
            If the network is in training mode, the shapes disagree, or the network has more than 256
            classes (the class map is uint8).
        """
        network_: DeepNATModel = network  # type: ignore[assignment]
        coordinates = inputs.coordinates if len(inputs.coordinates) else None
        on_cpu = next(network_.parameters()).device.type == "cpu"
        if not probabilities and on_cpu and int8_available():
            classes = segment_dense3d_int8(
                network_,
                inputs.image,
                mask,
                coordinates,
                background=inputs.background,
                progress=progress,
                logit_bias=logit_bias,
            )
            return classes, None
        return segment_dense3d(
            network_,
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
        """The variant's name among the paper's Fig. 4 variants: coordinates, hierarchy, tasks (and jitter).

        E.g. ``'Cartesian + spectral, hierarchical, 7 tasks'``; ``', jitter'`` is appended for
        ``training.augment``, and a network narrower or wider than the paper's gets its widths
        appended (not the paper's network).

        Parameters
        ----------
        config : Config
            The whole configuration (``model``; ``training.augment``).

        Returns
        -------
        str
            The row label.
        """
        cfg = config.model
        coordinates = {"none": "no coordinates", "cartesian": "Cartesian", "spectral": "spectral"}.get(
            cfg.coordinates, "Cartesian + spectral"
        )
        label = f"{coordinates}, {variant_name(cfg)}, {cfg.tasks} task{'s' if cfg.tasks > 1 else ''}"
        if config.training.augment:
            label += ", jitter"
        if tuple(cfg.widths) != _PAPER_WIDTHS or tuple(cfg.fc_widths) != _PAPER_FC_WIDTHS:
            label += f" [widths {list(cfg.widths)}, {list(cfg.fc_widths)}]"
        return label


#: The family object registered for the model name ``deepnat``.
WACHINGER2018 = DeepNATFamily()
