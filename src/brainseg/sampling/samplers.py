"""Choosing training voxels: uniform in the brain mask, or class-balanced."""

from __future__ import annotations

import numpy as np

__all__ = ["VoxelSampler", "SAMPLING_MODES"]

SAMPLING_MODES = ("uniform", "balanced", "mixed")


class VoxelSampler:
    """Draw training voxels of one case.

    Parameters
    ----------
    classes : ndarray of int, shape (S, A, B)
        Class index per voxel, in the patch plane's order.
    mask : ndarray of bool, shape (S, A, B)
        Voxels that may be drawn (the brain mask; labelled voxels are added).

    Notes
    -----
    ``'uniform'`` draws voxels uniformly in the mask. ``'balanced'`` draws a
    class uniformly among the classes present, then a voxel of that class.
    ``'mixed'`` draws half of each batch each way.
    """

    def __init__(self, classes: np.ndarray, mask: np.ndarray) -> None:
        if classes.shape != mask.shape:
            raise ValueError(f"classes shape {classes.shape} != mask shape {mask.shape}")
        region = mask | (classes > 0)
        self.indices = np.argwhere(region).astype(np.int32)  # (N, 3)
        voxel_classes = classes[region]
        order = np.argsort(voxel_classes, kind="stable")
        self._by_class = self.indices[order]
        counts = np.bincount(voxel_classes, minlength=1)
        self.counts = counts
        self.present = np.flatnonzero(counts)
        self._starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return len(self.indices)

    def class_frequencies(self, num_classes: int, mode: str = "uniform") -> np.ndarray:
        """Expected class frequencies of the voxels :meth:`sample` draws (exact, not estimated).

        Parameters
        ----------
        num_classes : int
            Length of the result.
        mode : {'uniform', 'balanced', 'mixed'}
            The sampling mode.

        Returns
        -------
        ndarray of float64, shape (num_classes,)
            Sums to 1. ``'uniform'`` gives the classes' shares of the
            sampled region (the brain's frequencies), ``'balanced'`` 1/K for
            each of the K classes present, ``'mixed'`` their mean.

        Raises
        ------
        ValueError
            If ``mode`` is unknown.

        Examples
        --------
        >>> classes = np.array([[[0, 0, 0, 1, 1, 1, 1, 1, 1, 2]]])
        >>> VoxelSampler(classes, np.ones_like(classes, bool)).class_frequencies(3, "mixed").round(3).tolist()
        [0.317, 0.467, 0.217]
        """
        uniform = np.zeros(num_classes)
        uniform[: len(self.counts)] = self.counts / self.counts.sum()
        balanced = np.zeros(num_classes)
        balanced[self.present] = 1.0 / len(self.present)
        if mode == "uniform":
            return uniform
        if mode == "balanced":
            return balanced
        if mode == "mixed":
            return (uniform + balanced) / 2
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")

    def sample(self, n: int, rng: np.random.Generator, mode: str = "uniform") -> np.ndarray:
        """Draw ``n`` voxel indices, shape (n, 3), int32, with replacement."""
        if mode == "uniform":
            return self.indices[rng.integers(len(self.indices), size=n)]
        if mode == "balanced":
            cls = self.present[rng.integers(len(self.present), size=n)]
            lo, hi = self._starts[cls], self._starts[cls + 1]
            return self._by_class[lo + (rng.random(n) * (hi - lo)).astype(np.int64)]
        if mode == "mixed":
            half = n // 2
            return np.concatenate([self.sample(half, rng, "uniform"), self.sample(n - half, rng, "balanced")])
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
