"""Exceptions the CLI reports in one line: bad user input (exit status 2) and a diverged training run (1)."""

from __future__ import annotations

__all__ = ["InputError", "TrainingDiverged"]


class InputError(ValueError):
    """Bad user input (file, image or argument): the message says what, where and what to do."""


class TrainingDiverged(RuntimeError):
    """A step's loss, or an epoch's weights, were not finite; the run stopped before that epoch's checkpoint."""
