"""Ganaye et al. (2018) as a family: multi-scale 2-D patches, spatial priors, voxel sampler, dense slices.

P.-A. Ganaye, M. Sdika, H. Benoit-Cattin, "Towards integrating spatial localization in
convolutional neural networks for brain image segmentation", IEEE ISBI 2018, pp. 621-625.

Its pieces live where the pipeline puts them: the network in :mod:`brainseg.models.ganaye2018`,
the patch source in :mod:`brainseg.sampling.patches`, the spatial priors' inputs in
:mod:`brainseg.features.spatial`, the voxel sampler in :mod:`brainseg.sampling.samplers`, the
augmentation in :mod:`brainseg.sampling.augmentation` and the dense predictor in
:mod:`brainseg.inference.dense`. This module only wires them to :class:`brainseg.families.Family`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import Config, ModelConfig, TrainingConfig
from brainseg.families import Family
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.spatial import SpatialInputs, spatial_inputs_for
from brainseg.inference.dense import predict_dense
from brainseg.models.ganaye2018 import PAPER_PARAMETER_COUNT, DistBranch, GanayeNet
from brainseg.sampling.augmentation import augment_largest_patch
from brainseg.sampling.patches import MultiScaleStack, build_stack, extract_patches, plane_to_volume_indices, to_plane
from brainseg.sampling.samplers import VoxelSampler

__all__ = ["GANAYE2018", "PAPER_RESULTS", "GanayeFamily", "GanayeInputs", "GanayeSampler"]

#: Ganaye et al. (2018), Tables 1 and 2 (MICCAI 2012 test set): (mean Dice, mean Hausdorff mm, mean MSD mm,
#: parameters); None where the paper's table has no such column. Table 2's rows are the DistBranch alone.
PAPER_RESULTS: dict[str, tuple[float | None, float | None, float | None, int | None]] = {
    "BaseNet": (0.694, 40.26, 1.74, PAPER_PARAMETER_COUNT),
    "+Dist (conv, no rbf)": (0.720, 10.09, 1.10, 1_508_511),
    "+Prob": (0.700, 32.38, 1.50, 1_304_090),
    "+Dist+Prob": (0.723, 9.95, 1.10, 1_563_186),
    "+Dist+Prob+3d": (0.733, 9.99, 1.07, 2_847_794),
    "Full (+aux. losses, augmentation)": (0.748, 9.66, 1.00, 2_847_794),
    "U-Net": (0.708, 51.92, 2.14, 599_040),
    "+Dist (no conv, no rbf)": (0.703, 15.84, None, None),
    "+Dist (no conv, rbf)": (0.452, 66.02, None, None),
    "+Dist (conv, rbf)": (0.718, 10.42, None, None),
}


@dataclass(frozen=True)
class GanayeInputs:
    """What a Ganaye network reads from one image.

    Attributes
    ----------
    stack : MultiScaleStack
        The 2-D patch source at every scale, in the patch plane's order.
    spatial : SpatialInputs or None
        Inputs of the spatial priors (DistBranch, ProbBranch, 3dBranch); None for a plain BaseNet.
    """

    stack: MultiScaleStack
    spatial: SpatialInputs | None


class GanayeSampler:
    """Training batches of one case: voxels drawn by :class:`VoxelSampler`, their patches and priors.

    Parameters
    ----------
    inputs : GanayeInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid (RAS+).
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    """

    def __init__(self, inputs: GanayeInputs, classes: np.ndarray, mask: np.ndarray) -> None:
        self.inputs = inputs
        plane = inputs.stack.plane
        self.plane_classes = to_plane(classes, plane)
        self.voxels = VoxelSampler(self.plane_classes, to_plane(mask, plane))

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """See :meth:`VoxelSampler.class_frequencies`.

        Parameters
        ----------
        num_classes : int
            Length of the result.
        mode : {'uniform', 'balanced', 'mixed'}
            The sampling mode (``training.sampling``).

        Returns
        -------
        ndarray of float64, shape (num_classes,)
            Exact expected frequencies of the drawn voxels' classes; sums to 1.

        Raises
        ------
        ValueError
            If ``mode`` is unknown.
        """
        return self.voxels.class_frequencies(num_classes, mode)

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` voxels drawn by ``tc.sampling``: ``{'patches': (n, S, 25, 25), prior inputs...}`` and classes ``(n,)``.

        With ``tc.augment`` the largest patch is rescaled and rotated at random
        (Ganaye et al. 2018, section 3.3).

        Parameters
        ----------
        n : int
            Number of voxels to draw (with replacement).
        rng : numpy.random.Generator
            Draws the voxels and the augmentation's scale factors and angles.
        tc : TrainingConfig
            Reads ``sampling``, ``augment``, ``augment_scale`` and ``augment_rotation_deg`` (degrees).

        Returns
        -------
        inputs : dict of str to ndarray of float32
            ``'patches'`` ``(n, S, 25, 25)``, ``S = len(scales)``; with the priors switched on,
            ``'distances'`` ``(n, L)`` in mm, ``'atlas'`` ``(n, C)`` and ``'patches_3d'``
            ``(n, 1, 15, 15, 15)`` (:meth:`~brainseg.features.spatial.SpatialInputs.at`).
        classes : ndarray of uint8, shape (n,)
            The drawn voxels' reference classes.

        Raises
        ------
        ValueError
            If ``tc.sampling`` is not a mode of :class:`VoxelSampler`.
        """
        stack, spatial = self.inputs.stack, self.inputs.spatial
        idx = self.voxels.sample(n, rng, tc.sampling)
        patches = extract_patches(stack, idx)
        if tc.augment:
            augment_largest_patch(stack, idx, patches, rng, tc.augment_scale, tc.augment_rotation_deg)
        inputs = {"patches": patches}
        if spatial is not None:
            inputs.update(spatial.at(plane_to_volume_indices(idx, stack.plane)))
        return inputs, self.plane_classes[idx[:, 0], idx[:, 1], idx[:, 2]]


class GanayeFamily(Family):
    """BaseNet and its spatial priors (Ganaye et al. 2018); model names ``basenet`` and ``ganaye2018``."""

    name = "ganaye2018"
    paper = "Ganaye et al. (2018)"
    paper_parameters = f"paper's BaseNet: {PAPER_PARAMETER_COUNT:,}"
    paper_results = PAPER_RESULTS

    def build_network(self, cfg: ModelConfig) -> nn.Module:
        """A :class:`GanayeNet` with the branches ``cfg`` switches on.

        Parameters
        ----------
        cfg : ModelConfig
            The model configuration (``cfg.num_classes`` filled in).

        Returns
        -------
        GanayeNet
            BaseNet (section 2.1) with the DistBranch (``cfg.landmarks`` > 0), ProbBranch, 3dBranch and
            auxiliary classifiers as configured.

        Raises
        ------
        ValueError
            If :class:`GanayeNet` or :class:`DistBranch` refuses a setting (e.g. fewer than 2 classes).
        """
        dist = None
        if cfg.landmarks > 0:
            dist = DistBranch(
                cfg.landmarks,
                cfg.distance_representation,
                conv=cfg.distance_conv,
                rbf=cfg.distance_rbf,
                filters=cfg.distance_filters,
                width=cfg.distance_width,
            )
        return GanayeNet(
            num_classes=cfg.num_classes,
            scales=cfg.scales,
            branch_widths=cfg.branch_widths,
            mix_channels=cfg.mix_channels,
            fc_widths=cfg.fc_widths,
            dropout=cfg.dropout,
            batch_norm=cfg.batch_norm,
            dist_branch=dist,
            prob_branch=cfg.prob_branch,
            branch_3d_widths=cfg.branch_3d_widths or None,
            auxiliary=cfg.auxiliary,
        )

    def describe(self, config: Config) -> str:
        """BaseNet's patches and plane, the priors switched on, auxiliary losses and augmentation.

        Parameters
        ----------
        config : Config
            The whole configuration (``model`` and ``training``).

        Returns
        -------
        str
            E.g. ``'BaseNet (25 x 25 patches at scales [1, 2, 3], axial plane) + ProbBranch (...)'``.
        """
        cfg, tc = config.model, config.training
        parts = [f"BaseNet (25 x 25 patches at scales {list(cfg.scales)}, {cfg.plane} plane)"]
        if cfg.landmarks:
            conv = "inception convolutions" if cfg.distance_conv else "no convolutions"
            rbf = "RBF" if cfg.distance_rbf else "no RBF"
            parts.append(f"DistBranch ({cfg.landmarks}^3 landmarks, {cfg.distance_representation}, {conv}, {rbf})")
        if cfg.prob_branch:
            parts.append("ProbBranch (probabilistic atlas)")
        if cfg.branch_3d_widths:
            parts.append(f"3dBranch (15^3 patch, widths {list(cfg.branch_3d_widths)})")
        text = " + ".join(parts)
        if cfg.needs_reference:
            text += ", in the reference space (affine registration)"
        if cfg.auxiliary and any(tc.auxiliary_weights):
            text += f", auxiliary losses (weights {list(tc.auxiliary_weights)})"
        if tc.augment:
            text += f", augmentation (scale {list(tc.augment_scale)}, rotation +-{tc.augment_rotation_deg:g} deg)"
        return text

    def case_inputs(
        self,
        cfg: ModelConfig,
        image: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        background: float,
        atlas: ProbabilisticAtlas | None,
    ) -> GanayeInputs:
        """The multi-scale patch source in ``cfg.plane`` and the spatial priors' inputs (``mask`` unused).

        Parameters
        ----------
        cfg : ModelConfig
            The model configuration.
        image : ndarray of float32, shape (D, H, W)
            The normalised image on the working grid (RAS+).
        mask : ndarray of bool, shape (D, H, W)
            Brain mask (unused).
        affine : ndarray of float64, shape (4, 4)
            Voxel -> mm of the working grid (the DistBranch's landmarks and distances are in mm).
        background : float
            The normalised intensity outside the brain (padding value).
        atlas : ProbabilisticAtlas or None
            The reference atlas on the working grid: the ProbBranch's input; with the DistBranch its
            support tells dense inference where brains land.

        Returns
        -------
        GanayeInputs
            ``spatial`` is None for a BaseNet on the scan's own grid without a 3dBranch.

        Raises
        ------
        ValueError
            If ``image`` is not 3-D, a scale is < 1, the plane is unknown, or the atlas grid differs
            from the image's.
        """
        return GanayeInputs(
            build_stack(image, cfg.plane, cfg.scales, background),
            spatial_inputs_for(cfg, image, affine, background, atlas),
        )

    def case_sampler(
        self, cfg: ModelConfig, inputs: GanayeInputs, classes: np.ndarray, mask: np.ndarray
    ) -> GanayeSampler:
        """A :class:`GanayeSampler`.

        Parameters
        ----------
        cfg : ModelConfig
            The model configuration (unused: ``inputs`` holds its plane).
        inputs : GanayeInputs
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.

        Returns
        -------
        GanayeSampler
            Draws the case's voxels.

        Raises
        ------
        ValueError
            If ``classes`` and ``mask`` differ in shape.
        """
        return GanayeSampler(inputs, classes, mask)

    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """Cross-entropy of the main output plus the weighted auxiliary losses (paper section 3.3).

        Parameters
        ----------
        network : GanayeNet
            From :meth:`build_network`, in training mode.
        batch : dict of str to Tensor
            :meth:`GanayeSampler.draw`'s inputs, float32, first axis ``B``.
        targets : Tensor of int64, shape (B,)
            Class indices.
        tc : TrainingConfig
            ``tc.auxiliary_weights``: weights of the ``'base'`` and ``'dist'`` auxiliary classifiers'
            cross-entropies (a zero weight leaves that term out).

        Returns
        -------
        Tensor
            Scalar: the mean cross-entropy over the batch plus the weighted auxiliary ones.
        """
        logits, auxiliary = network.forward_with_auxiliary(**batch)  # type: ignore[operator]
        loss = F.cross_entropy(logits, targets)
        weights = dict(zip(("base", "dist"), tc.auxiliary_weights))
        for name, aux_logits in auxiliary.items():
            if weights.get(name, 0.0):
                loss = loss + weights[name] * F.cross_entropy(aux_logits, targets)
        return loss

    def predict(
        self,
        network: nn.Module,
        inputs: GanayeInputs,
        mask: np.ndarray,
        *,
        probabilities: bool = False,
        probability_dtype: type = np.float16,
        progress: bool = False,
        logit_bias: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fully convolutional inference slice by slice (:func:`brainseg.inference.dense.predict_dense`).

        Parameters
        ----------
        network : GanayeNet
            In eval mode.
        inputs : GanayeInputs
            From :meth:`case_inputs`.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid; voxels outside are background (class 0).
        probabilities : bool
            Also return the class probabilities.
        probability_dtype : numpy dtype
            Their storage type.
        progress : bool
            Show a progress bar over slices.
        logit_bias : ndarray of float, shape (num_classes,), optional
            Added to the logits before the softmax (the sampling prior's correction).

        Returns
        -------
        classes : ndarray of uint8, shape (D, H, W)
            Arg-max class index per voxel, 0 outside the mask.
        probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
            Softmax probabilities (background 1 outside the mask), when asked.

        Raises
        ------
        ValueError
            If the network is in training mode, or the mask or spatial inputs do not fit the network
            and the patch source.
        """
        return predict_dense(
            network,  # type: ignore[arg-type]
            inputs.stack,
            mask,
            spatial=inputs.spatial,
            probabilities=probabilities,
            probability_dtype=probability_dtype,
            progress=progress,
            logit_bias=logit_bias,
        )

    def needs_atlas(self, cfg: ModelConfig) -> bool:
        """Whether the ProbBranch (which reads the atlas) is switched on.

        Parameters
        ----------
        cfg : ModelConfig
            The model configuration.

        Returns
        -------
        bool
            ``cfg.prob_branch``.
        """
        return cfg.prob_branch

    def row_label(self, config: Config) -> str:
        """The paper's row name for a configuration (Tables 1 and 2).

        Parameters
        ----------
        config : Config
            The whole configuration (``model`` and ``training``).

        Returns
        -------
        str
            A key of :data:`PAPER_RESULTS` (``'BaseNet'``, ``'+Dist+Prob'``, ...); a DistBranch other
            than the paper's (conv, no rbf) in a combination gets ``' [DistBranch ...]'`` appended.
        """
        m, t = config.model, config.training
        parts = []
        if m.landmarks:
            parts.append("Dist")
        if m.prob_branch:
            parts.append("Prob")
        if m.branch_3d_widths:
            parts.append("3d")
        if not parts:
            return "BaseNet"
        distbranch = f"{'conv' if m.distance_conv else 'no conv'}, {'rbf' if m.distance_rbf else 'no rbf'}"
        if parts == ["Dist"]:
            return f"+Dist ({distbranch})"
        if (
            m.branch_3d_widths
            and m.landmarks
            and m.prob_branch
            and m.auxiliary
            and any(t.auxiliary_weights)
            and t.augment
        ):
            label = "Full (+aux. losses, augmentation)"
        else:
            label = "+" + "+".join(parts)
        if m.landmarks and (m.distance_rbf or not m.distance_conv):
            label += f" [DistBranch {distbranch}]"  # not the paper's DistBranch (conv, no rbf): not its row
        return label


#: The family object registered for the model names ``basenet`` and ``ganaye2018``.
GANAYE2018 = GanayeFamily()
