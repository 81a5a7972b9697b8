"""Wall-clock time per pipeline stage, for ``brainseg segment --timings`` and ``benchmarks/bench_segment.py``.

Code marks its stages with :func:`stage`; nothing is measured unless a :func:`record` block is
open, so the marks cost one check when timings are off. Stages may repeat (the dense predictor
marks every slice's branch maps and head): their times add up. A stage nested in another is
counted in both (e.g. ``registration`` inside ``predict``).

Examples
--------
>>> with record() as times:
...     with stage("load"):
...         pass
>>> sorted(times)
['load']
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["format_timings", "record", "stage"]

_open: list[dict[str, float]] = []


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the block's wall seconds to ``name`` in every open :func:`record` (none open: no cost)."""
    if not _open:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        for times in _open:
            times[name] = times.get(name, 0.0) + elapsed


@contextmanager
def record() -> Iterator[dict[str, float]]:
    """Collect stage seconds (a dict filled in the order stages first finish) while the block runs."""
    times: dict[str, float] = {}
    _open.append(times)
    try:
        yield times
    finally:
        _open.remove(times)


def format_timings(times: dict[str, float]) -> str:
    """One line, ``name 1.2 s, ...`` in recorded order.

    Examples
    --------
    >>> format_timings({"load": 0.51, "head": 12.0})
    'load 0.5 s, head 12.0 s'
    """
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
