"""When a training run stops, and which epoch's weights its model folder keeps.

Early stopping on the validation mean Dice (``training.stop_min_gain`` over ``training.stop_epochs``)
and ``training.keep_best``: :func:`brainseg.training.trainer.train` validates each epoch's network on
whole held-out cases, writes the model folder at every epoch until the first validation and then at
each best one, and stops when the validation Dice has stalled.
"""

from __future__ import annotations

__all__ = ["is_best", "should_stop", "weights_epoch"]


def should_stop(history: list[dict], min_gain: float, window: int) -> bool:
    """Whether the last validation gained less than ``min_gain`` over the best one ``window`` epochs before.

    Parameters
    ----------
    history : list of dict
        Epoch records (``epoch``, and ``val_mean_dice`` where validated), oldest first.
    min_gain : float
        Mean Dice gain required to go on; 0 never stops.
    window : int
        Epochs back: the last validation is compared with the best validation
        at epoch ``<= last epoch - window``.

    Returns
    -------
    bool
        False when ``min_gain`` is 0, the last epoch was not validated, or no
        validation lies far enough back.
    """
    if min_gain <= 0 or not history or "val_mean_dice" not in history[-1]:
        return False
    last = history[-1]
    earlier = [
        h["val_mean_dice"] for h in history[:-1] if "val_mean_dice" in h and h["epoch"] <= last["epoch"] - window
    ]
    return bool(earlier) and last["val_mean_dice"] - max(earlier) < min_gain


def is_best(history: list[dict]) -> bool:
    """Whether the last epoch's validation is at least as good as every earlier one.

    Parameters
    ----------
    history : list of dict
        Epoch records (``epoch``, and ``val_mean_dice`` where validated), oldest first; not empty.

    Returns
    -------
    bool
        For an epoch that was not validated: True while no epoch has been (the folder is written at
        every epoch until the first validation).
    """
    scores = [h["val_mean_dice"] for h in history if "val_mean_dice" in h]
    if "val_mean_dice" not in history[-1]:
        return not scores
    return history[-1]["val_mean_dice"] >= max(scores)


def weights_epoch(history: list[dict], keep_best: bool) -> int:
    """The epoch whose weights the model folder holds.

    The last epoch, or with ``keep_best`` the latest of the best validations (the folder is written at
    every epoch until the first validation, then at each best one).

    Parameters
    ----------
    history : list of dict
        Epoch records (``epoch``, and ``val_mean_dice`` where validated), oldest first.
    keep_best : bool
        ``training.keep_best``.

    Returns
    -------
    int
        An ``epoch`` of ``history`` (0 when it is empty).
    """
    scored = [h for h in history if "val_mean_dice" in h] if keep_best else []
    if scored:
        return max(reversed(scored), key=lambda h: h["val_mean_dice"])["epoch"]
    return len(history) and history[-1]["epoch"]
