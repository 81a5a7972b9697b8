"""Learning-rate policies."""

from __future__ import annotations

__all__ = ["poly_learning_rate"]


def poly_learning_rate(base_lr: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """The poly policy ``base_lr * (1 - epoch / epochs) ** power`` (Ganaye et al. 2018, section 3.2).

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    epoch : int
        Current epoch, 0-based.
    epochs : int
        Total number of epochs.
    power : float
        Exponent of the decay.

    Returns
    -------
    float

    Examples
    --------
    >>> poly_learning_rate(1e-3, 0, 10)
    0.001
    >>> round(poly_learning_rate(1.0, 5, 10, power=1.0), 3)
    0.5
    """
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    return base_lr * (1.0 - epoch / epochs) ** power
