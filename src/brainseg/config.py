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

__all__ = ["ModelConfig", "TrainingConfig", "Config", "load_config", "save_config"]


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture (see :class:`brainseg.models.ganaye2018.BaseNet`).

    Attributes
    ----------
    name : str
        Registered model name (``'basenet'``).
    num_classes : int
        Classes including background.
    plane : str
        Plane of the 2-D patches: ``'axial'``, ``'coronal'`` or ``'sagittal'``.
    scales : tuple of int
        Patch scale factors (1 = 25 mm, 2 = 50 mm, 3 = 75 mm wide).
    branch_widths, mix_channels, fc_widths, dropout, batch_norm
        Layer sizes and regularisation.
    """

    name: str = "basenet"
    num_classes: int = 135
    plane: str = "axial"
    scales: tuple[int, ...] = (1, 2, 3)
    branch_widths: tuple[int, ...] = (32, 64)
    mix_channels: int = 64
    fc_widths: tuple[int, ...] = (512, 256)
    dropout: float = 0.5
    batch_norm: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """Training schedule and data (Ganaye et al. 2018, section 3.2).

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
    poly_power : float
        Poly policy ``lr = lr0 (1 - epoch / epochs) ** power``, updated per epoch.
    sampling : str
        ``'uniform'`` (voxels uniform in the brain mask) or ``'balanced'``
        (class drawn uniformly, then a voxel of that class).
    seed : int
        Seed of every random generator.
    num_threads : int
        Torch intra-op threads (0 = torch's default).
    validate_every : int
        Validate on whole volumes every this many epochs (and after the last).
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
    poly_power: float = 0.9
    sampling: str = "uniform"
    seed: int = 0
    num_threads: int = 0
    validate_every: int = 1


@dataclass(frozen=True)
class Config:
    """A whole run: model and training settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


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
    return cls(**kwargs)


def load_config(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read a YAML config with ``model:`` and ``training:`` sections.

    Raises
    ------
    InputError
        If the file is missing, is not YAML or names unknown settings.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(raw, dict) or set(raw) - {"model", "training"}:
        raise InputError(f"{path}: expected the sections 'model' and 'training'")
    overrides = overrides or {}
    model = _build(ModelConfig, {**(raw.get("model") or {}), **overrides.get("model", {})}, f"{path}: model")
    training = _build(
        TrainingConfig, {**(raw.get("training") or {}), **overrides.get("training", {})}, f"{path}: training"
    )
    if training.manifest and not Path(training.manifest).is_absolute():
        training = dataclasses.replace(training, manifest=str((path.parent / training.manifest).resolve()))
    return Config(model, training)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-type dictionary of a config (tuples as lists) for YAML."""

    def plain(obj: Any) -> Any:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}

    return {"model": plain(config.model), "training": plain(config.training)}


def save_config(config: Config, path: str | Path) -> None:
    """Write a config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
