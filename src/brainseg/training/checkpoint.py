"""Training checkpoints: weights, optimiser state and progress, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
    """Read a checkpoint with ``torch.load(weights_only=True)``."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
