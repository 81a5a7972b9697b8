"""Typed configuration: frozen dataclasses read from and written to YAML.

This is the only place configuration files are parsed; :func:`brainseg.models.build_model`
is the only place a model configuration is unpacked. The ``model:`` section's dataclasses, one per
family, live in :mod:`brainseg.model_configs` and are re-exported here.
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
from brainseg.model_configs import (
    MIXNET_PLANES,
    MODEL_CONFIGS,
    AnyModelConfig,
    BrebissonConfig,
    DeepNATConfig,
    MixNetConfig,
    ModelConfig,
)
from brainseg.postprocessing.dense_crf import CRFParameters

__all__ = [
    "FORMAT_VERSION",
    "PATH_SETTINGS",
    "PRECISIONS",
    "MODEL_CONFIGS",
    "MIXNET_PLANES",
    "BrebissonConfig",
    "AnyModelConfig",
    "DeepNATConfig",
    "MixNetConfig",
    "ModelConfig",
    "TrainingConfig",
    "Config",
    "config_from_dict",
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
#: The arithmetic of training steps (``training.precision``).
PRECISIONS = ("float32", "bfloat16")


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
        ``'uniform'`` (voxels uniform in the brain mask), ``'balanced'`` (class drawn uniformly, then a
        voxel of that class) or ``'mixed'`` (half of each); DeepNAT also takes ``'deepnat'``, the paper's
        capped pools (:mod:`brainseg.sampling.patches3d`). A family refuses a mode it does not draw.
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
    precision : str
        ``'float32'``, or ``'bfloat16'``: each step's forward pass and loss under
        ``torch.autocast`` with bfloat16 (the weights, the optimiser and the losses
        stay float32). A MixNet step took 0.5-0.6 of float32's time on a CPU
        with native bfloat16 products (AVX-512 BF16, AMX); pays on recent GPUs
        too; slower than float32 on CPUs without them.
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
    precision: str = "float32"

    def __post_init__(self) -> None:
        """Refuse schedule and precision settings the trainer cannot take, naming the setting."""
        for name, least in (
            ("epochs", 1),
            ("samples_per_epoch", 1),
            ("batch_size", 1),
            ("stop_epochs", 1),
            ("validate_every", 0),
            ("num_threads", 0),
        ):  # 0: never validate; torch's default
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"{name} must be a whole number >= {least}, got {value!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
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

    Attributes
    ----------
    model : AnyModelConfig
        The ``model:`` section, in the dataclass of its family (:func:`model_config_class`).
    training : TrainingConfig
        The ``training:`` section.
    crf : CRFParameters
        The ``crf:`` section.
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

    Returns
    -------
    Config
        Settings the files leave out take their defaults; relative paths of :data:`PATH_SETTINGS` are
        made absolute (relative to the file naming them).

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
    sections = {name: {**(raw.get(name) or {}), **overrides.get(name, {})} for name in ("model", "training", "crf")}
    try:
        return config_from_dict(sections, str(path))
    except InputError as err:
        if not model_folder:
            raise
        raise InputError(f"{err} (a model folder from a newer brainseg? upgrade brainseg)") from None


def config_from_dict(sections: dict[str, Any], where: str = "config") -> Config:
    """A :class:`Config` from ``{'model': {...}, 'training': {...}, 'crf': {...}}`` (each optional).

    Settings left out take their defaults, so a dictionary written by an older brainseg (fewer
    settings) reads as the config it meant.

    Parameters
    ----------
    sections : dict
        Plain values, as :func:`config_to_dict` writes them (lists for tuples).
    where : str
        Named in error messages (a file, a record).

    Returns
    -------
    Config
        The settings, with defaults for those left out.

    Raises
    ------
    InputError
        If a section names unknown settings, a value is refused, or has the wrong type.
    """
    model_values = sections.get("model") or {}
    try:
        model = _build(model_config_class(model_values.get("name")), model_values, f"{where}: model")
        training = _build(TrainingConfig, sections.get("training") or {}, f"{where}: training")
        crf = _build(CRFParameters, sections.get("crf") or {}, f"{where}: crf")
    except (TypeError, ValueError) as err:  # a setting of the wrong type, e.g. a list where a number belongs
        raise InputError(
            f"{where}: a setting has the wrong type ({err}); compare it with the README's configs"
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

    Returns
    -------
    type
        :class:`ModelConfig`, :class:`DeepNATConfig`, :class:`BrebissonConfig` or :class:`MixNetConfig`.

    Examples
    --------
    >>> model_config_class("deepnat").__name__, model_config_class(None).__name__
    ('DeepNATConfig', 'ModelConfig')
    """
    return MODEL_CONFIGS.get(name if isinstance(name, str) else "basenet", ModelConfig)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-type dictionary of a config (tuples as lists) for YAML.

    Parameters
    ----------
    config : Config
        The config.

    Returns
    -------
    dict of str to dict
        ``{'model': {...}, 'training': {...}, 'crf': {...}}``, every setting by name, which
        :func:`config_from_dict` reads back.
    """

    def plain(obj: Any) -> Any:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}

    return {"model": plain(config.model), "training": plain(config.training), "crf": plain(config.crf)}


def save_config(config: Config, path: str | Path) -> None:
    """Write a config as YAML (atomically), with the current :data:`FORMAT_VERSION`.

    Parameters
    ----------
    config : Config
        The config.
    path : str or Path
        The YAML file to write (missing parent folders are created).

    Raises
    ------
    OSError
        If the file cannot be written (:func:`brainseg.io.atomic.atomic_write_text`).
    """
    text = yaml.safe_dump({"format_version": FORMAT_VERSION, **config_to_dict(config)}, sort_keys=False)
    atomic_write_text(path, text)
