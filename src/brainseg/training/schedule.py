"""The learning-rate schedule of a run, stepped once per epoch: poly decay, or halving at milestones.

Poly decay (Ganaye et al. 2018, section 3.3): ``lr0 * (1 - epoch / epochs) ** poly_power``. Milestones
(Chen and Merhof 2018, section 3.1: "halved at 0.2, 0.4, 0.6, 0.75, 0.8, 0.85, 0.9 and 0.95 of the
epochs"): ``lr0 * 0.5 ** k`` at epoch ``e`` (0-based), ``k`` the number of ``lr_milestones`` fractions
``f`` with ``e >= f * epochs``. Either way the rate of epoch ``e`` depends only on ``e`` and the
settings, so a resumed run rebuilds the scheduler and replays ``e`` steps (:func:`brainseg.training.trainer.train`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from brainseg.config import TrainingConfig

__all__ = ["learning_rate_schedule", "milestone_epochs"]


def milestone_epochs(fractions: Sequence[float], epochs: int) -> list[int]:
    """The 0-based epochs from which the learning rate is halved once more.

    Parameters
    ----------
    fractions : sequence of float
        ``lr_milestones``: fractions of the epochs, in (0, 1).
    epochs : int
        Epochs of the run.

    Returns
    -------
    list of int
        For each fraction ``f``, the first epoch ``e`` with ``e >= f * epochs`` (at least 1); fractions
        that round to the same epoch halve it twice.

    Examples
    --------
    >>> milestone_epochs([0.2, 0.4], 10), milestone_epochs([0.75, 0.8], 250), milestone_epochs([0.7], 10)
    ([2, 4], [188, 200], [7])
    """
    return [max(1, math.ceil(f * epochs - 1e-9)) for f in fractions]


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, tc: TrainingConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch scheduler of ``tc``: halving at ``tc.lr_milestones`` when given, else poly decay.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its groups' ``lr`` (and ``initial_lr``, if set) are the base rate.
    tc : TrainingConfig
        ``epochs``, ``lr_milestones`` and ``poly_power``.

    Returns
    -------
    torch.optim.lr_scheduler.LRScheduler
        Call ``step()`` after each epoch; ``get_last_lr()`` is the coming epoch's rate.
    """
    if tc.lr_milestones:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestone_epochs(tc.lr_milestones, tc.epochs), gamma=0.5
        )
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=tc.epochs, power=tc.poly_power)
