"""Exceptions that mean "the user's input is wrong", reported by the CLI in one line."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input (file, image or argument): the message says what, where and what to do."""
