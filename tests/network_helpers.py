"""Helpers shared by the tests that build small random networks (importable: pyproject puts tests/ on the path)."""

from __future__ import annotations

import torch

_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def randomise_batch_norm(network: torch.nn.Module, generator: torch.Generator, *, affine: bool = False) -> None:
    """Give every batch-norm layer non-trivial running statistics (and, with ``affine``, scale and shift).

    Fresh layers normalise by mean 0 and variance 1, which hides a dense predictor that skips or misplaces
    them. Per layer, in module order, draws mean ~ N(0, 0.3²) and variance ~ U(0.2, 2.2), then with ``affine``
    weight ~ U(0.5, 1.5) and bias ~ N(0, 0.2²), all from ``generator`` (so the draws are reproducible).
    """
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, _BATCH_NORMS):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
                if affine:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.2)
