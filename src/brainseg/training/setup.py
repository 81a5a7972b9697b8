"""What a training run starts from: label table, device, initial weights, sampling prior.

Used by :func:`brainseg.training.trainer.train`; the calibration (:mod:`brainseg.training.calibration`)
rebuilds the sampling prior with :func:`sampling_prior`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainseg.config import TrainingConfig
from brainseg.errors import InputError
from brainseg.io.manifest import Case
from brainseg.io.nifti import load_volume
from brainseg.labels import LabelCounts, LabelTable, build_label_table, read_lut, resolve_label_table
from brainseg.model_folder import read_weights, verify_model_folder
from brainseg.postprocessing.prior import ClassPrior
from brainseg.training.data import TrainingCase

__all__ = ["initialise_from", "sampling_prior", "training_device", "training_label_table"]


def training_label_table(tc: TrainingConfig, cases: list[Case]) -> LabelTable:
    """The label table a run trains with (``training.labels``).

    Parameters
    ----------
    tc : TrainingConfig
        ``labels`` is ``'auto'``, a shipped table's name or a TSV path;
        ``lut`` optionally names the classes of an ``'auto'`` table.
    cases : list of Case
        The training and validation cases; an ``'auto'`` table has a class
        for every label number their label maps hold.

    Returns
    -------
    LabelTable
        The resolved table, or for ``'auto'`` one built from the label numbers counted in the cases.

    Raises
    ------
    InputError
        If the table cannot be read, or a case has no label map.
    """
    if tc.labels != "auto":
        return resolve_label_table(tc.labels)
    missing = [c.case_id for c in cases if c.label_map is None]
    if missing:
        raise InputError(f"{tc.manifest}: case(s) {missing} have no label_map to train on")
    counts = LabelCounts.count(load_volume(c.label_map, kind="label_map").data for c in cases)  # type: ignore[arg-type]
    return build_label_table(counts, read_lut(tc.lut) if tc.lut else None)


def training_device(name: str) -> torch.device:
    """The torch device a run trains on, checked before any data are loaded.

    Parameters
    ----------
    name : str
        ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or another torch device string.

    Returns
    -------
    torch.device
        A CPU or an available CUDA device.

    Raises
    ------
    InputError
        If the string names no device, or a CUDA device that this machine lacks.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name!r}: not a torch device; give cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise InputError(
                f"--device {name}: this machine has {count} CUDA device(s) (torch {torch.__version__}); "
                "train with --device cpu"
            )
    elif device.type != "cpu":
        raise InputError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def initialise_from(network: torch.nn.Module, model_dir: str | Path) -> int:
    """Copy the weights of a trained model folder into a (larger) network, for fine-tuning.

    Tensors of the same name and shape are copied. A fully connected weight
    that gained input columns (a prior merged into its layer) keeps the old
    columns first and starts the new ones at zero. A ProbBranch the source
    lacks starts with its last layer at zero, so the network initially
    computes what the source did; one the source has is copied like the rest.

    Parameters
    ----------
    network : torch.nn.Module
        The network to initialise, changed in place; tensors the source lacks (or whose shapes cannot be
        matched) keep their values.
    model_dir : str or Path
        A trained model folder (its ``weights.safetensors``).

    Returns
    -------
    int
        Number of tensors copied.

    Raises
    ------
    InputError
        If ``model_dir`` is not an intact model folder
        (:func:`brainseg.model_folder.verify_model_folder`).
    """
    verify_model_folder(model_dir)
    source = read_weights(Path(model_dir) / "weights.safetensors")
    state = network.state_dict()
    copied = 0
    with torch.no_grad():
        for name, value in state.items():
            old = source.get(name)
            if old is None:
                continue
            if old.shape == value.shape:
                value.copy_(old)
            elif old.ndim == 2 and value.ndim == 2 and old.shape[0] == value.shape[0] and old.shape[1] < value.shape[1]:
                value.zero_()
                value[:, : old.shape[1]] = old
            else:
                continue
            copied += 1
        prob = getattr(network, "prob_branch", None)
        if prob is not None and not any(k.startswith("prob_branch.") for k in source):
            prob.layers[-1].weight.zero_()
            prob.layers[-1].bias.zero_()
    network.load_state_dict(state)
    return copied


def sampling_prior(cases: list[TrainingCase], num_classes: int, mode: str) -> ClassPrior:
    """Class frequencies of the brain and of the training sampler over some training cases.

    Cases are drawn uniformly (:func:`~brainseg.training.batches.draw_batch`), so both are means over
    cases: the brain's is each class's share of the sampled region (what
    ``'uniform'`` sampling draws), the sampler's the exact expectation of
    ``mode`` (:meth:`~brainseg.sampling.samplers.VoxelSampler.class_frequencies`).
    The strength starts at 0 (no correction) until chosen on validation data.

    Parameters
    ----------
    cases : list of TrainingCase
        Loaded training cases, each with its family's sampler.
    num_classes : int
        Classes, background included.
    mode : str
        ``training.sampling``, a mode of the cases' samplers.

    Returns
    -------
    ClassPrior
        Brain and sampling frequencies, each float64 ``(num_classes,)``, strength 0.

    Raises
    ------
    InputError
        If ``mode`` is not one of the cases' samplers' modes.
    """
    brain = np.mean([c.sampler.class_frequencies(num_classes, "uniform") for c in cases], axis=0)
    sampling = np.mean([c.sampler.class_frequencies(num_classes, mode) for c in cases], axis=0)
    return ClassPrior(brain, sampling, 0.0)
