"""Networks, one module per paper, and the registry that builds them from a config."""

from __future__ import annotations

from torch import nn

from brainseg.config import ModelConfig
from brainseg.models.ganaye2018 import BaseNet

__all__ = ["BaseNet", "build_model", "count_parameters"]


def _basenet(cfg: ModelConfig) -> nn.Module:
    return BaseNet(
        num_classes=cfg.num_classes,
        scales=cfg.scales,
        branch_widths=cfg.branch_widths,
        mix_channels=cfg.mix_channels,
        fc_widths=cfg.fc_widths,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
    )


_MODELS = {"basenet": _basenet}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network a :class:`ModelConfig` describes.

    Raises
    ------
    ValueError
        If ``cfg.name`` is not a registered model.
    """
    try:
        factory = _MODELS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown model {cfg.name!r}; known: {sorted(_MODELS)}") from None
    return factory(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
