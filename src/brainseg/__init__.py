"""brainseg: brain MRI segmentation with spatially aware convolutional networks.

The main entry points are :func:`segment` (files in, label maps, volumes and
QC figures out) and :class:`brainseg.inference.predictor.Predictor` (arrays in
and out). Torch is imported only when they are used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["segment", "__version__"]


def segment(*args: Any, **kwargs: Any) -> Any:
    """Segment image files; see :func:`brainseg.inference.segment.segment`.

    Parameters
    ----------
    *args : Any
        Its positional arguments: ``images`` (image files, glob patterns, manifest ``.csv`` or ``.txt``
        lists) and ``output_dir``.
    **kwargs : Any
        Its keyword arguments (``model``, ``probabilities``, ``skull_strip``, ``overwrite``, ...).

    Returns
    -------
    list of brainseg.inference.batch.CaseResult
        One per input, in order.

    Raises
    ------
    InputError
        As :func:`brainseg.inference.segment.segment`: on bad arguments, an unusable model or output
        folder, and on a failed case when not ``keep_going`` (by default, a single input).
    """
    from brainseg.inference.segment import segment as _segment

    return _segment(*args, **kwargs)
