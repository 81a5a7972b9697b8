"""Model folders: everything inference needs, in one directory.

Layout::

    config.yaml          model and training settings
    labels.tsv           class index <-> protocol label number <-> name
    normalization.json   intensity normalisation applied before the network
    weights.safetensors  network weights (no pickle)
    model_card.md        data, split, training budget, validation figures
    reference/           template.nii.gz, atlas.npz, reference.json (reference-space models only)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from brainseg.config import Config, load_config, save_config
from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path
from brainseg.labels import LabelTable
from brainseg.models import build_model
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.reference import TEMPLATE, Reference, copy_reference, load_reference

__all__ = [
    "SHIPPED_MODELS",
    "LoadedModel",
    "default_model_dir",
    "load_model_folder",
    "read_weights",
    "resolve_model_dir",
    "save_model_folder",
    "shipped_model_dir",
]

FILES = ("config.yaml", "labels.tsv", "normalization.json", "weights.safetensors")
REFERENCE = "reference"


@dataclass
class LoadedModel:
    """A model folder read into memory; the network is in eval mode on CPU."""

    config: Config
    labels: LabelTable
    normalization: IntensityNormalization
    network: torch.nn.Module
    path: Path
    reference: Reference | None = None


#: Model folders shipped inside the package, by the name ``--model`` accepts.
SHIPPED_MODELS = {
    "default": "default_model",  # the full model of Ganaye et al. (reference space)
    "basenet": "basenet_model",  # BaseNet alone (native space, about 3x faster)
}


def shipped_model_dir(name: str = "default") -> Path:
    """A model folder shipped inside the package (``brainseg/data/<folder>``).

    Parameters
    ----------
    name : str
        A key of :data:`SHIPPED_MODELS`.

    Raises
    ------
    InputError
        If ``name`` is not a shipped model.
    """
    if name not in SHIPPED_MODELS:
        raise InputError(f"no shipped model named {name!r}; choose one of {', '.join(SHIPPED_MODELS)} or a folder")
    return Path(str(resources.files("brainseg.data").joinpath(SHIPPED_MODELS[name])))


def default_model_dir() -> Path:
    """The default model folder shipped inside the package (``brainseg/data/default_model``)."""
    return shipped_model_dir("default")


def resolve_model_dir(model: str | Path | None) -> Path:
    """The folder of ``--model``: a path, a shipped model's name, or None for the default.

    A name of :data:`SHIPPED_MODELS` means the shipped model unless a folder of
    that name exists in the working directory (a path always wins).
    """
    if model is None:
        return default_model_dir()
    path = Path(model)
    if not path.exists() and str(model) in SHIPPED_MODELS:
        return shipped_model_dir(str(model))
    return path


def save_model_folder(
    path: str | Path,
    config: Config,
    labels: LabelTable,
    normalization: IntensityNormalization,
    network: torch.nn.Module,
    reference: str | Path | None = None,
) -> Path:
    """Write a model folder (weights written to a temp file, then renamed).

    Parameters
    ----------
    path : str or Path
        Folder to write.
    config, labels, normalization, network
        What the folder holds.
    reference : str or Path, optional
        Reference folder (``brainseg atlas build``) whose template, atlas and
        build record are copied to ``path/reference`` (once).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if reference is not None and config.model.needs_reference and not (path / REFERENCE / TEMPLATE).is_file():
        copy_reference(reference, path / REFERENCE)
    save_config(config, path / "config.yaml")
    labels.to_tsv(path / "labels.tsv")
    normalization.save(path / "normalization.json")
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(path / "weights.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model": config.model.name})
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``weights.safetensors`` (no pickle), renaming the layers of brainseg 0.1 BaseNet folders.

    Version 0.1 kept BaseNet's fully connected layers in one ``classifier``
    sequence (linear layers at indices 0, 3, 6, ...); they are now ``fc.k``
    and ``out``.
    """
    state = load_file(str(path))
    linear = sorted({int(k.split(".")[1]) for k in state if k.startswith("classifier.")})
    if not linear:
        return state
    names = {i: f"fc.{n}" for n, i in enumerate(linear[:-1])}
    names[linear[-1]] = "out"
    upgraded = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            _, index, param = key.split(".")
            key = f"{names[int(index)]}.{param}"
        upgraded[key] = value
    return upgraded


def load_model_folder(path: str | Path | None = None) -> LoadedModel:
    """Read a model folder: a path, a shipped model's name (``'basenet'``) or None for the default.

    Raises
    ------
    InputError
        If the folder or one of its files is missing, or the weights do not fit
        the configured network.
    """
    path = resolve_model_dir(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise InputError(
            f"{path}: not a model folder (missing {', '.join(missing)}); pass --model DIR of a trained model"
        )
    config = load_config(path / "config.yaml")
    labels = LabelTable.from_tsv(path / "labels.tsv")
    if labels.num_classes != config.model.num_classes:
        raise InputError(f"{path}: labels.tsv has {labels.num_classes} classes, config.yaml {config.model.num_classes}")
    network = build_model(config.model)
    try:
        network.load_state_dict(read_weights(path / "weights.safetensors"))
    except (RuntimeError, OSError) as err:
        raise InputError(f"{path}/weights.safetensors: does not fit the configured network ({err})") from None
    network.eval()
    reference = None
    if config.model.needs_reference:
        reference = load_reference(path / REFERENCE)
        if config.model.prob_branch and reference.atlas is None:
            raise InputError(f"{path / REFERENCE}: has no atlas.npz, which this model's ProbBranch needs")
    normalization = IntensityNormalization.load(path / "normalization.json")
    return LoadedModel(config, labels, normalization, network, path, reference)
