"""Networks, one module per paper, and the registry that builds them from a config."""

from __future__ import annotations

from torch import nn

from brainseg.config import ModelConfig
from brainseg.models.ganaye2018 import BaseNet, DistBranch, GanayeNet

__all__ = ["BaseNet", "GanayeNet", "build_model", "count_parameters"]


def _ganaye2018(cfg: ModelConfig) -> nn.Module:
    dist = None
    if cfg.landmarks > 0:
        dist = DistBranch(
            cfg.landmarks,
            cfg.distance_representation,
            conv=cfg.distance_conv,
            rbf=cfg.distance_rbf,
            filters=cfg.distance_filters,
            width=cfg.distance_width,
        )
    return GanayeNet(
        num_classes=cfg.num_classes,
        scales=cfg.scales,
        branch_widths=cfg.branch_widths,
        mix_channels=cfg.mix_channels,
        fc_widths=cfg.fc_widths,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        dist_branch=dist,
        prob_branch=cfg.prob_branch,
        branch_3d_widths=cfg.branch_3d_widths or None,
        auxiliary=cfg.auxiliary,
    )


# 'basenet' and 'ganaye2018' build the same network; the branches are switched on in the config.
_MODELS = {"basenet": _ganaye2018, "ganaye2018": _ganaye2018}


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
