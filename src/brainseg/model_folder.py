"""Model folders: everything inference needs, in one directory.

Layout::

    config.yaml          model and training settings (with the folder's format_version)
    labels.tsv           class index <-> protocol label number <-> name
    normalization.json   intensity normalisation applied before the network
    weights.safetensors  network weights (no pickle)
    reference/           template.nii.gz, atlas.npz, reference.json (reference-space models only)
    class_prior.json     class frequencies of the brain and of the training sampler, and the strength of
                         the correction applied at inference (brainseg.postprocessing.prior)
    checksums.sha256     sha256 of each file above (``sha256sum -c checksums.sha256`` checks it too)
    model_card.md        data, split, training budget, validation figures
    history.json, training.json, validation.csv, validation.json, checkpoint.pt, ablation_row.json,
    prior_calibration.csv, crf_tuning.csv, crf_tuning_cases.jsonl, refinement.md,
    true_centroids.md, view_fusion.md, view_fusion.csv
                         training records, never read to segment

Model folders are data, not code
--------------------------------
A folder passed as ``--model`` may come from anywhere, so
:func:`verify_model_folder` runs before anything in it is read: a file the
layout above does not name is refused (another tool's ``model.pth`` is never
looked at), the files inference reads must match ``checksums.sha256`` (written
at training time: a truncated, edited or swapped file is refused), and nothing
is ever unpickled: weights are safetensors, the atlas an ``.npz`` read with
``allow_pickle=False``, the rest YAML (``safe_load``), JSON and TSV.
``checkpoint.pt`` (training's resumable state) is read only by ``brainseg
train --resume``, with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from brainseg.config import Config, load_config, save_config
from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.io.atomic import atomic_path, atomic_write_text, sha256_file
from brainseg.labels import LabelTable
from brainseg.models import build_model
from brainseg.postprocessing.prior import PRIOR_FILE, ClassPrior
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.reference import MODEL_FILES, TEMPLATE, Reference, copy_reference, load_reference

__all__ = [
    "CHECKSUMS",
    "SHIPPED_MODELS",
    "LoadedModel",
    "default_model_dir",
    "load_model_folder",
    "read_weights",
    "resolve_model_dir",
    "save_model_folder",
    "shipped_model_dir",
    "verify_model_folder",
    "write_checksums",
]

FILES = ("config.yaml", "labels.tsv", "normalization.json", "weights.safetensors")
REFERENCE = "reference"
CHECKSUMS = "checksums.sha256"
#: Files inference reads (relative paths): the checksums cover exactly these.
PAYLOAD = FILES + (PRIOR_FILE,) + tuple(f"{REFERENCE}/{name}" for name in MODEL_FILES)
#: Files training writes beside them, never read to segment.
RECORDS = (
    CHECKSUMS,
    "model_card.md",
    "history.json",
    "training.json",
    "validation.csv",
    "validation.json",
    "checkpoint.pt",
    "ablation_row.json",
    "prior_calibration.csv",
    "crf_tuning.csv",
    "crf_tuning_cases.jsonl",
    "refinement.md",
    "true_centroids.md",
    "view_fusion.md",
    "view_fusion.csv",
)


@dataclass
class LoadedModel:
    """A model folder read into memory; the network is in eval mode on CPU.

    Attributes
    ----------
    config : Config
        ``config.yaml``.
    labels : LabelTable
        ``labels.tsv``: class index <-> protocol label number.
    normalization : IntensityNormalization
        ``normalization.json``: applied to images before the network.
    network : torch.nn.Module
        The network of ``config.model`` with the weights of ``weights.safetensors``.
    path : Path
        The folder.
    reference : Reference or None
        ``reference/`` (template, atlas) of a reference-space model; None for native-space models.
    prior : ClassPrior or None
        ``class_prior.json``; None for a folder without one.
    """

    config: Config
    labels: LabelTable
    normalization: IntensityNormalization
    network: torch.nn.Module
    path: Path
    reference: Reference | None = None
    prior: ClassPrior | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The images the network reads, in channel order (:meth:`brainseg.families.Family.modalities`)."""
        return family_of(self.config.model).modalities(self.config.model)


#: Model folders shipped inside the package, by the name ``--model`` accepts.
SHIPPED_MODELS = {
    "default": "default_model",  # the full model of Ganaye et al. (reference space)
    "basenet": "basenet_model",  # BaseNet alone (native space, about 3x faster)
    "deepnat": "deepnat_model",  # DeepNAT (Wachinger et al. 2018), one step, on 25 aseg structures
    "brebisson2015": "brebisson2015_model",  # de Brébisson & Montana (2015): two-stage, 134 structures
    "mixnet": "mixnet_model",  # MixNetv2 (Chen & Merhof 2018), one network for three views, 134 structures
    "mixnet-tissue": "mixnet_tissue_model",  # the same on IBSR 18: CSF (ventricles), grey and white matter
}


def shipped_model_dir(name: str = "default") -> Path:
    """A model folder shipped inside the package (``brainseg/data/<folder>``).

    Parameters
    ----------
    name : str
        A key of :data:`SHIPPED_MODELS`.

    Returns
    -------
    Path
        The folder inside the installed package (its contents are not checked here).

    Raises
    ------
    InputError
        If ``name`` is not a shipped model.
    """
    if name not in SHIPPED_MODELS:
        raise InputError(f"no shipped model named {name!r}; choose one of {', '.join(SHIPPED_MODELS)} or a folder")
    return Path(str(resources.files("brainseg.data").joinpath(SHIPPED_MODELS[name])))


def default_model_dir() -> Path:
    """The default model folder shipped inside the package (``brainseg/data/default_model``).

    Returns
    -------
    Path
        The folder (its contents are not checked here).
    """
    return shipped_model_dir("default")


def resolve_model_dir(model: str | Path | None) -> Path:
    """The folder of ``--model``: a path, a shipped model's name, or None for the default.

    A name of :data:`SHIPPED_MODELS` means the shipped model unless a folder of
    that name exists in the working directory (a path always wins).

    Parameters
    ----------
    model : str or Path or None
        What ``--model`` gave.

    Returns
    -------
    Path
        The folder; a path is returned as given, not checked (:func:`verify_model_folder` does that).
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
    prior: ClassPrior | None = None,
) -> Path:
    """Write a model folder (weights written to a temp file, then renamed).

    Parameters
    ----------
    path : str or Path
        Folder to write.
    config : Config
        Written to ``config.yaml``.
    labels : LabelTable
        Written to ``labels.tsv``.
    normalization : IntensityNormalization
        Written to ``normalization.json``.
    network : torch.nn.Module
        Its state dict is written to ``weights.safetensors``.
    reference : str or Path, optional
        Reference folder (``brainseg atlas build``) whose template, atlas and
        build record are copied to ``path/reference`` (once).
    prior : ClassPrior, optional
        Class frequencies of the brain and the sampler (``class_prior.json``).

    Returns
    -------
    Path
        ``path``, with ``checksums.sha256`` written last.

    Raises
    ------
    InputError
        If ``reference`` is to be copied and is not a reference folder (no template).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if reference is not None and config.model.needs_reference and not (path / REFERENCE / TEMPLATE).is_file():
        copy_reference(reference, path / REFERENCE)
    save_config(config, path / "config.yaml")
    labels.to_tsv(path / "labels.tsv")
    normalization.save(path / "normalization.json")
    if prior is not None:
        prior.save(path / PRIOR_FILE)
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(path / "weights.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model": config.model.name})
    write_checksums(path)
    return path


def write_checksums(path: str | Path) -> Path:
    """Write ``checksums.sha256``: the sha256 of every file inference reads, in ``sha256sum`` format.

    Parameters
    ----------
    path : str or Path
        A model folder; the files of :data:`PAYLOAD` present in it are listed.

    Returns
    -------
    Path
        The written ``checksums.sha256``.
    """
    path = Path(path)
    lines = [f"{sha256_file(path / name)}  {name}\n" for name in PAYLOAD if (path / name).is_file()]
    return atomic_write_text(path / CHECKSUMS, "".join(lines))


_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S.*)$")


def verify_model_folder(path: str | Path) -> None:
    """Check a model folder before reading anything in it (see "Model folders are data, not code").

    Parameters
    ----------
    path : str or Path
        The folder.

    Raises
    ------
    InputError
        If it is not a folder, lacks a file inference needs, holds a file a
        model folder does not have (temporaries ``.NAME.*`` of an interrupted
        write excepted), has no ``checksums.sha256``, or a file's sha256
        differs from the recorded one (truncated, edited or swapped).
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(
            f"{path}: not a model folder (no such folder); pass --model DIR of a trained model or the name of a "
            f"shipped model ({', '.join(SHIPPED_MODELS)})"
        )
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise InputError(
            f"{path}: not a model folder (missing {', '.join(missing)}); pass --model DIR of a trained model"
        )
    known = set(PAYLOAD) | set(RECORDS) | {REFERENCE}
    unknown = []
    for entry in sorted(path.rglob("*")):
        name = entry.relative_to(path).as_posix()
        temporary = entry.name.startswith(".") and any(
            entry.name.startswith(f".{Path(k).name}.") for k in known if Path(k).parent == Path(name).parent
        )
        if name not in known and not temporary:
            unknown.append(name)
    if unknown:
        raise InputError(
            f"{path}: holds files a brainseg model folder does not have ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}); brainseg reads only its own files: remove these or "
            "give the folder brainseg train wrote"
        )
    if not (path / CHECKSUMS).is_file():
        raise InputError(
            f"{path}: no {CHECKSUMS} (written at training time since brainseg 0.2); retrain or re-export the model, "
            f"or, if you trust every file in it, record them with brainseg.model_folder.write_checksums"
        )
    recorded = {}
    for number, line in enumerate((path / CHECKSUMS).read_text(errors="replace").splitlines(), 1):
        match = _CHECKSUM_LINE.match(line)
        if not match or match.group(2) not in PAYLOAD:
            raise InputError(f"{path / CHECKSUMS}: line {number} is not 'SHA256  FILE' for a model file; restore it")
        recorded[match.group(2)] = match.group(1)
    for name in PAYLOAD:
        if not (path / name).is_file():
            if name in recorded:
                raise InputError(f"{path}: {name} is missing (listed in {CHECKSUMS}); copy the whole model folder")
            continue
        if name not in recorded:
            raise InputError(f"{path}: {name} is not listed in {CHECKSUMS}; it was added after training: remove it")
        if sha256_file(path / name) != recorded[name]:
            raise InputError(
                f"{path / name}: sha256 differs from {CHECKSUMS} (the file is truncated, edited or swapped); "
                "copy the model folder again"
            )


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``weights.safetensors`` (no pickle), renaming the layers of brainseg 0.1 BaseNet folders.

    Version 0.1 kept BaseNet's fully connected layers in one ``classifier``
    sequence (linear layers at indices 0, 3, 6, ...); they are now ``fc.k``
    and ``out``.

    Parameters
    ----------
    path : str or Path
        A ``weights.safetensors`` file.

    Returns
    -------
    dict of str to torch.Tensor
        The network's state dict, by today's layer names.

    Raises
    ------
    safetensors.SafetensorError, OSError
        If the file is missing or not a safetensors file (:func:`load_model_folder` reports these as
        :class:`~brainseg.errors.InputError`).
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

    The folder is checked first (:func:`verify_model_folder`).

    Parameters
    ----------
    path : str or Path or None
        As :func:`resolve_model_dir` takes it.

    Returns
    -------
    LoadedModel
        Every file inference reads, with the network in eval mode on the CPU.

    Raises
    ------
    InputError
        If the folder or one of its files is missing, or the weights do not fit
        the configured network.
    """
    path = resolve_model_dir(path)
    verify_model_folder(path)
    config = load_config(path / "config.yaml", model_folder=True)
    labels = LabelTable.from_tsv(path / "labels.tsv")
    if labels.num_classes != config.model.num_classes:
        raise InputError(
            f"{path}: labels.tsv has {labels.num_classes} classes but config.yaml's num_classes is "
            f"{config.model.num_classes}; the folder mixes files of two models: copy it again"
        )
    network = build_model(config.model)
    try:
        weights = read_weights(path / "weights.safetensors")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}/weights.safetensors: unreadable ({err}); copy the model folder again") from None
    expected = network.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (network {tuple(expected[k].shape)})"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing_keys = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if wrong or missing_keys or unexpected:
        detail = "; ".join(
            part
            for part in (
                f"shapes differ: {', '.join(wrong[:3])}" if wrong else "",
                f"missing: {', '.join(missing_keys[:3])}" if missing_keys else "",
                f"unexpected: {', '.join(unexpected[:3])}" if unexpected else "",
            )
            if part
        )
        raise InputError(
            f"{path}/weights.safetensors: does not fit the network config.yaml describes with the "
            f"{labels.num_classes} classes of labels.tsv ({detail}); the files come from different models"
        )
    network.load_state_dict(weights)
    network.eval()
    reference = None
    if config.model.needs_reference:
        reference = load_reference(path / REFERENCE)
        if family_of(config.model).needs_atlas(config.model) and reference.atlas is None:
            raise InputError(
                f"{path / REFERENCE}: has no atlas.npz, which this model reads; copy the whole model folder"
            )
    normalization = IntensityNormalization.load(path / "normalization.json")
    prior = None
    if (path / PRIOR_FILE).is_file():
        prior = ClassPrior.load(path / PRIOR_FILE)
        if prior.num_classes != labels.num_classes:
            raise InputError(
                f"{path / PRIOR_FILE}: {prior.num_classes} classes, labels.tsv {labels.num_classes}; copy the folder again"
            )
    return LoadedModel(config, labels, normalization, network, path, reference, prior)
