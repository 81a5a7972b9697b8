"""Gaussian filtering in a feature space on the permutohedral lattice (Adams et al. 2010).

A. Adams, J. Baek, M. A. Davis, "Fast high-dimensional filtering using the permutohedral
lattice", Computer Graphics Forum 29(2):753-762, 2010. doi:10.1111/j.1467-8659.2009.01645.x.

The dense CRF's appearance kernel (:mod:`brainseg.postprocessing.dense_crf`) sums, at every voxel
``i``, ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` over all voxels ``j``, with ``f`` the voxel's
features (position in mm and intensity, each divided by its kernel width). Done explicitly this is
quadratic in the voxels. The lattice does it in linear time: each feature vector is *splatted*
onto the ``d + 1`` vertices of the lattice simplex enclosing it (barycentric weights), the lattice
values are *blurred* with a ``[1/2, 1, 1/2]`` kernel along each of the lattice's ``d + 1``
directions (each vertex adds half of its two neighbours' values: two row gathers per direction), and each
voxel *slices* its value back from
its vertices.

The lattice's output approximates the Gaussian sum up to a constant factor, which depends on the
dimension only (the density of lattice points per unit feature volume). :class:`PermutohedralLattice`
measures that factor once per dimension, on a dense random point cloud against explicit sums, and
divides it out (:func:`lattice_gain`), so its :meth:`~PermutohedralLattice.filter` estimates the
sum itself; tests compare it with explicit sums on small volumes.

Values are sparse: each point carries values for a few channels only (a voxel's most likely
classes), given as ``(N, k)`` channel indices and values. The channels are filtered a chunk at a
time (16 by default): the lattice holds ``(M, 16)`` values for its ``M`` vertices, and each chunk
splats and slices only the values of its channels, so memory scales with ``N k + 16 M``, not
``N C``.

Deviations from Adams et al.: lattice vertices are found with a sort of packed integer keys
(:func:`torch.unique`), not a hash table; the filter is not normalised (the CRF needs the sum).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["GAINS", "LatticeFilter", "PermutohedralLattice", "lattice_gain"]


def _elevate(features: np.ndarray) -> np.ndarray:
    """Features ``(N, d)`` (already divided by their kernel widths) -> points ``(N, d + 1)`` on the hyperplane."""
    n, d = features.shape
    i = np.arange(d, dtype=np.float64)
    # Adams et al.'s scale: the lattice's blur then has unit standard deviation in feature units
    scaled = features * ((d + 1) * np.sqrt(2.0 / 3.0) / np.sqrt((i + 1) * (i + 2)))
    suffix = np.concatenate([np.cumsum(scaled[:, ::-1], axis=1)[:, ::-1], np.zeros((n, 1))], axis=1)
    elevated = np.empty((n, d + 1))
    elevated[:, 0] = suffix[:, 0]
    elevated[:, 1:] = suffix[:, 1:] - np.arange(1, d + 1) * scaled
    return elevated


_CHUNK = 1 << 18  # points per chunk of the lattice construction

#: :func:`lattice_gain` of each dimension as measured with its defaults (20,000 points, seed 0): a lattice of
#: these dimensions uses the figure instead of measuring it again (about 4 s per process at d = 4); a test
#: checks each against a fresh measurement.
GAINS = {1: 1.3805586372111216, 2: 1.1006846480538117, 3: 0.9332100894063851, 4: 0.8209020474894875}

#: Channels :meth:`PermutohedralLattice.filter` blurs together by default.
CHANNEL_CHUNK = 16


def _simplices(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enclosing simplex of each point (Adams et al. section 3.1): remainder-0 point, rank, barycentric weights.

    Returns int32 ``(n, d + 1)``, int8 ``(n, d + 1)`` and float32 ``(n, d + 1)``.
    """
    n, d = features.shape
    elevated = _elevate(features)
    down = np.floor(elevated / (d + 1)) * (d + 1)
    up = down + (d + 1)
    rem0 = np.where(up - elevated < elevated - down, up, down)
    total = np.rint(rem0.sum(axis=1) / (d + 1)).astype(np.int64)
    diff = elevated - rem0
    greater = diff[:, None, :] > diff[:, :, None]  # [n, i, j]: diff_j > diff_i
    equal_before = np.tril(np.ones((d + 1, d + 1), bool), -1)[None] & (diff[:, None, :] == diff[:, :, None])
    rank = (greater | equal_before).sum(axis=2)
    s = total[:, None]
    lower = (s > 0) & (rank >= d + 1 - s)
    raise_ = (s < 0) & (rank < -s)
    rem0 = rem0 - (d + 1) * lower + (d + 1) * raise_
    rank = rank + s - (d + 1) * lower + (d + 1) * raise_
    v = (elevated - rem0) / (d + 1)
    bary = np.zeros((n, d + 2))
    rows = np.arange(n)
    for i in range(d + 1):
        bary[rows, d - rank[:, i]] += v[:, i]
        bary[rows, d + 1 - rank[:, i]] -= v[:, i]
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return rem0.astype(np.int32), rank.astype(np.int8), bary[:, : d + 1].astype(np.float32)


class PermutohedralLattice:
    """The lattice of a fixed set of feature vectors, ready to filter values on them.

    Parameters
    ----------
    features : ndarray of float, shape (N, d)
        One feature vector per point (voxel), each coordinate divided by its kernel's standard
        deviation, so that the kernel is ``exp(-|f_i - f_j|^2 / 2)``. ``d`` >= 1.

    Raises
    ------
    ValueError
        If ``features`` is not 2-D, is empty, holds non-finite values, or spans too many lattice
        cells for 64-bit keys.

    Other Parameters
    ----------------
    gain : float, optional
        The lattice's factor to divide out; default :data:`GAINS` of ``d``, else :func:`lattice_gain`
        of ``d`` (1 leaves the raw lattice output).

    Notes
    -----
    Memory: ``(d + 1)`` int32 vertex indices and float32 weights per point, plus ``2 (d + 1)``
    int32 neighbour indices per lattice vertex. Building costs a sort of ``N (d + 1)`` keys.
    """

    def __init__(self, features: np.ndarray, *, gain: float | None = None) -> None:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or len(features) == 0 or features.shape[1] < 1:
            raise ValueError(f"expected features of shape (N, d) with N, d >= 1, got {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("features must be finite")
        n, d = features.shape
        self.dimension, self.size = d, n
        # per point: its remainder-0 point, the rank of its differential and its barycentric weights,
        # computed in chunks so that the (n, d + 1, d + 1) comparisons stay small
        rem0 = np.empty((n, d + 1), np.int32)
        rank = np.empty((n, d + 1), np.int8)
        weights = np.empty((n, d + 1), np.float32)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            rem0[start:stop], rank[start:stop], weights[start:stop] = _simplices(features[start:stop])
        # vertex keys: the remainder-0 point plus the canonical simplex's vertex r, permuted by the rank
        canonical = np.array([[r if j <= d - r else r - (d + 1) for j in range(d + 1)] for r in range(d + 1)])
        # a vertex key lies within rem0 +- d, and a neighbour's within another +- d: pack that whole range
        low = rem0[:, :d].min(axis=0).astype(np.int64) - 2 * d
        span = rem0[:, :d].max(axis=0).astype(np.int64) + 2 * d - low + 1
        bits = int(np.ceil(np.log2(span.max() + 1)))
        if bits * d > 62:
            raise ValueError(f"features span too many lattice cells ({span.max()} per axis) for 64-bit keys")
        self._low, self._bits = low, bits
        packed = np.empty((n, d + 1), np.int64)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            r0, rk = rem0[start:stop, :d].astype(np.int64), rank[start:stop, :d]
            for r in range(d + 1):
                packed[start:stop, r] = self._pack(r0 + canonical[r][rk])
        del rem0, rank
        # torch's unique: about 5x numpy's on 12 M keys (measured, one thread)
        unique, inverse_t = torch.unique(torch.from_numpy(packed.reshape(-1)), sorted=True, return_inverse=True)
        vertices, inverse = unique.numpy(), inverse_t.numpy()
        del packed, unique, inverse_t
        m = self.vertices = len(vertices)
        # Vertices are numbered in the order the points first touch them, not by key: the points come in
        # voxel order, so vertices near in space are near in memory and the blur's and splat's row
        # accesses stay in cache (by key, a neighbour is a whole slab of the first coordinate away).
        first = np.full(m, inverse.size, np.int64)
        np.minimum.at(first, inverse, np.arange(inverse.size, dtype=np.int64))
        renumber = np.empty(m + 1, np.int64)
        renumber[np.argsort(first, kind="stable")] = np.arange(m)
        renumber[m] = m  # the absent neighbour stays the zero row M
        del first
        self._keys = np.empty_like(vertices)  # packed: vertex i's key is self._unpack(self._keys[i : i + 1])
        self._keys[renumber[:m]] = vertices
        # int32 vertex indices (half the memory; torch's index_add_ and gathers take them)
        index_type = np.int32 if m < 2**31 else np.int64
        self._index = torch.from_numpy(renumber[inverse].reshape(n, d + 1).astype(index_type))
        del inverse
        self._weights = torch.from_numpy(weights)
        # neighbours of every vertex along each of the d + 1 lattice directions (absent -> the zero row M),
        # looked up among the sorted keys, then renumbered
        unpacked = self._unpack(vertices)
        neighbours = []
        for j in range(d + 1):
            step = -np.ones(d, np.int64)
            if j < d:
                step[j] = d
            pair = []
            for sign in (1, -1):
                key = self._pack(unpacked + sign * step)
                pos = np.clip(np.searchsorted(vertices, key), 0, m - 1)
                found = renumber[np.where(vertices[pos] == key, pos, m)]
                by_new = np.empty(m, index_type)
                by_new[renumber[:m]] = found
                pair.append(torch.from_numpy(by_new))
            neighbours.append((pair[0], pair[1]))
        self._neighbours = neighbours
        self._gain = (GAINS.get(d) or lattice_gain(d)) if gain is None else float(gain)

    def _pack(self, keys: np.ndarray) -> np.ndarray:
        shifted = keys - self._low
        packed = np.zeros(len(keys), np.int64)
        for a in range(keys.shape[1]):
            packed = (packed << self._bits) | shifted[:, a]
        return packed

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        d, mask = self.dimension, (1 << self._bits) - 1
        out = np.empty((len(packed), d), np.int64)
        for a in range(d - 1, -1, -1):
            out[:, a] = packed & mask
            packed = packed >> self._bits
        return out + self._low

    def filter(
        self,
        values: torch.Tensor,
        channels: torch.Tensor | None = None,
        *,
        num_channels: int | None = None,
        out_channels: torch.Tensor | None = None,
        channel_chunk: int | None = None,
    ) -> torch.Tensor:
        """Estimate ``sum_j exp(-|f_i - f_j|^2 / 2) v_j[c]`` at every point ``i`` (``j = i`` included).

        Parameters
        ----------
        values : Tensor of float32, shape (N, k)
            Values of the points; with ``channels``, value ``[i, m]`` belongs to channel
            ``channels[i, m]``, else ``k`` is the number of channels.
        channels : Tensor of int64, shape (N, k), optional
            Channel of each value (sparse values). Values of channels outside
            ``[0, num_channels)`` are left out.
        num_channels : int, optional
            Number of channels ``C`` when ``channels`` is given (default: its maximum + 1).
        out_channels : Tensor of int64, shape (N, k'), optional
            Channels to read back at each point (default: ``channels``, or all); those outside
            ``[0, num_channels)`` read 0.
        channel_chunk : int, optional
            Channels filtered together (default :data:`CHANNEL_CHUNK`): the lattice holds
            ``(M, channel_chunk)`` values at a time.

        Returns
        -------
        Tensor of float32, shape (N, k')
            The filtered values of ``out_channels`` (or ``(N, k)`` for dense values).

        Raises
        ------
        ValueError
            If the shapes do not match the lattice's points.

        See Also
        --------
        plan : the same filter for fixed channels, its indexing done once for many calls.
        """
        if values.ndim != 2 or values.shape[0] != self.size:
            raise ValueError(f"expected values of shape ({self.size}, k), got {tuple(values.shape)}")
        if channels is None:
            channels = torch.arange(values.shape[1]).expand(self.size, -1)
            num_channels = values.shape[1]
        elif channels.shape != values.shape:
            raise ValueError(f"channels {tuple(channels.shape)} must match values {tuple(values.shape)}")
        return self.plan(channels, num_channels=num_channels, out_channels=out_channels, channel_chunk=channel_chunk)(
            values
        )

    def plan(
        self,
        channels: torch.Tensor,
        *,
        num_channels: int | None = None,
        out_channels: torch.Tensor | None = None,
        channel_chunk: int | None = None,
    ) -> LatticeFilter:
        """:meth:`filter` for values on fixed ``channels``: where each value splats and slices, found once.

        The mean field of :mod:`brainseg.postprocessing.dense_crf` filters new values on the same
        channels (a voxel's kept classes) at every iteration; the plan keeps, per chunk of channels, the
        entries in it and their lattice positions (``4 (d + 1) + 8`` bytes per entry, int32 positions), so that each call
        only splats, blurs and slices. Parameters as :meth:`filter`.

        Parameters
        ----------
        channels : Tensor of int64, shape (N, k)
            Channel of each value the filter will be called with. Values of channels outside
            ``[0, num_channels)`` are left out.
        num_channels : int, optional
            Number of channels ``C`` (default: the maximum of ``channels`` + 1, or 1 if it is empty).
        out_channels : Tensor of int64, shape (N, k'), optional
            Channels to read back at each point (default: ``channels``); those outside
            ``[0, num_channels)`` read 0.
        channel_chunk : int, optional
            Channels filtered together (default :data:`CHANNEL_CHUNK`).

        Returns
        -------
        LatticeFilter
            Call it with values ``(N, k)`` float32 (``k`` = ``channels.shape[1]``); returns ``(N, k')``.

        Raises
        ------
        ValueError
            If ``channels`` or ``out_channels`` is not ``(N, .)`` for this lattice's ``N`` points.
        """
        if channels.ndim != 2 or channels.shape[0] != self.size:
            raise ValueError(f"expected channels of shape ({self.size}, k), got {tuple(channels.shape)}")
        if out_channels is not None and (out_channels.ndim != 2 or out_channels.shape[0] != self.size):
            raise ValueError(f"expected out_channels of shape ({self.size}, k'), got {tuple(out_channels.shape)}")
        if num_channels is None:
            num_channels = int(channels.max()) + 1 if channels.numel() else 1
        same = out_channels is None or out_channels is channels
        out_channels = channels if out_channels is None else out_channels
        in_ch, out_ch = channels.reshape(-1), out_channels.reshape(-1)
        k_in, k_out = channels.shape[1], out_channels.shape[1]
        chunk = channel_chunk or CHANNEL_CHUNK
        steps = []
        for c0 in range(0, num_channels, chunk):  # the lattice's values, (M, width) row-major
            c1 = min(c0 + chunk, num_channels)
            sources = torch.nonzero((in_ch >= c0) & (in_ch < c1))[:, 0]
            targets = sources if same else torch.nonzero((out_ch >= c0) & (out_ch < c1))[:, 0]
            if len(sources) == 0 or len(targets) == 0:
                continue
            splat_at = self._flat(sources // k_in, in_ch[sources] - c0, c1 - c0)
            slice_at = splat_at if same else self._flat(targets // k_out, out_ch[targets] - c0, c1 - c0)
            steps.append(_Step(c1 - c0, sources, splat_at, targets, slice_at))
        return LatticeFilter(self, tuple(out_channels.shape), k_in, steps)

    def _splat(self, at: torch.Tensor, points: torch.Tensor, values: torch.Tensor, width: int) -> torch.Tensor:
        # each value onto its point's d + 1 vertices (flat positions ``at``), barycentric weights: (M + 1, width),
        # the last row zero (what an absent neighbour reads)
        grid = torch.zeros((self.vertices + 1) * width)
        grid.index_add_(0, at.reshape(-1), (values[:, None] * self._weights[points]).reshape(-1))
        return grid.view(self.vertices + 1, width)

    def _blur(self, grid: torch.Tensor) -> torch.Tensor:
        # [1/2, 1, 1/2] along each of the d + 1 lattice directions: two row gathers per direction (an absent
        # neighbour is row M, kept zero); (M + 1, width) -> (M + 1, width). ``grid`` is overwritten (scratch).
        m = self.vertices
        out, other = torch.empty_like(grid), torch.empty((m, grid.shape[1]))  # allocated once, reused
        out[m] = 0
        for forward, backward in self._neighbours:
            torch.index_select(grid, 0, forward, out=out[:m])
            torch.index_select(grid, 0, backward, out=other)
            other += out[:m]
            torch.add(grid[:m], other, alpha=0.5, out=out[:m])
            grid, out = out, grid
        return grid

    def _slice(self, grid: torch.Tensor, at: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # each point's value from its d + 1 vertices (flat positions ``at``), barycentric weights
        return (grid.reshape(-1)[at] * self._weights[points]).sum(dim=1)

    def _flat(self, points: torch.Tensor, channels: torch.Tensor, width: int) -> torch.Tensor:
        # positions in the (M, width) row-major lattice values of each point's d + 1 vertices, channel given
        index = self._index[points]
        if self.vertices * width >= 2**31:
            index = index.long()
        index *= width
        index += channels[:, None].to(index.dtype)
        return index


class _Step(NamedTuple):
    """One chunk of channels of a :class:`LatticeFilter`: which entries splat and slice, and where."""

    width: int
    sources: torch.Tensor  # (n,) int64: entries of the flat (N k) values in this chunk
    splat_at: torch.Tensor  # (n, d + 1) int32/int64: their vertices' flat positions in the (M, width) grid
    targets: torch.Tensor  # (n',) int64: entries of the flat (N k') output read from this chunk
    slice_at: torch.Tensor  # (n', d + 1)


class LatticeFilter:
    """A :class:`PermutohedralLattice` filter for values on fixed channels (:meth:`PermutohedralLattice.plan`).

    Calling it with values ``(N, k)`` float32 returns the filtered ``(N, k')`` float32, as
    :meth:`PermutohedralLattice.filter` would for the plan's channels.

    Parameters
    ----------
    lattice : PermutohedralLattice
        The lattice of the ``N`` points.
    out_shape : tuple of 2 int
        ``(N, k')``, the shape of ``out_channels``.
    k : int
        Values per point of the input, ``channels.shape[1]``.
    steps : list of _Step
        Per chunk of channels, the entries that splat and slice and their lattice positions.

    Raises
    ------
    ValueError
        (on call) If the values are not ``(N, k)``.
    """

    def __init__(self, lattice: PermutohedralLattice, out_shape: tuple[int, int], k: int, steps: list[_Step]) -> None:
        self.lattice, self.out_shape, self.k, self.steps = lattice, out_shape, k, steps

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Filtered values ``(N, k')`` float32 of ``values`` ``(N, k)``."""
        lattice = self.lattice
        if tuple(values.shape) != (lattice.size, self.k):
            raise ValueError(f"expected values of shape ({lattice.size}, {self.k}), got {tuple(values.shape)}")
        flat = values.float().reshape(-1)
        out = torch.zeros(self.out_shape[0] * self.out_shape[1])
        k_out = self.out_shape[1]
        for step in self.steps:
            grid = lattice._splat(step.splat_at, step.sources // self.k, flat[step.sources], step.width)
            grid = lattice._blur(grid)
            out[step.targets] = lattice._slice(grid, step.slice_at, step.targets // k_out)
        return out.view(self.out_shape) / lattice._gain


@lru_cache(maxsize=8)
def lattice_gain(dimension: int, points: int = 20_000, seed: int = 0) -> float:
    """The lattice's constant factor between its output and the explicit Gaussian sum, for ``d`` dimensions.

    Measured once per dimension: ``points`` uniform random feature vectors in a cube dense enough
    (8 points per unit feature volume: side ``(points / 8)^(1/d)``) that the sum is smooth; the
    lattice filter of ones is compared with the explicit sums ``sum_j exp(-|f_i - f_j|^2 / 2)`` at
    up to 500 points away from the cube's faces; the gain is the median ratio.

    Parameters
    ----------
    dimension : int
        Feature dimension ``d`` >= 1.
    points, seed : int
        Size and seed of the random point cloud.

    Returns
    -------
    float
        Lattice output / explicit sum.
    """
    rng = np.random.default_rng(seed)
    side = (points / 8.0) ** (1.0 / dimension)
    features = rng.uniform(0, side, (points, dimension))
    lattice = PermutohedralLattice(features, gain=1.0)
    lattice_sum = lattice.filter(torch.ones(points, 1))[:, 0].numpy()
    centre = np.all(np.abs(features - side / 2) < max(side / 2 - 4.0, side / 4), axis=1)
    sample = np.flatnonzero(centre)[:500]
    explicit = np.exp(-0.5 * ((features[sample, None, :] - features[None, :, :]) ** 2).sum(-1)).sum(1)
    return float(np.median(lattice_sum[sample] / explicit))
