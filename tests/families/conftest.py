"""Shared set-up of the family tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every family test runs on one torch thread (:func:`tests.conftest.one_torch_thread`)."""
    yield
