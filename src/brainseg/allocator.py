"""Keep freed memory in the process, so that large short-lived arrays do not page-fault afresh.

Dense inference allocates and frees arrays of 10-30 MB per slice (the gathered cells, each fully
connected layer's outputs, the 3dBranch's chunks). glibc serves blocks that large with a fresh
``mmap`` and returns them to the system on ``free``, so every slice's first writes page-fault all
over again: measured on MICCAI 2012 subject 1000 (2 cores), that cost the default model's dense
inference about 2 s of 19 in float32, and made the int8 head (:meth:`brainseg.inference.dense.predict_dense`)
as slow as float32 (its element-wise quantisation passes are memory-bound). Raising glibc's
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps those blocks in the heap for reuse; with the
releases below, peak memory is unchanged (docs/speed.md).

:func:`brainseg.inference.dense.predict_dense` calls :func:`keep_freed_memory` before its loop over
the slices (after building any cached table on a model's first use, whose transient arrays of several
hundred MB are better unmapped: kept, they raised that first run's peak from 2.5 to 3.8 GB); the
setting then holds for the rest of the process. :func:`release_freed_memory` hands what is kept back
to the system: the segmentation pipeline calls it after deepbet's skull-stripping check (whose
transient arrays would otherwise stay in the process through the next scan's dense inference), after
building a table, after the 3dBranch's chunks, and before the probabilities' class-by-class copies.
"""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["keep_freed_memory", "release_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # glibc with mallopt and malloc_trim typed, loaded once; None elsewhere (not Linux, or musl)
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Ask glibc's ``malloc`` to keep blocks up to ``threshold`` bytes in the heap when freed.

    Parameters
    ----------
    threshold : int
        Bytes: blocks smaller than this come from the heap instead of their own mapping, and freed
        memory at the heap's top is returned to the system only beyond it (``mallopt``'s
        ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``).

    Returns
    -------
    bool
        True when glibc took both settings; False elsewhere (macOS, Windows, musl), where nothing
        changes.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))


def release_freed_memory() -> bool:
    """Return the heap's free memory to the system now (glibc's ``malloc_trim(0)``).

    Returns
    -------
    bool
        True when glibc released some memory; False when it had none to release, or elsewhere
        (macOS, Windows, musl).
    """
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
