"""Networks, one module per paper, and the registry that builds them from a config."""

from __future__ import annotations

from torch import nn

from brainseg.config import AnyModelConfig
from brainseg.models.ganaye2018 import BaseNet, GanayeNet

__all__ = ["BaseNet", "GanayeNet", "build_model", "count_parameters"]


def build_model(cfg: AnyModelConfig) -> nn.Module:
    """Build the network a model configuration describes, through its family (:mod:`brainseg.families`).

    Parameters
    ----------
    cfg : AnyModelConfig
        A model configuration (:mod:`brainseg.config`); ``cfg.name`` selects the family.

    Returns
    -------
    nn.Module
        The untrained network of the family (e.g. :class:`GanayeNet`, a DeepNAT, a de Brébisson network or a
        MixNet of several views), ``cfg.num_classes`` outputs.

    Raises
    ------
    ValueError
        If ``cfg.name`` is not a registered model.
    InputError
        From the DeepNAT family, if its hierarchy is asked for fewer than 3 classes.
    """
    from brainseg.families import family_of  # the families import the networks of this package

    return family_of(cfg).build_network(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    Parameters
    ----------
    model : nn.Module
        Any network.

    Returns
    -------
    int
        Elements of the parameters with ``requires_grad`` set (a parameter shared by several submodules counts
        once).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
