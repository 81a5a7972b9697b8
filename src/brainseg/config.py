"""Typed configuration: frozen dataclasses read from and written to YAML.

This is the only place configuration files are parsed; :func:`brainseg.models.build_model`
is the only place a model configuration is unpacked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text
from brainseg.labels import SHIPPED_TABLES
from brainseg.postprocessing.dense_crf import CRFParameters

__all__ = [
    "FORMAT_VERSION",
    "PATH_SETTINGS",
    "MODEL_CONFIGS",
    "BrebissonConfig",
    "AnyModelConfig",
    "DeepNATConfig",
    "MixNetConfig",
    "ModelConfig",
    "TrainingConfig",
    "Config",
    "load_config",
    "model_config_class",
    "save_config",
]

#: Version of the config format written into model folders (``format_version:``); raise it when a change
#: would make an older brainseg misread a newer folder. DeepNAT folders (``model.name: deepnat``) kept it
#: at 1: a brainseg from before them reads their model section as a :class:`ModelConfig` and refuses its
#: settings (``tasks``, ``coordinates``, ...) as unknown, and its family registry has no ``deepnat``
#: either, so it refuses such a folder rather than misreading it.
FORMAT_VERSION = 1
#: Training settings that name a file or folder: relative to the config file naming them, and compared by
#: content when a run resumes (another checkout or machine may hold them at another path).
PATH_SETTINGS = ("manifest", "reference", "init_from", "labels", "lut")


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
    branch_widths, mix_channels, fc_widths, dropout, batch_norm
        Layer sizes and regularisation.
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
    reference_space : bool
        Register every scan to the reference template and segment there (not in the paper).
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


@dataclass(frozen=True)
class TrainingConfig:
    """Training schedule and data (Ganaye et al. 2018, section 3.3).

    Attributes
    ----------
    manifest : str
        Manifest CSV of the labelled cases (relative to the config file).
    train_cases, validation_cases : tuple of str
        Case ids of each split.
    epochs : int
        Number of epochs; one epoch is ``samples_per_epoch`` patches.
    samples_per_epoch : int
        Patches drawn per epoch.
    batch_size : int
        Patches per SGD step (paper: 256).
    learning_rate, momentum, weight_decay : float
        SGD with momentum; L2 weight decay.
    nesterov : bool
        Nesterov momentum (``torch.optim.SGD(nesterov=True)``; needs ``momentum`` > 0).
    poly_power : float
        Poly policy ``lr = lr0 (1 - epoch / epochs) ** power``, updated per epoch (unless ``lr_milestones``).
    lr_milestones : tuple of float
        Fractions of ``epochs``, increasing, each in (0, 1), at which the learning rate is halved: epoch
        ``e`` (0-based) trains at ``lr0 * 0.5 ** k``, ``k`` the number of fractions ``f`` with ``e >= f *
        epochs`` (:mod:`brainseg.training.schedule`). Non-empty, it replaces the poly policy and
        ``poly_power`` is ignored. Chen and Merhof (2018, section 3.1): 0.2, 0.4, 0.6, 0.75, 0.8, 0.85,
        0.9, 0.95.
    sampling : str
        ``'uniform'`` (voxels uniform in the brain mask) or ``'balanced'``
        (class drawn uniformly, then a voxel of that class).
    seed : int
        Seed of every random generator.
    num_threads : int
        Torch intra-op threads (0 = torch's default).
    validate_every : int
        Validate on whole volumes every this many epochs (and after the last);
        0 never validates during training (the model card and the ablation
        command still score the finished model).
    reference : str
        Reference folder made by ``brainseg atlas build`` (template, atlas,
        transforms of the manifest's cases); needed by reference-space models.
    auxiliary_weights : tuple of 2 float
        Weights of the BaseNet and DistBranch auxiliary losses in the global
        loss (paper section 3.3); the main loss has weight 1.
    augment : bool
        Rescale and rotate the largest 2-D patch at random (section 3.3); other families augment their
        own way (MixNet: :mod:`brainseg.sampling.slice_augmentation`).
    augment_scale : tuple of 2 float
        Range of the scale factor (paper: 0.9-1.1).
    augment_rotation_deg : float
        Rotations are drawn in [-this, this] degrees (paper: 10).
    labels : str
        The label protocol: ``'auto'`` (every label number present in the
        label maps of the training and validation cases, see ``brainseg
        labels``), a shipped table's name (``'miccai2012'``) or a TSV file
        (relative to the config file).
    lut : str
        Colour table naming the classes of an ``'auto'`` table (optional).
    init_from : str
        Model folder whose weights initialise the network (fine-tuning):
        layers of the same shape are copied; layers that gained inputs (a
        prior merged into them) keep the old columns and start the new ones
        at zero; new branches start from their random initialisation.
    stop_min_gain : float
        Stop early when a validation's mean Dice exceeds the best one from at
        least ``stop_epochs`` epochs before by less than this (0 = never stop
        early). Changing it on ``--resume`` is allowed.
    stop_epochs : int
        The window of ``stop_min_gain``, in epochs.
    keep_best : bool
        Write the model folder only after validations that beat every earlier
        one, so it holds the best validated epoch's weights (the checkpoint
        still follows every epoch, for ``--resume``).
    """

    manifest: str = ""
    train_cases: tuple[str, ...] = ()
    validation_cases: tuple[str, ...] = ()
    epochs: int = 10
    samples_per_epoch: int = 500_000
    batch_size: int = 256
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    poly_power: float = 0.9
    lr_milestones: tuple[float, ...] = ()
    sampling: str = "uniform"
    seed: int = 0
    num_threads: int = 0
    validate_every: int = 1
    reference: str = ""
    auxiliary_weights: tuple[float, ...] = (0.0, 0.0)
    augment: bool = False
    augment_scale: tuple[float, ...] = (0.9, 1.1)
    augment_rotation_deg: float = 10.0
    init_from: str = ""
    labels: str = "auto"
    lut: str = ""
    stop_min_gain: float = 0.0
    stop_epochs: int = 2
    keep_best: bool = False

    def __post_init__(self) -> None:
        """Refuse schedule settings the optimiser cannot take, naming the setting."""
        if not isinstance(self.nesterov, bool):
            raise InputError(f"nesterov must be true or false, got {self.nesterov!r}")
        if self.nesterov and not self.momentum > 0:
            raise InputError(f"nesterov: true needs momentum > 0, got momentum {self.momentum!r}")
        fractions = self.lr_milestones
        if any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in fractions) or any(
            b <= a for a, b in zip(fractions, fractions[1:])
        ):
            raise InputError(
                f"lr_milestones must be increasing fractions of the epochs, each in (0, 1) (e.g. [0.2, 0.4]), "
                f"or empty for the poly policy; got {list(fractions)}"
            )


@dataclass(frozen=True)
class Config:
    """A whole run: model and training settings, and the dense CRF's settings for ``segment --crf``.

    A config's ``crf:`` section (optional) is read into
    :class:`~brainseg.postprocessing.dense_crf.CRFParameters`; a model folder carries it, and
    ``brainseg segment --crf`` uses it unless ``--crf-param`` overrides a value.
    """

    model: AnyModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    crf: CRFParameters = field(default_factory=CRFParameters)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        default = names[key].default
        if isinstance(default, tuple) or names[key].type.startswith("tuple"):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (InputError, ValueError) as err:  # a value the dataclass refuses (__post_init__)
        raise InputError(f"{where}: {err}") from None


def _read_raw(path: Path, seen: set[Path]) -> dict[str, Any]:
    # A config file's sections with its 'extends' chain resolved (base first, then this file).
    if path.resolve() in seen:
        raise InputError(f"{path}: 'extends' loops back to itself")
    if not path.is_file():
        raise InputError(f"{path}: no such config file (named by 'extends')")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(raw, dict) or set(raw) - {"model", "training", "crf", "extends", "format_version"}:
        raise InputError(
            f"{path}: expected the sections 'model' and 'training' (and optionally 'crf', 'extends', 'format_version')"
        )
    _check_format(path, raw.get("format_version", 1))
    for key in PATH_SETTINGS:  # paths are relative to the file naming them
        value = (raw.get("training") or {}).get(key)
        if key == "labels" and (value in SHIPPED_TABLES or value == "auto"):
            continue
        if value and not Path(value).is_absolute():
            raw["training"][key] = str((path.parent / value).resolve())
    if raw.get("extends"):
        raw = _merge(_read_raw(path.parent / str(raw["extends"]), seen | {path.resolve()}), raw)
    return raw


def _check_format(path: Path, version: Any) -> None:
    # A config written by a newer brainseg may mean settings this one would misread: refuse it by name.
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        from brainseg import __version__

        raise InputError(
            f"{path}: written by a newer brainseg (format_version {version}; brainseg {__version__} reads "
            f"up to {FORMAT_VERSION}); upgrade brainseg (pip install -U brainseg)"
        )


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    sections = ("model", "training", "crf")
    return {section: {**(base.get(section) or {}), **(top.get(section) or {})} for section in sections}


def load_config(
    path: str | Path, overrides: dict[str, dict[str, Any]] | None = None, *, model_folder: bool = False
) -> Config:
    """Read a YAML config with ``model:`` and ``training:`` sections (and optionally ``crf:``).

    A top-level ``extends: other.yaml`` (relative to the file) reads that
    config first and lets this file's settings override it, section by
    section. A top-level ``format_version`` (written into every model folder's
    config) above :data:`FORMAT_VERSION` is refused.

    Parameters
    ----------
    path : str or Path
        The YAML file.
    overrides : dict, optional
        ``{'model': {...}, 'training': {...}, 'crf': {...}}`` settings that win over the file's.
    model_folder : bool
        The file is a model folder's ``config.yaml``: an unknown setting is
        reported as coming from a newer brainseg.

    Raises
    ------
    InputError
        If the file is missing, is not YAML, comes from a newer brainseg or
        names unknown settings.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    raw = _read_raw(path, set())
    overrides = overrides or {}
    model_values = {**(raw.get("model") or {}), **overrides.get("model", {})}
    try:
        model = _build(model_config_class(model_values.get("name")), model_values, f"{path}: model")
        training = _build(
            TrainingConfig, {**(raw.get("training") or {}), **overrides.get("training", {})}, f"{path}: training"
        )
        crf = _build(CRFParameters, {**(raw.get("crf") or {}), **overrides.get("crf", {})}, f"{path}: crf")
    except InputError as err:
        if not model_folder:
            raise
        raise InputError(f"{err} (a model folder from a newer brainseg? upgrade brainseg)") from None
    except (TypeError, ValueError) as err:  # a setting of the wrong type, e.g. a list where a number belongs
        raise InputError(
            f"{path}: a setting has the wrong type ({err}); compare it with the README's configs"
        ) from None
    return Config(model, training, crf)


def model_config_class(name: Any) -> type:
    """The dataclass a ``model:`` section named ``name`` is read into (:data:`MODEL_CONFIGS`).

    Parameters
    ----------
    name : str or None
        ``model.name``; None (not given) means ``'basenet'``, the
        :class:`ModelConfig` default. Names not in :data:`MODEL_CONFIGS` are
        read as :class:`ModelConfig` (a family registered elsewhere).

    Examples
    --------
    >>> model_config_class("deepnat").__name__, model_config_class(None).__name__
    ('DeepNATConfig', 'ModelConfig')
    """
    return MODEL_CONFIGS.get(name if isinstance(name, str) else "basenet", ModelConfig)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-type dictionary of a config (tuples as lists) for YAML."""

    def plain(obj: Any) -> Any:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}

    return {"model": plain(config.model), "training": plain(config.training), "crf": plain(config.crf)}


def save_config(config: Config, path: str | Path) -> None:
    """Write a config as YAML (atomically), with the current :data:`FORMAT_VERSION`."""
    text = yaml.safe_dump({"format_version": FORMAT_VERSION, **config_to_dict(config)}, sort_keys=False)
    atomic_write_text(path, text)
