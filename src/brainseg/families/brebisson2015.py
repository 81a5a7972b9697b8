"""de Brébisson and Montana (2015) as a family: orthogonal, compressed and 3-D patches, centroid distances.

A. de Brébisson, G. Montana, "Deep neural networks for anatomical brain segmentation", CVPR Workshops
2015, pp. 20-28. arXiv:1502.02445.

Its pieces live where the pipeline puts them: the network in :mod:`brainseg.models.brebisson2015`, the
patch source in :mod:`brainseg.sampling.orthogonal`, the centroid distances in
:mod:`brainseg.features.centroids`, the iterative two-stage inference in
:mod:`brainseg.inference.two_stage` and the dense predictor in :mod:`brainseg.inference.dense_brebisson`.
This module wires them to :class:`brainseg.families.Family`.

Deviations from the paper
-------------------------
- Scans are segmented on their own 1 mm grid (RAS+), not in a common space; the ``coordinates``
  pathway reads the voxel's position in mm relative to the brain mask's centre of mass, divided by
  100 mm (the paper's coordinates are the voxel's indices in its registered atlases).
- With the centroid pathway the model holds two networks trained together on the same batches (the
  authors trained the first-stage network separately), see
  :class:`~brainseg.models.brebisson2015.BrebissonTwoStage`.
- Training centroids come from the reference label map of the training image, as in the paper;
  voxels are drawn by brainseg's samplers (``uniform`` is the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import BrebissonConfig, Config, TrainingConfig
from brainseg.errors import InputError
from brainseg.families import Family
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.centroids import RegionCentroids
from brainseg.models.brebisson2015 import PAPER_PARAMETER_COUNT, BrebissonNet, BrebissonTwoStage
from brainseg.sampling.orthogonal import OrthogonalPatches
from brainseg.sampling.samplers import VoxelSampler

__all__ = [
    "BREBISSON2015",
    "COORDINATE_SCALE_MM",
    "PAPER_ERROR_RATES",
    "BrebissonFamily",
    "BrebissonInputs",
    "BrebissonSampler",
    "pathway_inputs",
]

#: Divisor of the ``coordinates`` pathway's mm offsets from the brain's centre.
COORDINATE_SCALE_MM = 100.0
#: Patch sizes of the paper (section 4): 2-D patches of 29 x 29 (h = 14), compressed by 3, 3-D patches of 13^3.
HALF, SCALE, CUBE = 14, 3, 13

#: The paper's Table 1: validation error rate of each input and combination (its 40k validation voxels).
PAPER_ERROR_RATES: dict[str, float] = {
    "2D patch": 0.607,
    "3D patch": 0.303,
    "3 orthogonal patches": 0.175,
    "3 compressed patches": 0.207,
    "coordinates (x, y, z)": 0.410,
    "centroid distances": 0.305,
    "orthogonal + compressed": 0.124,
    "full": 0.105,
}
_PATHWAY_ROWS = {
    ("patch_2d",): "2D patch",
    ("patch_3d",): "3D patch",
    ("orthogonal",): "3 orthogonal patches",
    ("compressed",): "3 compressed patches",
    ("coordinates",): "coordinates (x, y, z)",
    ("centroids",): "centroid distances",
    ("orthogonal", "compressed"): "orthogonal + compressed",
    ("orthogonal", "compressed", "patch_3d", "centroids"): "full",
}
_PAPER_WIDTHS = ((20, 50), (1000, 1000), (3000, 3000))


@dataclass(frozen=True)
class BrebissonInputs:
    """What a de Brébisson network reads from one image.

    Attributes
    ----------
    patches : OrthogonalPatches
        The padded brain crop the 2-D and 3-D patches are taken from.
    affine : ndarray of float64, shape (4, 4)
        Voxel -> mm of the working grid.
    centre_mm : ndarray of float64, shape (3,)
        The brain mask's centre of mass in mm (origin of the ``coordinates`` pathway).
    num_regions : int
        ``K``: the regions whose centroid distances the network reads (classes ``1 .. K``).
    max_iterations : int
        Most passes of the full network in the iterative inference (section 3.4).
    tolerance : float
        Stop once a pass changes at most this fraction of the brain voxels.
    """

    patches: OrthogonalPatches
    affine: np.ndarray
    centre_mm: np.ndarray
    num_regions: int
    max_iterations: int = 5
    tolerance: float = 1e-3

    def coordinates(self, voxels: np.ndarray) -> np.ndarray:
        """``(N, 3)`` float32: mm from the brain's centre / :data:`COORDINATE_SCALE_MM` of voxels ``(N, 3)``.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the working grid.

        Returns
        -------
        ndarray of float32, shape (N, 3)
            The ``coordinates`` pathway's input: ``(affine @ voxel - centre_mm) / 100 mm``.
        """
        mm = np.asarray(voxels, float).reshape(-1, 3) @ self.affine[:3, :3].T + self.affine[:3, 3]
        return ((mm - self.centre_mm) / COORDINATE_SCALE_MM).astype(np.float32)

    def points_mm(self, voxels: np.ndarray) -> np.ndarray:
        """``(N, 3)`` float64: the voxels' positions in mm.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the working grid.

        Returns
        -------
        ndarray of float64, shape (N, 3)
            Their positions in mm (:attr:`affine` applied).
        """
        return np.asarray(voxels, float).reshape(-1, 3) @ self.affine[:3, :3].T + self.affine[:3, 3]


def pathway_inputs(
    inputs: BrebissonInputs, voxels: np.ndarray, pathways: tuple[str, ...], centroids: RegionCentroids | None
) -> dict[str, np.ndarray]:
    """The inputs of ``pathways`` at voxels, patch by patch (what training draws and dense inference must equal).

    Parameters
    ----------
    inputs : BrebissonInputs
    voxels : ndarray of int, shape (N, 3)
        Indices on the working grid, inside the brain's bounding box.
    pathways : tuple of str
        Names from :data:`brainseg.models.brebisson2015.PATHWAYS`.
    centroids : RegionCentroids or None
        Needed when ``pathways`` holds ``centroids``.

    Returns
    -------
    dict of str to ndarray of float32
        ``patch_2d`` ``(N, 1, 29, 29)`` (the axial patch), ``orthogonal`` and ``compressed``
        ``(N, 3, 29, 29)``, ``patch_3d`` ``(N, 1, 13, 13, 13)``, ``coordinates`` ``(N, 3)``,
        ``centroids`` ``(N, K)``.

    Raises
    ------
    ValueError
        If ``centroids`` is needed and missing.
    """
    out: dict[str, np.ndarray] = {}
    if "orthogonal" in pathways or "patch_2d" in pathways:
        planar = inputs.patches.planar(voxels, HALF, 1)
        if "orthogonal" in pathways:
            out["orthogonal"] = planar
        if "patch_2d" in pathways:
            out["patch_2d"] = np.ascontiguousarray(planar[:, 2:3])
    if "compressed" in pathways:
        out["compressed"] = inputs.patches.planar(voxels, HALF, SCALE)
    if "patch_3d" in pathways:
        out["patch_3d"] = inputs.patches.cube(voxels, CUBE)
    if "coordinates" in pathways:
        out["coordinates"] = inputs.coordinates(voxels)
    if "centroids" in pathways:
        if centroids is None:
            raise ValueError("the centroid pathway needs the region centroids")
        out["centroids"] = centroids.distances(inputs.points_mm(voxels))
    return out


class BrebissonSampler:
    """Training batches of one case: voxels drawn by :class:`VoxelSampler`, their patches and distances.

    The centroid distances are measured to the centroids of the reference label map (section 3.4).

    Parameters
    ----------
    inputs : BrebissonInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid.
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    pathways : tuple of str
        The network's inputs.

    Raises
    ------
    InputError
        If the centroid pathway is read and the label map has fewer than two regions.
    """

    def __init__(self, inputs: BrebissonInputs, classes: np.ndarray, mask: np.ndarray, pathways: tuple[str, ...]):
        self.inputs, self.pathways = inputs, tuple(pathways)
        self.classes = classes
        self.voxels = VoxelSampler(classes, mask)
        self.centroids = None
        if "centroids" in self.pathways:
            try:
                self.centroids = RegionCentroids.of(classes, inputs.affine, inputs.num_regions)
            except ValueError as err:
                raise InputError(f"centroid distances: {err}") from None

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
        """``n`` voxels drawn by ``tc.sampling``: their pathway inputs (:func:`pathway_inputs`) and classes ``(n,)``.

        Parameters
        ----------
        n : int
            Number of voxels to draw (with replacement).
        rng : numpy.random.Generator
            Draws the voxels.
        tc : TrainingConfig
            Reads ``sampling`` and ``augment``.

        Returns
        -------
        inputs : dict of str to ndarray of float32
            The inputs of :attr:`pathways` at the drawn voxels, first axis ``n`` (shapes in
            :func:`pathway_inputs`); ``'centroids'`` measured to the reference label map's centroids.
        classes : ndarray of uint8, shape (n,)
            The drawn voxels' reference classes.

        Raises
        ------
        InputError
            If ``tc.augment`` is on: the paper has no augmentation and this family implements none.
        ValueError
            If ``tc.sampling`` is not a mode of :class:`VoxelSampler`.
        """
        if tc.augment:
            raise InputError("brebisson2015 has no augmentation (the paper has none); set training.augment: false")
        idx = self.voxels.sample(n, rng, tc.sampling)
        inputs = pathway_inputs(self.inputs, idx, self.pathways, self.centroids)
        return inputs, self.classes[idx[:, 0], idx[:, 1], idx[:, 2]]


def pathway_label(pathways: tuple[str, ...]) -> str:
    """The paper's Table 1 row of a pathway set, or the names joined by ``' + '``.

    Parameters
    ----------
    pathways : tuple of str
        Names from :data:`brainseg.models.brebisson2015.PATHWAYS`, in any order.

    Returns
    -------
    str
        A key of :data:`PAPER_ERROR_RATES` (e.g. ``'orthogonal + compressed'``), or the names in the
        canonical order joined by ``' + '``.
    """
    key = tuple(
        p for p in ("patch_2d", "orthogonal", "compressed", "patch_3d", "coordinates", "centroids") if p in pathways
    )
    return _PATHWAY_ROWS.get(key, " + ".join(key))


class BrebissonFamily(Family):
    """de Brébisson and Montana (2015); model name ``brebisson2015``."""

    name = "brebisson2015"
    paper = "de Brébisson and Montana (2015)"
    paper_parameters = f"paper's full network: {PAPER_PARAMETER_COUNT:,}"
    # Table 1 reports error rates only; the 20 test subjects' mean Dice (0.725) is of the full network.
    paper_results: dict[str, tuple[float | None, float | None, float | None, int | None]] = {
        "full": (0.725, None, None, PAPER_PARAMETER_COUNT),
    }
    paper_error_rates = PAPER_ERROR_RATES

    def build_network(self, cfg: BrebissonConfig) -> nn.Module:
        """A :class:`BrebissonNet`, or a :class:`BrebissonTwoStage` when ``cfg.pathways`` reads the centroids.

        Parameters
        ----------
        cfg : BrebissonConfig
            The model configuration (``cfg.num_classes`` filled in); the networks read the distances to
            the centroids of the ``num_classes - 1`` structures.

        Returns
        -------
        BrebissonNet or BrebissonTwoStage
            The two-stage model pairs the full network with a first-stage one reading
            ``cfg.first_stage`` (default: the other pathways) (section 3.4).

        Raises
        ------
        InputError
            If the centroid distances are the only pathway and ``cfg.first_stage`` is empty.
        """
        shared = dict(
            num_classes=cfg.num_classes,
            num_centroids=cfg.num_classes - 1,
            widths_2d=cfg.widths_2d,
            fc_3d=cfg.fc_3d,
            fc=cfg.fc,
            noise_sigma=cfg.noise_sigma,
            patch_2d=2 * HALF + 1,
            patch_3d=CUBE,
        )
        full = BrebissonNet(pathways=cfg.pathways, **shared)  # type: ignore[arg-type]
        rest = tuple(cfg.first_stage) or tuple(p for p in cfg.pathways if p != "centroids")
        if "centroids" not in cfg.pathways:
            return full
        if not rest:
            raise InputError(
                "pathways: the centroid distances alone leave the first-stage network no input; name its "
                "pathways in first_stage (e.g. [coordinates])"
            )
        return BrebissonTwoStage(full, BrebissonNet(pathways=rest, **shared))  # type: ignore[arg-type]

    def describe(self, config: Config) -> str:
        """The pathways, widths and (with centroids) the iterative inference's settings.

        Parameters
        ----------
        config : Config
            The whole configuration (its ``model`` is read).

        Returns
        -------
        str
            One line; widths other than the paper's and the reference space are named too.
        """
        cfg = config.model
        text = f"de Brébisson & Montana network ({pathway_label(cfg.pathways)}: {', '.join(cfg.pathways)})"
        if (tuple(cfg.widths_2d), tuple(cfg.fc_3d), tuple(cfg.fc)) != _PAPER_WIDTHS:
            text += f", widths 2-D {list(cfg.widths_2d)}, 3-D FC {list(cfg.fc_3d)}, merged FC {list(cfg.fc)}"
        if "centroids" in cfg.pathways:
            text += (
                f", centroid noise sigma {cfg.noise_sigma:g}, two-stage inference (at most {cfg.max_iterations} "
                f"passes, tolerance {cfg.tolerance:g})"
            )
            if cfg.first_stage:
                text += f", first stage: {', '.join(cfg.first_stage)}"
        if cfg.needs_reference:
            text += ", in the reference space (affine registration)"
        return text

    def row_label(self, config: Config) -> str:
        """The paper's Table 1 row of the pathways (e.g. ``'orthogonal + compressed'``).

        The widths are not in the label: Table 1 compares inputs, and a CPU-sized ablation narrows
        every row alike (its configs and :meth:`describe` state the widths).

        Parameters
        ----------
        config : Config
            The whole configuration (its ``model.pathways`` is read).

        Returns
        -------
        str
            :func:`pathway_label` of the pathways.
        """
        return pathway_label(config.model.pathways)

    def case_inputs(
        self,
        cfg: BrebissonConfig,
        image: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        background: float,
        atlas: ProbabilisticAtlas | None,
    ) -> BrebissonInputs:
        """The padded brain crop, the brain's centre and the number of regions (``atlas`` unused).

        Parameters
        ----------
        cfg : BrebissonConfig
            The model configuration (``num_classes``, ``max_iterations``, ``tolerance``).
        image : ndarray of float32, shape (D, H, W)
            The normalised image on the working grid (RAS+).
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid: the crop's bounding box and the centre of mass.
        affine : ndarray of float64, shape (4, 4)
            Voxel -> mm of the working grid.
        background : float
            The normalised intensity outside the brain (padding value).
        atlas : ProbabilisticAtlas or None
            Unused.

        Returns
        -------
        BrebissonInputs
            With ``num_regions = cfg.num_classes - 1`` and the brain mask's centre of mass in mm.

        Raises
        ------
        InputError
            If the brain mask is empty or differs in shape from the image.
        """
        try:
            patches = OrthogonalPatches.of(image, mask, background, HALF, SCALE, CUBE)
        except ValueError as err:
            raise InputError(f"brebisson2015 inputs: {err}") from None
        affine = np.asarray(affine, float)
        centre = np.argwhere(mask).mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
        return BrebissonInputs(
            patches, affine, centre, int(cfg.num_classes) - 1, int(cfg.max_iterations), float(cfg.tolerance)
        )

    def case_sampler(
        self, cfg: BrebissonConfig, inputs: BrebissonInputs, classes: np.ndarray, mask: np.ndarray
    ) -> BrebissonSampler:
        """A :class:`BrebissonSampler` of the pathways of both networks (``pathways`` and ``first_stage``).

        Parameters
        ----------
        cfg : BrebissonConfig
            The model configuration.
        inputs : BrebissonInputs
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.

        Returns
        -------
        BrebissonSampler
            Draws the case's voxels.

        Raises
        ------
        InputError
            If the centroid pathway is read and the label map has fewer than two regions.
        """
        return BrebissonSampler(inputs, classes, mask, tuple(dict.fromkeys((*cfg.pathways, *cfg.first_stage))))

    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """Cross-entropy; for two networks, the sum of both networks' (each on the same batch).

        Parameters
        ----------
        network : BrebissonNet or BrebissonTwoStage
            From :meth:`build_network`, in training mode.
        batch : dict of str to Tensor
            :meth:`BrebissonSampler.draw`'s inputs, float32, first axis ``B``; each network reads its
            own pathways.
        targets : Tensor of int64, shape (B,)
            Class indices.
        tc : TrainingConfig
            Unused.

        Returns
        -------
        Tensor
            Scalar: the mean cross-entropy over the batch, summed over the networks.

        Raises
        ------
        ValueError
            If a network's pathway input is missing or has the wrong shape.
        """
        if isinstance(network, BrebissonTwoStage):
            return F.cross_entropy(network.full(**batch), targets) + F.cross_entropy(network.first(**batch), targets)
        return F.cross_entropy(network(**batch), targets)

    def predict(
        self,
        network: nn.Module,
        inputs: BrebissonInputs,
        mask: np.ndarray,
        *,
        probabilities: bool = False,
        probability_dtype: type = np.float16,
        progress: bool = False,
        logit_bias: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense inference over the mask; with centroids, the iterative two-stage loop (section 3.4).

        See :func:`brainseg.inference.dense_brebisson.predict_brebisson`.

        Parameters
        ----------
        network : BrebissonNet or BrebissonTwoStage
            In eval mode.
        inputs : BrebissonInputs
            From :meth:`case_inputs`; its ``max_iterations`` and ``tolerance`` bound the loop.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid; voxels outside are background (class 0).
        probabilities : bool
            Also return the class probabilities (of the last pass).
        probability_dtype : numpy dtype
            Their storage type.
        progress : bool
            Show progress bars.
        logit_bias : ndarray of float, shape (num_classes,), optional
            Added to the logits of every network and pass before the softmax (the sampling prior's correction).

        Returns
        -------
        classes : ndarray of uint8, shape (D, H, W)
            Class indices, 0 outside the mask.
        probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
            Softmax probabilities (background 1 outside the mask), when asked.

        Raises
        ------
        ValueError
            If a network is in training mode, a single network reads the centroid distances, or the
            shapes disagree.
        """
        from brainseg.inference.dense_brebisson import predict_brebisson

        classes, probs, _ = predict_brebisson(
            network,  # type: ignore[arg-type]
            inputs,
            mask,
            probabilities=probabilities,
            probability_dtype=probability_dtype,
            progress=progress,
            logit_bias=logit_bias,
        )
        return classes, probs


#: The family object registered for the model name ``brebisson2015``.
BREBISSON2015 = BrebissonFamily()
