"""Choosing training voxels: uniform in the brain mask, class-balanced, or from capped per-class pools."""

from __future__ import annotations

import numpy as np

from brainseg.errors import InputError

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
        InputError
            If ``mode`` is unknown (a ``ValueError``; it names ``training.sampling``).

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
        raise InputError(f"training.sampling must be one of {SAMPLING_MODES}, got {mode!r}")

    def sample_pool(self, n: int, rng: np.random.Generator, pool_sizes: np.ndarray) -> np.ndarray:
        """Draw ``n`` voxels as from a pool of ``pool_sizes[c]`` voxels of each class ``c``, every member equally likely.

        A pool member is drawn uniformly (its class ``c`` has probability ``pool_sizes[c] /
        sum(pool_sizes)``), then a voxel of class ``c`` uniformly: the pool is in effect redrawn
        for every example, so the class proportions are the pool's while all voxels of a class
        take part (a family's capped pools, e.g. DeepNAT's per-class caps).

        Parameters
        ----------
        n : int
            Voxels to draw.
        rng : numpy.random.Generator
        pool_sizes : ndarray of int, shape (K,)
            Pool members per class index; ``pool_sizes[c] <= counts[c]``, 0 for absent classes.

        Returns
        -------
        ndarray of int32, shape (n, 3)
            Voxel indices, drawn with replacement.

        Raises
        ------
        ValueError
            If the pool is empty, or names a class with more members than voxels.

        Examples
        --------
        >>> classes = np.array([[[0, 0, 0, 1, 1, 1, 1, 1, 1, 2]]])
        >>> sampler = VoxelSampler(classes, np.ones_like(classes, bool))
        >>> drawn = sampler.sample_pool(1000, np.random.default_rng(0), np.array([0, 2, 1]))
        >>> sorted(set(classes[tuple(drawn.T)].tolist()))
        [1, 2]
        """
        sizes = np.zeros(len(self.counts), np.int64)
        given = np.asarray(pool_sizes, np.int64)
        if (given < 0).any():
            raise ValueError(f"pool sizes must be >= 0, got {given.tolist()}")
        if (given[len(sizes) :] > 0).any():
            raise ValueError(f"pool sizes {given.tolist()} name classes absent from the sampled region")
        sizes[: min(len(given), len(sizes))] = given[: len(sizes)]
        if (sizes > self.counts).any() or sizes.sum() == 0:
            raise ValueError(
                f"pool sizes {sizes.tolist()} must be within the class counts {self.counts.tolist()}, not all 0"
            )
        cumulative = np.cumsum(sizes)
        member = rng.integers(int(cumulative[-1]), size=n)
        cls = np.searchsorted(cumulative, member, side="right")
        lo, hi = self._starts[cls], self._starts[cls + 1]
        return self._by_class[lo + (rng.random(n) * (hi - lo)).astype(np.int64)]

    def sample(self, n: int, rng: np.random.Generator, mode: str = "uniform") -> np.ndarray:
        """Draw ``n`` voxel indices, shape (n, 3), int32, with replacement.

        Parameters
        ----------
        n : int
            Voxels to draw.
        rng : numpy.random.Generator
            The random source.
        mode : {'uniform', 'balanced', 'mixed'}
            ``'uniform'``: uniformly in the sampled region; ``'balanced'``: a class uniformly among those
            present, then one of its voxels uniformly; ``'mixed'``: ``n // 2`` uniform draws followed by
            ``n - n // 2`` balanced ones (in that order, not shuffled).

        Returns
        -------
        ndarray of int32, shape (n, 3)
            Voxel indices in the order of the ``classes`` array's axes.

        Raises
        ------
        InputError
            If ``mode`` is unknown (a ``ValueError``; it names ``training.sampling``).
        """
        if mode == "uniform":
            return self.indices[rng.integers(len(self.indices), size=n)]
        if mode == "balanced":
            cls = self.present[rng.integers(len(self.present), size=n)]
            lo, hi = self._starts[cls], self._starts[cls + 1]
            return self._by_class[lo + (rng.random(n) * (hi - lo)).astype(np.int64)]
        if mode == "mixed":
            half = n // 2
            return np.concatenate([self.sample(half, rng, "uniform"), self.sample(n - half, rng, "balanced")])
        raise InputError(f"training.sampling must be one of {SAMPLING_MODES}, got {mode!r}")
