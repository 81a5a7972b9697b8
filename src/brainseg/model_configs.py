"""The ``model:`` section of a config, one frozen dataclass per model family.

``model.name`` picks the dataclass (:data:`MODEL_CONFIGS`); :mod:`brainseg.config` reads and writes the
YAML and re-exports these names. :func:`brainseg.models.build_model` is the only place a model
configuration is unpacked (through its family, :mod:`brainseg.families`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from brainseg.errors import InputError

__all__ = [
    "MODEL_CONFIGS",
    "MIXNET_PLANES",
    "AnyModelConfig",
    "BrebissonConfig",
    "DeepNATConfig",
    "MixNetConfig",
    "ModelConfig",
]


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture (see :class:`brainseg.models.ganaye2018.BaseNet`).

    Attributes
    ----------
    name : str
        Registered model name (``'basenet'``).
    num_classes : int
        Classes including background; 0 (the default) means "from the label
        table" (``TrainingConfig.labels``), which fills it in when training
        starts. A value that disagrees with the table is refused.
    plane : str
        Plane of the 2-D patches: ``'axial'``, ``'coronal'`` or ``'sagittal'``.
    scales : tuple of int
        Patch scale factors (1 = 25 mm, 2 = 50 mm, 3 = 75 mm wide).
    branch_widths : tuple of 2 int
        Filters of each 2-D branch's two convolutions.
    mix_channels : int
        Output channels of the 1 x 1 convolution over the concatenated branches.
    fc_widths : tuple of int
        Units of the hidden fully connected layers.
    dropout : float
        Dropout probability after each hidden fully connected layer.
    batch_norm : bool
        Batch normalisation in the convolutional branches (a deviation from the paper).
    reference_space : bool
        Register every scan affinely to the reference template and segment
        there (needed by the spatial priors; Ganaye et al. 2018, section 3.1).
    landmarks : int
        DistBranch landmarks per axis ``n`` (``n**3`` in all); 0 = no DistBranch.
    distance_representation : str
        ``'vector'``, ``'images'`` or ``'volume'`` (paper section 3.3).
    distance_conv, distance_rbf : bool
        DistBranch convolutions; RBF normalisation ``exp(-0.01 d**2)``.
    distance_filters, distance_width : int
        Filters per DistBranch kernel size; its output features.
    prob_branch : bool
        ProbBranch: atlas probabilities added to the logits (section 2.3).
    branch_3d_widths : tuple of int
        3dBranch filter counts; empty = no 3dBranch.
    auxiliary : bool
        Build the auxiliary classifiers (section 3.3); their loss weights
        are ``TrainingConfig.auxiliary_weights``.
    """

    name: str = "basenet"
    num_classes: int = 0
    plane: str = "axial"
    scales: tuple[int, ...] = (1, 2, 3)
    branch_widths: tuple[int, ...] = (32, 64)
    mix_channels: int = 64
    fc_widths: tuple[int, ...] = (512, 256)
    dropout: float = 0.5
    batch_norm: bool = False
    reference_space: bool = False
    landmarks: int = 0
    distance_representation: str = "images"
    distance_conv: bool = True
    distance_rbf: bool = False
    distance_filters: int = 8
    distance_width: int = 128
    prob_branch: bool = False
    branch_3d_widths: tuple[int, ...] = ()
    auxiliary: bool = False

    @property
    def needs_reference(self) -> bool:
        """Whether the model works in the reference space (any spatial prior, or asked)."""
        return self.reference_space or self.landmarks > 0 or self.prob_branch


@dataclass(frozen=True)
class DeepNATConfig:
    """DeepNAT's network and inputs (Wachinger et al. 2018; see :class:`brainseg.models.wachinger2018.DeepNAT`).

    Attributes
    ----------
    name : str
        Registered model name (``'deepnat'``).
    num_classes : int
        Classes including background; 0 (the default) means "from the label
        table", as in :class:`ModelConfig`.
    tasks : {1, 7, 27}
        Output heads: the patch centre, its 6 face neighbours too (the
        paper's choice), or its whole 3 x 3 x 3 neighbourhood (section 2.3).
    coordinates : {'none', 'cartesian', 'spectral', 'both'}
        Per-voxel coordinates appended to the first fully connected layer's
        output (section 2.4): none, Cartesian (mm from the brain's centre /
        100 mm), spectral (Laplacian eigenvectors of the brain mask), or both
        (the paper's choice; 6 values).
    spectral_grid_mm : float
        Spacing, in mm, of the grid the spectral coordinates are solved on
        (:func:`brainseg.features.coordinates.spectral_coordinates`).
    widths : tuple of 3 int
        Filters of the three convolutions (paper Table 1: 32, 64, 64).
    fc_widths : tuple of 2 int
        Units of the two hidden fully connected layers (paper: 1024, 512).
    dropout : float
        Dropout after each hidden fully connected layer (paper: 0.5).
    reference_space : bool
        Register every scan affinely to the reference template and segment
        there (not in the paper, which works on FreeSurfer's conformed 1 mm
        grid).
    cascade : bool
        The paper's hierarchy (section 2.2, the default): network 1 separates
        foreground from background, network 2 labels the structures
        (:class:`brainseg.models.wachinger2018.DeepNATCascade`; needs at least
        3 classes). False: the one-step variant, one network over all classes.
    fg_bg_per_image : int
        ``training.sampling: deepnat`` (section 3): the pool of network 1 holds
        at most this many foreground and as many background voxels per image
        (paper: 30,000); the one-step variant caps its background class by it.
    per_structure : int
        ``training.sampling: deepnat``: the pool of network 2 (and the
        structures of the one-step variant's) holds at most this many voxels of
        each structure per image (paper: 3,000).
    double_classes : tuple of int
        Class indices (``class_index`` of the label table, never label
        numbers) whose cap is ``2 * per_structure``: the paper doubles it for
        cerebral white matter and cortex, e.g. ``[1, 2, 15, 16]`` with
        ``configs/deepnat25_labels.tsv``. Background (0) cannot be listed.

    Raises
    ------
    InputError
        On construction, naming the setting, for a value the network cannot take: ``tasks``,
        ``coordinates``, ``spectral_grid_mm``, the widths' lengths, ``cascade`` (not a bool, or with 1 or 2
        classes), the caps, or ``double_classes`` that are not structure class indices.
    """

    name: str = "deepnat"
    num_classes: int = 0
    tasks: int = 7
    coordinates: str = "both"
    spectral_grid_mm: float = 2.0
    widths: tuple[int, ...] = (32, 64, 64)
    fc_widths: tuple[int, ...] = (1024, 512)
    dropout: float = 0.5
    reference_space: bool = False
    cascade: bool = True
    fg_bg_per_image: int = 30_000
    per_structure: int = 3_000
    double_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Refuse values the network cannot take, naming the setting."""
        if self.tasks not in (1, 7, 27):
            raise InputError(f"tasks must be 1, 7 or 27, got {self.tasks!r}")
        if self.coordinates not in ("none", "cartesian", "spectral", "both"):
            raise InputError(f"coordinates must be 'none', 'cartesian', 'spectral' or 'both', got {self.coordinates!r}")
        grid = self.spectral_grid_mm
        if isinstance(grid, bool) or not isinstance(grid, (int, float)) or not grid > 0:
            raise InputError(f"spectral_grid_mm must be a positive number of mm, got {self.spectral_grid_mm!r}")
        if len(self.widths) != 3 or len(self.fc_widths) != 2:
            raise InputError(
                f"widths needs 3 values and fc_widths 2, got {list(self.widths)} and {list(self.fc_widths)}"
            )
        if not isinstance(self.cascade, bool):
            raise InputError(f"cascade must be true or false, got {self.cascade!r}")
        if self.cascade and self.num_classes in (1, 2):
            raise InputError(
                f"cascade: the hierarchy needs at least 2 structures besides background, the label table has "
                f"{self.num_classes} classes; set cascade: false"
            )
        for key in ("fg_bg_per_image", "per_structure"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{key} must be a positive number of voxels, got {value!r}")
        bad = [
            c
            for c in self.double_classes
            if isinstance(c, bool) or not isinstance(c, int) or c < 1 or 0 < self.num_classes <= c
        ]
        if bad:
            raise InputError(
                f"double_classes {list(self.double_classes)}: {bad} are not structure class indices "
                f"(1 .. num_classes - 1; class indices of the label table, not label numbers)"
            )

    @property
    def needs_reference(self) -> bool:
        """Whether the model works in the reference space (only when asked: DeepNAT has no atlas prior)."""
        return self.reference_space

    @property
    def batch_norm(self) -> bool:
        """Always True: DeepNAT normalises conv2, conv3 and the second fully connected layer (paper Table 1)."""
        return True


@dataclass(frozen=True)
class BrebissonConfig:
    """de Brébisson and Montana's network and inference (2015; :class:`brainseg.models.brebisson2015.BrebissonNet`).

    Attributes
    ----------
    name : str
        Registered model name (``'brebisson2015'``).
    num_classes : int
        Classes including background; 0 (the default) means "from the label table".
    pathways : tuple of str
        Inputs read (:data:`brainseg.models.brebisson2015.PATHWAYS`); the paper's full network is
        ``orthogonal, compressed, patch_3d, centroids``. With ``centroids`` the model is two
        networks: the full one and a first-stage one without the centroid pathway (section 3.4).
    first_stage : tuple of str
        With ``centroids``: the first-stage network's pathways; empty (the default) means the
        full network's other pathways. Table 1's "centroid distances" row, which has no other
        pathway, needs one here (e.g. ``[coordinates]``).
    widths_2d : tuple of 2 int
        Filters of the 2-D pathways' two convolutions (paper: 20, 50).
    fc_3d : tuple of int
        Units of the 3-D pathway's fully connected layers (paper: 1000, 1000).
    fc : tuple of int
        Units of the merged fully connected layers (paper: 3000, 3000).
    noise_sigma : float
        Standard deviation of the Gaussian noise on the scaled centroid distances in training
        (section 3.4; the authors' code: 0.2).
    max_iterations : int
        Most passes of the full network in the iterative inference (section 3.4).
    tolerance : float
        The iterative inference stops once a pass changes at most this fraction of brain voxels.
    reference_space : bool
        Register every scan to the reference template and segment there (not in the paper).

    Raises
    ------
    InputError
        On construction, naming the setting, for a value the network cannot take: unknown or repeated
        pathways, a ``first_stage`` with ``centroids`` or without the centroid pathway, widths that are not
        positive integers, a negative ``noise_sigma``, ``max_iterations`` < 1 or ``tolerance`` outside [0, 1).
    """

    name: str = "brebisson2015"
    num_classes: int = 0
    pathways: tuple[str, ...] = ("orthogonal", "compressed", "patch_3d", "centroids")
    first_stage: tuple[str, ...] = ()
    widths_2d: tuple[int, ...] = (20, 50)
    fc_3d: tuple[int, ...] = (1000, 1000)
    fc: tuple[int, ...] = (3000, 3000)
    noise_sigma: float = 0.2
    max_iterations: int = 5
    tolerance: float = 1e-3
    reference_space: bool = False

    def __post_init__(self) -> None:
        """Refuse values the network cannot take, naming the setting."""
        from brainseg.models.brebisson2015 import PATHWAYS

        bad = [p for p in self.pathways if p not in PATHWAYS]
        if bad or not self.pathways or len(set(self.pathways)) != len(self.pathways):
            raise InputError(f"pathways must be distinct names among {', '.join(PATHWAYS)}; got {list(self.pathways)}")
        bad = [p for p in self.first_stage if p not in PATHWAYS or p == "centroids"]
        if bad or len(set(self.first_stage)) != len(self.first_stage):
            raise InputError(
                f"first_stage must be distinct names among {', '.join(PATHWAYS[:-1])} (no centroids); "
                f"got {list(self.first_stage)}"
            )
        if self.first_stage and "centroids" not in self.pathways:
            raise InputError("first_stage is only read with the centroids pathway; remove it")
        if len(self.widths_2d) != 2 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths_2d
        ):
            raise InputError(f"widths_2d needs 2 positive integers, got {list(self.widths_2d)}")
        for key in ("fc_3d", "fc"):
            units = getattr(self, key)
            if not units or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
                raise InputError(f"{key} needs at least one positive integer, got {list(units)}")
        if isinstance(self.noise_sigma, bool) or not isinstance(self.noise_sigma, (int, float)) or self.noise_sigma < 0:
            raise InputError(f"noise_sigma must be a number >= 0, got {self.noise_sigma!r}")
        if isinstance(self.max_iterations, bool) or not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise InputError(f"max_iterations must be a positive integer, got {self.max_iterations!r}")
        if (
            isinstance(self.tolerance, bool)
            or not isinstance(self.tolerance, (int, float))
            or not 0 <= self.tolerance < 1
        ):
            raise InputError(f"tolerance must be a fraction of voxels in [0, 1), got {self.tolerance!r}")

    @property
    def needs_reference(self) -> bool:
        """Whether the model works in the reference space (only when asked: the centroids make it unneeded)."""
        return self.reference_space

    @property
    def batch_norm(self) -> bool:
        """Always False: the paper's network has no normalisation layers."""
        return False

    @property
    def dropout(self) -> float:
        """Always 0: the paper's network has no dropout (its regulariser is the noise on the distances)."""
        return 0.0


#: The planes a MixNet can segment in (:data:`brainseg.sampling.orthogonal.ORTHOGONAL_PLANES`).
MIXNET_PLANES = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class MixNetConfig:
    """Chen and Merhof's MixNet on whole slices, one network per view (2018; :mod:`brainseg.families.chen2018`).

    Attributes
    ----------
    name : str
        Registered model name (``'mixnet'``).
    num_classes : int
        Classes including background; 0 (the default) means "from the label table".
    version : {1, 2, 3}
        MixNetv1, v2 or v3 (paper Table 1; :class:`brainseg.models.chen2018.MixNet`).
    filters : int
        Dilated-convolution width ``F``; 0 (the default) means the paper's for the version (72, 24, 24).
    pool : bool
        Pool in the InitUnit and upscale in the OutputUnit (the paper's setting).
    planes : tuple of str
        The views, each segmented by its own network (section 2.3: sagittal, coronal, axial).
    shared_views : bool
        One network trained on the slices of every listed plane (the paper's open question) instead of
        one network per plane.
    view_weights : tuple of float
        Fusion weight of each plane's probabilities, in ``planes`` order; empty (the default) means
        equal weights. The paper's 1:1:4 (sagittal, coronal, axial) is for anisotropic scans.
    crop : int
        Side, in pixels, of the square training crops drawn from the slices.
    modalities : tuple of str
        The co-registered images the network reads, in channel order (section 2.1: ``M`` streams): the
        first is a manifest's ``image`` column (masked and segmented on), each other ``NAME`` its
        ``image_NAME`` column, and ``brainseg segment --modality NAME=PATH`` on the command line.
        Default T1 alone. Only on the scan's own grid (``reference_space: false``).
    reference_space : bool
        Register every scan to the reference template and segment there (not in the paper).

    Raises
    ------
    InputError
        On construction, naming the setting, for a value the networks cannot take: ``num_classes`` 1 or
        negative, an unknown ``version``, a negative ``filters``, a non-bool switch, unknown or repeated
        planes, ``view_weights`` of the wrong length or sign, ``crop`` < 8, bad modality names, or several
        modalities in the reference space.
    """

    name: str = "mixnet"
    num_classes: int = 0
    version: int = 2
    filters: int = 0
    pool: bool = True
    planes: tuple[str, ...] = MIXNET_PLANES
    shared_views: bool = False
    view_weights: tuple[float, ...] = ()
    crop: int = 128
    modalities: tuple[str, ...] = ("t1",)
    reference_space: bool = False

    def __post_init__(self) -> None:
        """Refuse values the networks cannot take, naming the setting."""

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.num_classes) or self.num_classes == 1 or self.num_classes < 0:
            raise InputError(f"num_classes must be 0 (from the label table) or at least 2, got {self.num_classes!r}")
        if not is_int(self.version) or self.version not in (1, 2, 3):
            raise InputError(f"version must be 1, 2 or 3 (MixNetv1, v2, v3), got {self.version!r}")
        if not is_int(self.filters) or self.filters < 0:
            raise InputError(f"filters must be an integer >= 1, or 0 for the paper's width, got {self.filters!r}")
        for key in ("pool", "shared_views", "reference_space"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"{key} must be true or false, got {getattr(self, key)!r}")
        planes = self.planes
        if not planes or any(p not in MIXNET_PLANES for p in planes) or len(set(planes)) != len(planes):
            raise InputError(f"planes must be distinct names among {', '.join(MIXNET_PLANES)}; got {list(planes)}")
        weights = self.view_weights
        if weights and (
            len(weights) != len(planes)
            or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 for w in weights)
            or not sum(weights) > 0
        ):
            raise InputError(
                f"view_weights needs one number >= 0 per plane ({len(planes)}: {', '.join(planes)}), not all 0, "
                f"or none for equal weights; got {list(weights)}"
            )
        if not is_int(self.crop) or self.crop < 8:
            raise InputError(f"crop must be a number of pixels >= 8, got {self.crop!r}")
        names = self.modalities
        if (
            not names
            or any(not isinstance(n, str) or not re.fullmatch(r"[A-Za-z0-9]+", n) for n in names)
            or len(set(names)) != len(names)
        ):
            raise InputError(
                f"modalities must be distinct names of letters and digits (e.g. [flair, t1c]), got {list(names)}"
            )
        if len(names) > 1 and self.reference_space:
            raise InputError("a multi-modal mixnet works on the scan's own grid: set reference_space: false")

    @property
    def needs_reference(self) -> bool:
        """Whether the model works in the reference space (only when asked: MixNet reads no prior)."""
        return self.reference_space

    @property
    def batch_norm(self) -> bool:
        """Always True: every DilateResUnit normalises before its convolutions (section 2.1)."""
        return True

    @property
    def dropout(self) -> float:
        """Always 0: MixNet has no dropout."""
        return 0.0

    @property
    def fusion_weights(self) -> tuple[float, ...]:
        """The view weights normalised to sum 1 (equal when ``view_weights`` is empty)."""
        weights = self.view_weights or (1.0,) * len(self.planes)
        return tuple(float(w) / float(sum(weights)) for w in weights)


#: A model section of any family: the dataclass :data:`MODEL_CONFIGS` picks by ``model.name``.
AnyModelConfig = ModelConfig | DeepNATConfig | BrebissonConfig | MixNetConfig

#: Model names -> the dataclass their ``model:`` section is read into. A name not listed here (a family
#: registered by other code) is read as a :class:`ModelConfig`; :func:`brainseg.families.family_of` refuses
#: names without a family.
MODEL_CONFIGS: dict[str, type] = {
    "basenet": ModelConfig,
    "ganaye2018": ModelConfig,
    "deepnat": DeepNATConfig,
    "brebisson2015": BrebissonConfig,
    "mixnet": MixNetConfig,
}
