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
    """Add the block's wall seconds to ``name`` in every open :func:`record` (none open: no cost).

    Parameters
    ----------
    name : str
        The stage; its seconds add to those of earlier blocks of the same name.

    Yields
    ------
    None
        Once, for the block's duration; the seconds are added also when the block raises.
    """
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
    """Collect stage seconds (a dict filled in the order stages first finish) while the block runs.

    Yields
    ------
    dict of str to float
        Stage name -> wall seconds, filled while the block runs (and complete after it).
    """
    times: dict[str, float] = {}
    _open.append(times)
    try:
        yield times
    finally:
        _open.remove(times)


def format_timings(times: dict[str, float]) -> str:
    """One line, ``name 1.2 s, ...`` in recorded order.

    Parameters
    ----------
    times : dict of str to float
        Stage name -> seconds, as :func:`record` fills it.

    Returns
    -------
    str
        Each stage with its seconds to one decimal, comma-separated; empty for no stages.

    Examples
    --------
    >>> format_timings({"load": 0.51, "head": 12.0})
    'load 0.5 s, head 12.0 s'
    """
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
