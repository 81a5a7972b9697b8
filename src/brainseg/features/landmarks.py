"""Distances to a regular grid of landmarks (the DistBranch input of Ganaye et al. 2018, section 2.2).

The landmarks split each axis of the volume into ``n`` equal bins and sit at
the bin centres, giving ``n**3`` landmarks (``n = 7`` in the paper). Each
voxel is described by its Euclidean distances in mm to every landmark,
optionally squashed by a radial basis function ``exp(-alpha d**2)``
(paper section 3.3, ``alpha = 0.01``). Landmarks are ordered with the last
array axis varying fastest, so ``distances.reshape(N, n, n, n)`` gives the
3-D (and ``n`` images of ``n x n``) representations the paper compares.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["landmark_grid", "voxel_centres_mm", "landmark_distances", "rbf"]


def landmark_grid(shape: tuple[int, int, int], affine: np.ndarray, n: int = 7) -> np.ndarray:
    """World coordinates of the ``n**3`` landmarks of a volume.

    Parameters
    ----------
    shape : tuple of 3 int
        Volume shape ``(D, H, W)``.
    affine : ndarray of float, shape (4, 4)
        Voxel index -> world mm.
    n : int
        Landmarks per axis (>= 1).

    Returns
    -------
    ndarray of float64, shape (n**3, 3)
        Landmark positions in mm; along axis ``a`` the voxel index of the
        ``k``-th landmark is ``(k + 0.5) * shape[a] / n - 0.5``.

    Raises
    ------
    ValueError
        If ``n < 1`` or ``shape`` is not 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> landmark_grid((4, 4, 4), np.eye(4), n=1)
    array([[1.5, 1.5, 1.5]])
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(shape) != 3:
        raise ValueError(f"shape must be 3-D, got {shape}")
    axes = [(np.arange(n) + 0.5) * size / n - 0.5 for size in shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def voxel_centres_mm(indices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of voxel indices ``(N, 3)`` -> ``(N, 3)`` float64.

    Parameters
    ----------
    indices : ndarray, shape (N, 3)
        Voxel indices (integer or fractional).
    affine : ndarray of float, shape (4, 4)
        Voxel index -> world mm.

    Returns
    -------
    ndarray of float64, shape (N, 3)
        Positions in mm.
    """
    indices = np.asarray(indices, dtype=np.float64).reshape(-1, 3)
    return indices @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def landmark_distances(points_mm: np.ndarray, landmarks_mm: np.ndarray) -> np.ndarray:
    """Euclidean distances from points to landmarks.

    Parameters
    ----------
    points_mm : ndarray of float, shape (N, 3)
        Points (e.g. patch centres) in mm.
    landmarks_mm : ndarray of float, shape (L, 3)
        Landmarks in mm.

    Returns
    -------
    ndarray of float32, shape (N, L)
        Distances in mm.

    Examples
    --------
    >>> import numpy as np
    >>> landmark_distances(np.zeros((1, 3)), np.array([[3.0, 4.0, 0.0]]))
    array([[5.]], dtype=float32)
    """
    p = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(landmarks_mm, dtype=np.float64).reshape(-1, 3)
    return cdist(p, q).astype(np.float32)


def rbf(distances_mm: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    """Radial basis normalisation ``exp(-alpha d**2)`` (paper section 3.3; alpha in mm^-2).

    Parameters
    ----------
    distances_mm : ndarray of float, any shape
        Distances in mm (e.g. :func:`landmark_distances`' (N, L) float32).
    alpha : float
        Decay rate in mm^-2 (0.01 in the paper).

    Returns
    -------
    ndarray, shape of ``distances_mm``
        Values in (0, 1]; float32 for float32 distances, else float64.

    Examples
    --------
    >>> float(rbf(np.array(10.0)))  # exp(-1)
    0.36787944117144233
    """
    return np.exp(-alpha * np.asarray(distances_mm) ** 2)
