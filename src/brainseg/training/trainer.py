"""The training loop: patches from a manifest, SGD with momentum, poly policy, per-epoch validation.

Follows Ganaye et al. (2018, section 3.3): SGD with momentum 0.9, initial
learning rate 1e-3 decayed by the poly policy (power 0.9) each epoch, batches
of 256 patches, L2 weight decay and cross-entropy; ``training.nesterov`` and
``training.lr_milestones`` give other families' papers their schedules
(:mod:`brainseg.training.schedule`). An epoch is a fixed number
of patches (``samples_per_epoch``) drawn afresh from seeded generators
(:mod:`brainseg.training.batches`), so a resumed run draws the same patches as
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainseg.config import Config, save_config
from brainseg.errors import InputError, TrainingDiverged
from brainseg.families import Family, family_of
from brainseg.inference.bfloat16 import bfloat16_available
from brainseg.io.atomic import atomic_write_text
from brainseg.io.manifest import read_manifest
from brainseg.metrics.overlap import dice_per_class
from brainseg.model_folder import save_model_folder
from brainseg.models import build_model, count_parameters
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.reference import load_reference
from brainseg.training.batches import BatchWorkers, epoch_batches
from brainseg.training.checkpoint import (
    check_resumable,
    load_checkpoint,
    path_digests,
    resume_settings,
    save_checkpoint,
)
from brainseg.training.data import TrainingCase, load_training_case
from brainseg.training.schedule import learning_rate_schedule
from brainseg.training.setup import initialise_from, sampling_prior, training_device, training_label_table
from brainseg.training.stopping import is_best, should_stop, weights_epoch

__all__ = ["train", "validate", "with_overrides"]

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def validate(
    network: torch.nn.Module, cases: list[TrainingCase], num_classes: int, family: Family, progress: bool = False
) -> dict:
    """Mean Dice over structures on whole validation volumes (the family's dense inference).

    Reference-space models are scored on the template grid against the
    resampled reference labels (a quick check during training; model cards
    score on the input grid).

    Parameters
    ----------
    network : torch.nn.Module
        The network being trained; it is put in eval mode (and left there).
    cases : list of TrainingCase
        Loaded validation cases, with their family's inputs, brain masks and reference classes.
    num_classes : int
        Classes, background included.
    family : Family
        The model's family, whose dense inference segments each case.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        ``{"mean_dice": float, "per_case": {case_id: float}, "per_class": list}``;
        per-class values are means over cases, NaN where never present.
    """
    network.eval()
    per_case, per_class = {}, []
    for case in cases:
        predicted, _ = family.predict(network, case.inputs, case.mask, progress=progress)
        dices = dice_per_class(predicted, case.classes, num_classes)[1:]
        per_case[case.case_id] = float(np.nanmean(dices))
        per_class.append(dices)
    with warnings.catch_warnings():  # classes absent from every case stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        classes = np.nanmean(np.array(per_class), axis=0) if per_class else np.array([])
    return {
        "mean_dice": float(np.mean(list(per_case.values()))) if per_case else float("nan"),
        "per_case": per_case,
        "per_class": [None if np.isnan(v) else float(v) for v in classes],
    }


def _diverged(what: str, epoch: int, output: Path) -> TrainingDiverged:
    """The one-line error of a run whose loss or weights stopped being finite during ``epoch`` (0-based)."""
    kept = f"the checkpoint of epoch {epoch} in {output} is kept" if epoch else "no checkpoint was written"
    return TrainingDiverged(
        f"{what}; stopped before writing this epoch ({kept}); lower training.learning_rate or set "
        "training.precision: float32, then train again (--resume from a kept checkpoint)"
    )


def train(
    config: Config,
    output: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
    workers: int = 0,
) -> Path:
    """Train a model and write its model folder.

    Parameters
    ----------
    config : Config
        Model and training settings; ``training.manifest`` and the case ids name the data.
    output : str or Path
        Model folder to create; ``checkpoint.pt`` and ``history.json`` are kept there.
    resume : bool
        Continue from ``output/checkpoint.pt``.
    progress : bool
        Show tqdm progress bars.
    device : str
        Torch device of the training steps (:func:`~brainseg.training.setup.training_device`); the
        network moves to the CPU for validation and for writing the model
        folder, so everything written is the same on any device.
    workers : int
        Processes drawing the batches ahead of the training step
        (:class:`~brainseg.training.batches.BatchWorkers`: the same batches
        for any number >= 1); 0 draws them in the loop.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    InputError
        If the output folder already holds a run and ``resume`` is False, if
        there is no checkpoint to resume, or if the data are unusable.
    TrainingDiverged
        If a step's loss is NaN or infinite (raised before that step's update), or the weights are not
        finite after an epoch's last step (NaN gradients behind a finite loss): raised before that epoch's
        checkpoint, so ``checkpoint.pt`` and ``history.json`` keep the last finite epoch.
    """
    output = Path(output)
    tc = config.training
    on = training_device(device)
    if workers < 0:
        raise InputError(f"--workers {workers}: give a number of processes >= 0")
    checkpoint_path = output / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise InputError(
            f"{output}: already holds a training run; pass --resume to continue it or choose another folder"
        )
    if resume and not checkpoint_path.exists():
        raise InputError(f"{output}: no {CHECKPOINT} to resume from")
    if not tc.train_cases:
        raise InputError("training.train_cases is empty; list the case ids to train on")
    output.mkdir(parents=True, exist_ok=True)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.precision == "bfloat16" and on.type == "cpu" and not bfloat16_available():
        log.warning("training.precision: bfloat16 on a CPU without native bfloat16 products: slower than float32")

    normalization = IntensityNormalization()
    by_id = {c.case_id: c for c in read_manifest(tc.manifest)}
    unknown = [i for i in tc.train_cases + tc.validation_cases if i not in by_id]
    if unknown:
        raise InputError(f"{tc.manifest}: no case(s) {unknown}")
    labels = training_label_table(tc, [by_id[i] for i in tc.train_cases + tc.validation_cases])
    if config.model.num_classes not in (0, labels.num_classes):
        raise InputError(
            f"model.num_classes is {config.model.num_classes} but the label table ({tc.labels}) has "
            f"{labels.num_classes} classes; remove num_classes from the config (it follows from the table)"
        )
    config = replace(config, model=replace(config.model, num_classes=labels.num_classes))
    log.info("label table %s: %d classes", tc.labels, labels.num_classes)
    family = family_of(config.model)
    reference = None
    if config.model.needs_reference:
        if not tc.reference:
            raise InputError(
                "this model works in the reference space: set training.reference to a folder made by "
                "'brainseg atlas build'"
            )
        reference = load_reference(tc.reference)
        if family.needs_atlas(config.model) and reference.atlas is None:
            raise InputError(f"{tc.reference}: has no atlas.npz; this model reads the probabilistic atlas")
        if family.needs_atlas(config.model) and reference.atlas.num_classes != labels.num_classes:
            raise InputError(
                f"{tc.reference}: its atlas has {reference.atlas.num_classes} classes, the label table "
                f"({tc.labels}) {labels.num_classes}; build the atlas with the same table "
                "(brainseg atlas build ... --labels TABLE)"
            )
    load = lambda ids: [  # noqa: E731
        load_training_case(by_id[i], labels, config.model, normalization, reference) for i in ids
    ]
    log.info("loading %d training and %d validation cases", len(tc.train_cases), len(tc.validation_cases))
    train_cases, val_cases = load(tc.train_cases), load(tc.validation_cases)
    prior = sampling_prior(train_cases, labels.num_classes, tc.sampling)

    torch.manual_seed(tc.seed)
    network = build_model(config.model)
    if tc.init_from and not resume:
        copied = initialise_from(network, tc.init_from)
        log.info("initialised %d tensors from %s", copied, tc.init_from)
    network.to(on)  # before the optimiser, so that its state lives where the parameters do
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=tc.learning_rate,
        momentum=tc.momentum,
        weight_decay=tc.weight_decay,
        nesterov=tc.nesterov,
    )
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    settings, digests = resume_settings(config), path_digests(config)
    if resume:
        state = load_checkpoint(checkpoint_path)
        check_resumable(state, settings, digests, checkpoint_path)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the schedule restarts from the base rate and is replayed below
            group["lr"] = group["initial_lr"] = tc.learning_rate
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed_s"])
        history = json.loads((output / "history.json").read_text()) if (output / "history.json").exists() else []
        log.info("resuming after epoch %d", start_epoch)
    # Per epoch: poly decay (Ganaye et al. 2018, section 3.3) or halving at tc.lr_milestones (Chen and Merhof 2018).
    scheduler = learning_rate_schedule(optimizer, tc)
    with warnings.catch_warnings():  # replaying finished epochs' steps, before any optimizer step of this run
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for _ in range(start_epoch):
            scheduler.step()
    save_config(config, output / "config.yaml")
    log.info("%s: %d parameters", config.model.name, count_parameters(network))

    steps = max(tc.samples_per_epoch // tc.batch_size, 1)
    if should_stop(history, tc.stop_min_gain, tc.stop_epochs):
        log.info("this run already stopped early (history.json); nothing to do")
        start_epoch = tc.epochs
    with BatchWorkers(train_cases, tc, workers) if workers else contextlib.nullcontext() as drawer:
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.time()
            lr = float(scheduler.get_last_lr()[0])
            torch.manual_seed(tc.seed * 100_003 + epoch)
            network.to(on).train()
            losses = []
            batches = epoch_batches(train_cases, tc, epoch, steps, drawer)
            bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not progress, unit="batch")
            for batch, targets in bar:
                if on.type != "cpu":
                    batch = {name: value.to(on, non_blocking=True) for name, value in batch.items()}
                    targets = targets.to(on, non_blocking=True)
                with torch.autocast(on.type, dtype=torch.bfloat16, enabled=tc.precision == "bfloat16"):
                    loss = family.loss(network, batch, targets, tc)
                if not torch.isfinite(loss.detach()):
                    raise _diverged(
                        f"epoch {epoch + 1}, step {len(losses) + 1}: the loss is {float(loss.detach()):g}",
                        epoch,
                        output,
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                if len(losses) % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.2e}")
            record = {"epoch": epoch + 1, "lr": lr, "loss": float(np.mean(losses)), "train_s": time.time() - t0}
            last = epoch + 1 == tc.epochs
            network.to("cpu")
            if not all(bool(torch.isfinite(p).all()) for p in network.parameters()):  # NaN gradients, finite loss
                raise _diverged(f"epoch {epoch + 1}: the weights are not finite after its last step", epoch, output)
            if val_cases and tc.validate_every and ((epoch + 1) % tc.validate_every == 0 or last):
                t1 = time.time()
                scores = validate(network, val_cases, config.model.num_classes, family, progress=progress)
                record.update(
                    val_mean_dice=scores["mean_dice"], val_per_case=scores["per_case"], val_s=time.time() - t1
                )
            elapsed += time.time() - t0
            record["elapsed_s"] = elapsed
            history.append(record)
            log.info(
                "epoch %d: loss %.4f, validation mean Dice %s", epoch + 1, record["loss"], record.get("val_mean_dice")
            )
            save_checkpoint(
                checkpoint_path,
                {
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "elapsed_s": elapsed,
                    "settings": settings,
                    "digests": digests,
                },
            )
            scheduler.step()
            atomic_write_text(output / "history.json", json.dumps(history, indent=2) + "\n")
            network.eval()
            if not tc.keep_best or is_best(history):
                save_model_folder(
                    output, config, labels, normalization, network, reference=tc.reference or None, prior=prior
                )
            if should_stop(history, tc.stop_min_gain, tc.stop_epochs):
                log.info(
                    "stopping after epoch %d: validation mean Dice gained less than %g over %d epochs",
                    epoch + 1,
                    tc.stop_min_gain,
                    tc.stop_epochs,
                )
                break
    atomic_write_text(
        output / "training.json",
        json.dumps(
            {
                "epochs": len(history),
                "weights_epoch": weights_epoch(history, tc.keep_best),
                "elapsed_s": elapsed,
                "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
                "parameters": count_parameters(network),
            },
            indent=2,
        )
        + "\n",
    )
    return output


def with_overrides(config: Config, **training: object) -> Config:
    """A copy of ``config`` with some training settings replaced.

    Parameters
    ----------
    config : Config
        Left unchanged.
    **training : object
        :class:`~brainseg.config.TrainingConfig` fields and their new values, e.g. ``epochs=2``.

    Returns
    -------
    Config
        The copy (its model and other sections shared with ``config``).

    Raises
    ------
    TypeError
        If a keyword names no training setting.
    InputError
        If the new settings are refused by :class:`~brainseg.config.TrainingConfig`'s checks.
    """
    return replace(config, training=replace(config.training, **training))
