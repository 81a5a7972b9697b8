"""Fully connected layers in int8 for the CPU: symmetric scales per row, int32 sums (``torch._int_mm``).

Dense inference (:func:`brainseg.inference.dense.predict_dense`) computes the default model's labels
with the first two fully connected layers of its head in int8 and every doubtful voxel again in
float32 (docs/speed.md, "Lower precision").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

__all__ = ["Int8Linear", "Int8Report", "int8_available"]


@dataclass
class Int8Report:
    """What a dense pass with the int8 head did, filled in by :func:`~brainseg.inference.dense.predict_dense`.

    Attributes
    ----------
    voxels : int
        Brain voxels labelled (0 when the pass ran in float32 throughout: probabilities asked for, no
        ``int8_margin``, or no int8 product on this machine).
    recomputed : int
        Of those, voxels whose two largest int8 logits lay less than the margin apart, computed again
        in float32.
    """

    voxels: int = 0
    recomputed: int = 0


@functools.cache
def int8_available() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU exactly (``torch._int_mm``, a private op).

    Returns
    -------
    bool
        False where the op is missing or fails, or gives a wrong product.
    """
    a = torch.arange(-60, 76, dtype=torch.int8)[:136].reshape(17, 8)
    b = torch.arange(64, dtype=torch.int8).reshape(8, 8) - 32
    try:
        product = torch._int_mm(a, b)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(product, (a.long() @ b.long()).int()))


class Int8Linear:
    """``x W^T + b`` for ``x >= 0`` with int8 operands and int32 sums (``torch._int_mm``).

    Symmetric quantisation, one scale per output row of ``W`` (fixed) and one per row of ``x``
    (computed per call from the row's maximum: a ReLU's outputs, so never negative):
    ``y = (q_x q_W^T) s_x s_W + b``. About 3 times faster than float32 on this project's CPU (AVX2) for
    the head's 576 x 512 layer, dequantisation included; the logits move by about 0.05.

    Parameters
    ----------
    weight : Tensor of float32, shape (out, in)
    bias : Tensor of float32, shape (out,)
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight_scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.weight_t = torch.round(weight / self.weight_scale[:, None]).to(torch.int8).T.contiguous()
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in)`` float32, non-negative -> ``(N, out)`` float32."""
        scale = x.amax(dim=1).clamp_min_(1e-12) / 127
        q = x.mul(1 / scale[:, None]).round_().to(torch.int8)
        return torch.addcmul(self.bias, torch._int_mm(q, self.weight_t).float(), scale[:, None] * self.weight_scale)
