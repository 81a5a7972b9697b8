"""Networks, one module per paper, and the registry that builds them from a config."""

from __future__ import annotations

from torch import nn

from brainseg.config import AnyModelConfig
from brainseg.models.ganaye2018 import BaseNet, GanayeNet

__all__ = ["BaseNet", "GanayeNet", "build_model", "count_parameters"]


def build_model(cfg: AnyModelConfig) -> nn.Module:
    """Build the network a model configuration describes, through its family (:mod:`brainseg.families`).

    Raises
    ------
    ValueError
        If ``cfg.name`` is not a registered model.
    """
    from brainseg.families import family_of  # the families import the networks of this package

    return family_of(cfg).build_network(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
