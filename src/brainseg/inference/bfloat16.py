"""Whether this machine's CPU multiplies bfloat16 natively, where bfloat16 arithmetic pays.

MixNet's dense inference (:mod:`brainseg.inference.dense_mixnet`) runs in bfloat16 where it does, and
``training.precision: bfloat16`` is only worth asking for there (or on a GPU). The project's machines
differ from day to day: one reported AVX2 only, where bfloat16 ran through a slow emulation
(docs/speed.md, "Lower precision"), another AVX-512 BF16, where MixNet's convolutions ran twice as fast
(docs/mixnet.md, "bfloat16").
"""

from __future__ import annotations

import functools

import torch

__all__ = ["bfloat16_available"]


@functools.cache
def bfloat16_available() -> bool:
    """Whether this CPU has native bfloat16 products (AVX-512 BF16 or AMX tiles), as torch reports it.

    Returns
    -------
    bool
        False where torch cannot tell (its private ``torch.cpu`` probes are missing or fail): without
        native products oneDNN emulates bfloat16, slower than float32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:
        return False
