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
        self.present = np.flatnonzero(counts)
        self._starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return len(self.indices)

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
