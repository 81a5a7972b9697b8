"""The sampling prior, corrected: logit adjustment from the sampler's class frequencies to the brain's.

A network trained with cross-entropy on voxels drawn with class frequencies ``q`` (class-balanced or
mixed sampling) estimates posteriors under the prior ``q``, not under the brain's class frequencies
``p``. By Bayes' rule the posterior under ``p`` is

    P_p(c | x)  ∝  P_q(c | x) · p_c / q_c,

i.e. the logits shift by ``log(p_c / q_c)`` (Saerens et al., Neural Computation 14:21–41, 2002;
"logit adjustment", Menon et al., ICLR 2021). brainseg applies ``strength · log(p_c / q_c)``:
strength 1 is the full Bayes correction, 0 none; a strength below 1 hedges against a network
whose scores are not calibrated posteriors (dropout, batch norm, early stopping), and is chosen on
validation data. ``p`` and ``q`` are recorded at training time (``class_prior.json`` in the model
folder): ``p`` is the mean over training cases of each class's share of the sampled region (brain
mask plus labelled voxels), ``q`` the sampler's exact expected frequencies
(:meth:`brainseg.sampling.samplers.VoxelSampler.class_frequencies`).

Deviations
----------
Not in Ganaye et al. (2018), who sample class-balanced and report no correction. Classes absent
from the training data (``p = q = 0``) get no shift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text

__all__ = ["PRIOR_FILE", "ClassPrior", "adjust_probabilities"]

#: File name in a model folder.
PRIOR_FILE = "class_prior.json"


@dataclass(frozen=True)
class ClassPrior:
    """Class frequencies of the brain and of the training sampler, and the correction's strength.

    Attributes
    ----------
    brain : ndarray of float64, shape (C,)
        Class frequencies in the brain (sums to 1).
    sampling : ndarray of float64, shape (C,)
        Class frequencies of the training samples (sums to 1).
    strength : float
        Multiplies ``log(brain / sampling)``; 0 means no correction.
    """

    brain: np.ndarray
    sampling: np.ndarray
    strength: float = 0.0

    def __post_init__(self) -> None:
        brain, sampling = np.asarray(self.brain, float), np.asarray(self.sampling, float)
        if brain.shape != sampling.shape or brain.ndim != 1:
            raise InputError(f"class prior: {brain.shape} brain and {sampling.shape} sampling frequencies")
        if (brain < 0).any() or (sampling < 0).any() or not np.isfinite([*brain, *sampling, self.strength]).all():
            raise InputError("class prior: frequencies must be finite and >= 0, the strength finite")
        object.__setattr__(self, "brain", brain)
        object.__setattr__(self, "sampling", sampling)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.brain)

    def logit_bias(self, strength: float | None = None) -> np.ndarray:
        """``strength · log(brain / sampling)`` per class (0 where either frequency is 0).

        Parameters
        ----------
        strength : float, optional
            Default :attr:`strength`.

        Returns
        -------
        ndarray of float32, shape (C,)

        Examples
        --------
        >>> prior = ClassPrior(np.array([0.9, 0.1]), np.array([0.5, 0.5]), 1.0)
        >>> [round(float(b), 4) for b in prior.logit_bias()]
        [0.5878, -1.6094]
        """
        strength = self.strength if strength is None else strength
        both = (self.brain > 0) & (self.sampling > 0)
        bias = np.zeros(self.num_classes)
        bias[both] = strength * np.log(self.brain[both] / self.sampling[both])
        return bias.astype(np.float32)

    def with_strength(self, strength: float) -> ClassPrior:
        """The same frequencies with another strength.

        Parameters
        ----------
        strength : float
            The new :attr:`strength` (finite).

        Returns
        -------
        ClassPrior

        Raises
        ------
        InputError
            If ``strength`` is not finite.
        """
        return ClassPrior(self.brain, self.sampling, float(strength))

    def save(self, path: str | Path) -> Path:
        """Write JSON (atomically).

        Parameters
        ----------
        path : str or Path
            The file (``class_prior.json`` in a model folder); missing parent folders are created.

        Returns
        -------
        Path
            ``path``.
        """
        data = {"strength": self.strength, "brain": self.brain.tolist(), "sampling": self.sampling.tolist()}
        return atomic_write_text(path, json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClassPrior:
        """Read what :meth:`save` wrote.

        Parameters
        ----------
        path : str or Path
            A file written by :meth:`save`.

        Returns
        -------
        ClassPrior

        Raises
        ------
        InputError
            If the file is missing, unreadable or not such a JSON (or its frequencies are invalid).
        """
        try:
            data = json.loads(Path(path).read_text())
            return cls(np.array(data["brain"], float), np.array(data["sampling"], float), float(data["strength"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not a class prior ({type(err).__name__}); copy the model folder again") from None


def adjust_probabilities(probabilities: np.ndarray, bias: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shift the logits behind probabilities by ``bias`` and renormalise: ``p · exp(bias) / Σ``.

    Parameters
    ----------
    probabilities : ndarray of float, classes along ``axis``
        Softmax outputs.
    bias : ndarray, shape (C,)
        Logit shift per class (:meth:`ClassPrior.logit_bias`).
    axis : int
        The class axis.

    Returns
    -------
    ndarray of float32, same shape

    Examples
    --------
    A two-class problem sampled 50/50 whose true frequencies are 90/10: the
    network's 0.3 / 0.7 becomes 0.3·1.8 / 0.7·0.2 = 0.54 / 0.14, renormalised.

    >>> bias = ClassPrior(np.array([0.9, 0.1]), np.array([0.5, 0.5]), 1.0).logit_bias()
    >>> [round(float(p), 4) for p in adjust_probabilities(np.array([0.3, 0.7]), bias)]
    [0.7941, 0.2059]
    """
    shape = [1] * probabilities.ndim
    shape[axis] = -1
    weighted = probabilities.astype(np.float32) * np.exp(bias.astype(np.float32)).reshape(shape)
    return weighted / np.maximum(weighted.sum(axis=axis, keepdims=True), np.float32(1e-30))
