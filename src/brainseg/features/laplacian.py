"""The graph Laplacian of a brain mask and its smallest eigenvectors (Wachinger et al. 2018, Eq. 4-5).

DeepNAT's spectral coordinates (:mod:`brainseg.features.coordinates`) are the eigenvectors of the three
smallest non-zero eigenvalues of ``L = D - W``, the Laplacian of the mask's 6-neighbour voxel graph. This
module builds ``L`` and solves for those eigenvectors; :mod:`brainseg.features.coordinates` orders, signs
and scales them.

The eigenproblem is solved by LOBPCG (Knyazev 2001), preconditioned by one
V-cycle of plain-aggregation algebraic multigrid (:mod:`pyamg`,
``smooth=None``: its setup at 1 mm costs a tenth of smoothed aggregation's).
The block holds the three wanted vectors and a guard vector. It is kept
orthogonal to the constant vector, the eigenvector of eigenvalue 0.
Converged columns are soft-locked. The Rayleigh-Ritz step drops nearly
dependent directions. The solve stops when the wanted residual norms fall
below 5 % of the smallest Ritz value. On a real brain mask, the result is then
within 0.005 of a 50 times tighter solve. On a box whose third and fourth
eigenvalues are within 15 %, it is within 0.02. (On one real mask,
:func:`scipy.sparse.linalg.lobpcg` broke down: its residuals jumped back up.)
Up to 50,000 voxels, the solve starts from random vectors. A larger
solve starts from the solution on a grid twice as coarse (:func:`block_mask`,
:func:`coarse_to_fine`), so 1 mm starts from 2 mm, which starts from 4 mm.
Graphs of at most 1,000 nodes are solved densely.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.linalg import eigh

__all__ = ["block_mask", "coarse_to_fine", "eigenvector_images", "largest_component", "laplacian"]

logger = logging.getLogger(__name__)

_DENSE_MAX_NODES = 1_000  # graphs up to this size: dense eigh
_CASCADE_MIN_NODES = 50_000  # larger graphs start LOBPCG from the solution on a grid twice as coarse
_RELATIVE_TOL = 5e-2  # LOBPCG residual tolerance, relative to the smallest Ritz value
_MAX_ITER = 60
_BLOCK = 4  # LOBPCG block: the three wanted eigenvectors and a guard vector
_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def laplacian(mask: np.ndarray) -> sp.csr_matrix:
    """Graph Laplacian ``L = D - W`` of a mask's 6-neighbour voxel graph (paper Eq. 4).

    Parameters
    ----------
    mask : ndarray of bool, shape (D, H, W)
        Nodes are the mask voxels, numbered in C order (as ``np.flatnonzero(mask)``).

    Returns
    -------
    scipy.sparse.csr_matrix of float64, shape (N, N)
        ``L[i, j] = -1`` for face-adjacent voxels ``i != j``, ``L[i, i]`` = the
        number of face neighbours of voxel ``i`` in the mask (0 to 6); ``N = mask.sum()``.

    Raises
    ------
    ValueError
        If `mask` is not 3-D.

    Examples
    --------
    >>> laplacian(np.ones((2, 2, 1), bool)).toarray()
    array([[ 2., -1., -1.,  0.],
           [-1.,  2.,  0., -1.],
           [-1.,  0.,  2., -1.],
           [ 0., -1., -1.,  2.]])
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (D, H, W), got shape {mask.shape}")
    n = int(mask.sum())
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(n)
    rows, cols = [], []
    for axis in range(3):
        lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        both = mask[lo] & mask[hi]
        rows.append(index[lo][both])
        cols.append(index[hi][both])
    r, c = np.concatenate(rows), np.concatenate(cols)
    adjacency = sp.coo_matrix((np.ones(2 * r.size), (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return (sp.diags(degree) - adjacency).tocsr()


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (D, H, W)
        Any mask.

    Returns
    -------
    ndarray of bool, shape (D, H, W)
        The component with the most voxels (the first in label order on a tie); `mask` itself when it
        has at most one component.
    """
    labels, count = ndimage.label(mask, structure=_SIX_NEIGHBOURS)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def block_mask(mask: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """A coarse mask: blocks of ``factors`` voxels, brain where at least half of a block's voxels are.

    Parameters
    ----------
    mask : ndarray of bool, shape (D, H, W)
        Fine mask.
    factors : tuple of 3 int
        Block size ``f_a >= 1`` in voxels along each array axis.

    Returns
    -------
    ndarray of bool, shape (ceil(D / f_0), ceil(H / f_1), ceil(W / f_2))
        Blocks start at index 0; the far end is zero-padded to whole blocks (padding counts as not brain).
    """
    padded = np.pad(mask, [(0, -size % f) for size, f in zip(mask.shape, factors)])
    c = [size // f for size, f in zip(padded.shape, factors)]
    blocks = padded.reshape(c[0], factors[0], c[1], factors[1], c[2], factors[2])
    return blocks.mean(axis=(1, 3, 5)) >= 0.5


def coarse_to_fine(images: np.ndarray, indices: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Trilinear values of coarse images at fine voxels, by :func:`block_mask`'s grouping.

    Parameters
    ----------
    images : ndarray of float, shape (K, d, h, w)
        Images on the coarse grid.
    indices : ndarray of int or float, shape (N, 3)
        Fine voxel indices; fine index ``i`` sits at coarse index ``(i - (f_a - 1) / 2) / f_a``.
    factors : tuple of 3 int
        The block sizes of :func:`block_mask`.

    Returns
    -------
    ndarray of float64, shape (N, K)
        Values beyond the coarse grid's outermost centres repeat the edge (``mode='nearest'``).
    """
    f = np.asarray(factors, dtype=np.float64)
    at = ((indices - (f - 1) / 2) / f).T
    return np.stack([ndimage.map_coordinates(im, at, order=1, mode="nearest") for im in images], axis=1)


def eigenvector_images(
    mask: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, bounded_to: np.ndarray | None = None
) -> np.ndarray:
    """The Laplacian eigenvectors of the 2nd to 5th smallest eigenvalues of a mask's largest component, as images.

    Parameters
    ----------
    mask : ndarray of bool, shape (D, H, W)
        Brain mask; only its largest 6-connected component (:func:`largest_component`) enters the
        eigenproblem (on two components, the first non-constant eigenvector would mark the component).
    spacing : ndarray of float, shape (3,)
        Voxel spacing in mm; sets the nearest-voxel extension (and the coarse grid of a cascaded solve).
    rng : numpy.random.Generator
        Draws LOBPCG's starting block; results for different generators agree to the solver tolerance.
    bounded_to : ndarray of bool, shape (D, H, W), optional
        Extend only within this mask's bounding box (default: the whole grid).

    Returns
    -------
    ndarray of float64, shape (K, D, H, W)
        ``K = 4`` (fewer when the component has under 5 voxels): the three wanted unit-norm eigenvectors,
        in increasing eigenvalue, then LOBPCG's guard vector. Voxels outside the component (in the box)
        take the value of the nearest component voxel in mm; elsewhere 0. Signs are arbitrary.

    Raises
    ------
    ValueError
        If the largest component has fewer than 4 voxels.
    """
    component = largest_component(mask)
    vectors = _eigenvectors(component, spacing, rng)
    images = np.zeros((vectors.shape[1], *mask.shape), dtype=np.float64)
    images[:, component] = vectors.T
    if bounded_to is not None:
        if (bounded_to <= component).all():
            return images
        box = ndimage.find_objects(bounded_to.astype(np.int8))[0]
    else:
        box = (slice(None),) * 3
    nearest = ndimage.distance_transform_edt(
        ~component[box], sampling=spacing, return_distances=False, return_indices=True
    )
    images[(slice(None), *box)] = images[(slice(None), *box)][(slice(None), *nearest)]
    return images


def _eigenvectors(component: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Eigenvectors ``(N, 4)`` of the 2nd-5th smallest eigenvalues of a connected mask's Laplacian.

    The 4th column is LOBPCG's guard vector, kept as the start of finer solves
    (fewer columns when ``N < 5``).
    """
    n = int(component.sum())
    if n < 4:
        raise ValueError(
            f"the largest connected component of the mask has {n} voxel(s) on the solve grid; "
            "at least 4 are needed for three non-constant eigenvectors (pass a larger mask or grid_mm=None)"
        )
    lap = laplacian(component)
    if n <= _DENSE_MAX_NODES:
        return eigh(lap.toarray())[1][:, 1 : 1 + _BLOCK]
    if n > _CASCADE_MIN_NODES:
        coarse = eigenvector_images(block_mask(component, (2, 2, 2)), 2 * spacing, rng)  # its largest component's
        start = coarse_to_fine(coarse, np.argwhere(component), (2, 2, 2))
    else:
        start = rng.standard_normal((n, _BLOCK))
    start = start / np.maximum(np.linalg.norm(start, axis=0), 1e-300)
    start += 1e-3 / np.sqrt(n) * rng.standard_normal(start.shape)  # keeps the start block full rank
    return _lobpcg(lap, start)


def _lobpcg(lap: sp.csr_matrix, start: np.ndarray) -> np.ndarray:
    """Smallest eigenvectors ``(N, K)`` of a connected graph's Laplacian, orthogonal to the constant.

    LOBPCG (Knyazev 2001) preconditioned by one V-cycle of plain-aggregation
    AMG per residual. Every block stays orthogonal to the constant vector (the
    eigenvector of eigenvalue 0): a Laplacian maps that subspace to itself, and
    the preconditioned residuals are projected back onto it. The stopping test
    is on all but the last (guard) column: residual norm below
    ``_RELATIVE_TOL`` times the smallest Ritz value. Columns that pass it are
    soft-locked (no new search direction).
    """
    import pyamg

    n, k = start.shape
    amg = pyamg.smoothed_aggregation_solver(lap, B=np.ones((n, 1)), symmetry="hermitian", smooth=None)
    precondition = amg.aspreconditioner()
    start = start - start.mean(axis=0)
    lap_start = lap @ start
    coefficients, theta = _rayleigh_ritz([start], [lap_start], k)
    x, ax = _combine([start], coefficients), _combine([lap_start], coefficients)
    blocks: list[np.ndarray] = []
    lap_blocks: list[np.ndarray] = []
    for iteration in range(1, _MAX_ITER + 1):
        r = ax - x * theta
        residuals = np.sqrt(np.einsum("ij,ij->j", r, r))
        tol = _RELATIVE_TOL * theta[0]
        if residuals[: k - 1].max() <= tol:
            break
        active = residuals > tol
        active[-1] = True  # the guard column is never locked
        w = precondition @ r[:, active]
        w -= w.mean(axis=0)
        w -= w.mean(axis=0)  # twice: AMG adds a large constant, whose removal leaves a rounding residue
        blocks = [x - x.mean(axis=0), w, *blocks[1:2]]
        lap_blocks = [ax, lap @ w, *lap_blocks[1:2]]  # L annihilates the constant: L(x - mean) = L x
        coefficients, theta = _rayleigh_ritz(blocks, lap_blocks, k)
        x, ax = _combine(blocks, coefficients), _combine(lap_blocks, coefficients)
        # the search direction P: the part of the update outside the old X
        p, ap = _combine(blocks[1:], coefficients[k:]), _combine(lap_blocks[1:], coefficients[k:])
        blocks, lap_blocks = [x, p], [ax, ap]
    else:
        logger.warning("LOBPCG stopped after %d iterations at residuals %s (tolerance %.2e)", _MAX_ITER, residuals, tol)
    logger.debug("LOBPCG on %d nodes: %d iterations, eigenvalues %s", n, iteration, theta)
    return np.ascontiguousarray(x)


def _rayleigh_ritz(blocks: list[np.ndarray], lap_blocks: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``(M, k)`` of the ``k`` lowest Ritz vectors in a basis given as column blocks, and their values.

    The basis (blocks of ``N`` rows, ``M`` columns in all) is orthonormalised
    through the eigendecomposition of its Gram matrix, dropping directions below
    1e-6 of the largest (nearly dependent columns): squaring the condition number
    then costs at most 1e-9 relative error in the projected matrix. `lap_blocks` are the Laplacian times the blocks.
    """
    gram = np.block([[a.T @ b for b in blocks] for a in blocks])
    norms = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    d, u = eigh(gram / np.outer(norms, norms))
    keep = d > 1e-6 * d.max()
    to_orthonormal = u[:, keep] / np.sqrt(d[keep]) / norms[:, None]
    h = to_orthonormal.T @ np.block([[a.T @ b for b in lap_blocks] for a in blocks]) @ to_orthonormal
    theta, c = eigh((h + h.T) / 2)
    return to_orthonormal @ c[:, :k], theta[:k]


def _combine(blocks: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    """``[B_1 B_2 ...] @ coefficients`` without stacking the tall blocks ``(N, m_i)``."""
    bounds = np.cumsum([0] + [b.shape[1] for b in blocks])
    # BLAS is far faster on the wide product ``c.T @ b.T`` than on the tall ``b @ c``
    terms = [(coefficients[lo:hi].T @ b.T).T for b, lo, hi in zip(blocks, bounds[:-1], bounds[1:])]
    return terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])
