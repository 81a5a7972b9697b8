"""Tests of brainseg.training.schedulers.poly_learning_rate."""

from __future__ import annotations

import pytest

from brainseg.training.schedulers import poly_learning_rate


@pytest.mark.parametrize(
    ("base_lr", "epoch", "epochs", "power", "expected"),
    [
        (0.01, 0, 10, 0.9, 0.01),
        (1.0, 5, 10, 1.0, 0.5),
        (1.0, 5, 10, 2.0, 0.25),
        (0.1, 3, 4, 1.0, 0.025),
        (1.0, 9, 10, 0.9, 0.1**0.9),
        (2.0, 1, 2, 0.5, 2.0 * 0.5**0.5),
    ],
)
def test_poly_values(base_lr, epoch, epochs, power, expected):
    assert poly_learning_rate(base_lr, epoch, epochs, power) == pytest.approx(expected)


def test_poly_decreases_and_stays_positive():
    values = [poly_learning_rate(1e-3, e, 20) for e in range(20)]
    assert values[0] == 1e-3
    assert all(a > b > 0 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("epoch", [-1, 10, 11])
def test_poly_epoch_out_of_range(epoch):
    with pytest.raises(ValueError, match="epoch"):
        poly_learning_rate(1.0, epoch, 10)
