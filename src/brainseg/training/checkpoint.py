"""Training checkpoints: weights, optimiser state and progress, loadable with ``weights_only=True``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file + rename).

    ``state`` may hold tensors, state dicts and plain Python values only, so
    that :func:`load_checkpoint` never needs to unpickle arbitrary objects.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain values only, no code runs.

    Raises
    ------
    InputError
        If the file is not such a checkpoint (a pickle of other objects, which
        is refused unexecuted, or a truncated or foreign file).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"{path}: not a brainseg training checkpoint ({first[:160]}); "
            "it was not loaded (brainseg never unpickles objects): delete it and train without --resume"
        ) from None
    if not isinstance(state, dict) or "network" not in state:
        raise InputError(f"{path}: not a brainseg training checkpoint; delete it and train without --resume")
    return state
