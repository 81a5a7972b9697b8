"""glibc's allocator settings: taken on Linux with glibc, a no-op elsewhere."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest

from brainseg import allocator


@pytest.fixture(autouse=True)
def _fresh_libc():
    # _libc() is loaded once per process: each test sees its own platform and libc
    allocator._libc.cache_clear()
    yield
    allocator._libc.cache_clear()


def _glibc() -> bool:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.skipif(not _glibc(), reason="needs Linux with glibc")
def test_glibc_takes_the_settings_and_memory_still_works():
    assert allocator.keep_freed_memory(64 << 20) is True
    a = np.arange(5_000_000, dtype=np.float64)  # 40 MB: from the heap now, not its own mapping
    del a
    b = np.ones(5_000_000)
    assert b.sum() == 5_000_000
    allocator.release_freed_memory()  # returns whether glibc had memory to give back: either is fine
    assert allocator.keep_freed_memory() is True  # back to predict_dense's setting


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("libc must not be loaded"))
    assert allocator.keep_freed_memory() is False
    assert allocator.release_freed_memory() is False


def test_a_libc_without_mallopt_is_left_alone(monkeypatch):
    class Musl:  # no mallopt / malloc_trim attributes
        pass

    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: Musl())
    assert allocator.keep_freed_memory() is False
    assert allocator.release_freed_memory() is False
