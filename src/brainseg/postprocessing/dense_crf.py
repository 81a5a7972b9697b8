"""3-D fully connected CRF with Gaussian edge potentials, by mean-field inference.

P. Krähenbühl, V. Koltun, "Efficient inference in fully connected CRFs with Gaussian edge
potentials", NeurIPS 2011 (the model, Eq. 1-3, and its mean-field algorithm, Algorithm 1);
C. Wachinger, M. Reuter, T. Klein, "DeepNAT", NeuroImage 170:434-445, 2018, section 2.5, Eq. 6-7
(the model on 3-D brain MRI).

The energy of a labelling ``y`` of the voxels is

    E(y) = sum_i U_i(y_i) + sum_{i < j} mu(y_i, y_j) k(f_i, f_j),

with the unary ``U_i(l) = -log P_i(l)`` from a segmentation model's probabilities, the Potts
compatibility ``mu(l, l') = [l != l']`` (DeepNAT prints it without the "!=", which would reward
disagreement) and the kernel (Eq. 7)

    k(f_i, f_j) = v1 exp(-|p_i - p_j|^2 / 2 sa^2 - (I_i - I_j)^2 / 2 sb^2)     (appearance)
                + v2 exp(-|p_i - p_j|^2 / 2 sg^2)                             (smoothness)

with positions ``p`` in mm (so anisotropic voxels are handled) and ``I`` the model's normalised
intensity. Each Gaussian kernel is normalised symmetrically, ``k~(i, j) = n_i k(i, j) n_j`` with
``n_i = (sum_j k(i, j))^(-1/2)`` over the CRF's voxels (``j = i`` included), as DenseCRF, the
implementation DeepLab and DeepNAT used, does by default: without it a 3 mm kernel sums to about 425
over a 1 mm grid and the pairwise terms would swamp any unary (measured: mean Dice of the default
model on subject 1000 from 0.725 to 0.52). Mean field approximates the posterior by independent
marginals ``Q_i``, updated in parallel (Krähenbühl & Koltun, Algorithm 1; with the Potts model the
compatibility transform reduces to a sign):

    Q_i(l)  ∝  exp(-U_i(l) + v1 sum_{j != i} k~_a(i, j) Q_j(l) + v2 sum_{j != i} k~_s(i, j) Q_j(l)).

Filtering
---------
The smoothness sums are separable Gaussian filters (:func:`scipy.ndimage.gaussian_filter`, exact
up to its truncation at 4 standard deviations, with the kernel's unnormalised mass restored). The
appearance sums are 4-D bilateral filters, done on the permutohedral lattice
(:class:`~brainseg.postprocessing.permutohedral.PermutohedralLattice`, approximate: about 10 %
median relative error of the sums on small volumes, tested against explicit sums).

Memory
------
Only voxels within 3 kernel widths (mm) of a voxel whose background probability is below 1 take
part; the others keep their arg-max (they are background for certain, and the part of a Gaussian
kernel's mass beyond 3 widths, about 3 % in 3-D, is what the voxels near the brain lose by it). Each of them keeps its
``top_k`` most probable classes from the unary (exact when ``top_k`` is the number of classes):
``Q`` is ``(N, k)``, and no ``(N, C)`` array is made; of those, the classes that cannot win are
dropped (``prune_margin``). The lattice filters 16 classes at a time. The smoothness filter works one class at a
time on the bounding box of the voxels that keep that class.

Deviations from the papers
--------------------------
- DeepNAT's defaults are v1 = v2 = 3, sa = sg = 3 and sb = 10, taken from DeepLab for intensities
  on FreeSurfer's scale (white matter at 110). brainseg's intensities are z-scores in the brain
  mask; :data:`DEFAULT_INTENSITY_SIGMA` gives the mapped value and how it was measured.
- Classes outside a voxel's ``top_k`` have marginal 0 there (exact with ``top_k = C``).
- The number of mean-field iterations is a setting (the paper gives none; DeepLab used 10).
- The kernels are normalised (above): Eq. 7 as printed is not, but the parameters it quotes were
  chosen for DenseCRF, which normalises.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from brainseg.postprocessing.permutohedral import PermutohedralLattice

__all__ = [
    "CRFParameters",
    "DEFAULT_INTENSITY_SIGMA",
    "brute_force_mean_field",
    "dense_crf",
    "mean_field_energy",
]

#: DeepNAT's sb = 10 on FreeSurfer's scale (white matter 110) as a difference of brainseg's z-scored
#: intensities. On the 10 MICCAI 2012 training subjects, z-scored in their brain masks, cerebral white
#: matter averages 1.09, cortex -0.56 and the lateral ventricles -1.72. FreeSurfer's scale puts them at
#: about 110, 75 and 30 (typical values, not measured here), so one FreeSurfer unit is 1.65 / 35 = 0.047
#: (white-grey contrast) or 2.82 / 80 = 0.035 (white-CSF contrast) z units, and sb = 10 is 0.35-0.47:
#: 0.4.
DEFAULT_INTENSITY_SIGMA = 0.4


@dataclass(frozen=True)
class CRFParameters:
    """Settings of the dense CRF (DeepNAT Eq. 7; Krähenbühl & Koltun Eq. 3).

    Attributes
    ----------
    appearance_weight : float
        ``v1`` (DeepNAT: 3).
    smoothness_weight : float
        ``v2`` (DeepNAT: 3).
    position_sigma_mm : float
        ``sa``, the appearance kernel's width in space, mm (DeepNAT: 3).
    intensity_sigma : float
        ``sb``, its width in normalised intensity (z-score units; DeepNAT's 10 on FreeSurfer's
        scale, mapped: :data:`DEFAULT_INTENSITY_SIGMA`).
    smoothness_sigma_mm : float
        ``sg``, the smoothness kernel's width, mm (DeepNAT: 3).
    iterations : int
        Mean-field iterations (5 by default).
    top_k : int
        Classes kept per voxel (0: all, exact).
    prune_margin : float
        Of a voxel's ``top_k`` classes, those whose unary exceeds its best class's by more than
        ``appearance_weight + smoothness_weight + prune_margin`` (nats) are dropped too (0: keep
        all ``top_k``, exact with ``top_k = 0``). With the normalised kernels a class's message
        lies within about ``[0, v1 + v2]``, so such a class cannot become the voxel's label; what
        is lost is its small share in its neighbours' messages.
    """

    appearance_weight: float = 3.0
    smoothness_weight: float = 3.0
    position_sigma_mm: float = 3.0
    intensity_sigma: float = DEFAULT_INTENSITY_SIGMA
    smoothness_sigma_mm: float = 3.0
    iterations: int = 5
    top_k: int = 6
    prune_margin: float = 2.0

    def __post_init__(self) -> None:
        for name in ("appearance_weight", "smoothness_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("position_sigma_mm", "intensity_sigma", "smoothness_sigma_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.prune_margin < 0:
            raise ValueError(f"prune_margin must be >= 0, got {self.prune_margin}")
        if self.iterations < 0 or self.top_k < 0:
            raise ValueError(f"iterations and top_k must be >= 0, got {self.iterations} and {self.top_k}")


def _reach(params: CRFParameters, spacing: np.ndarray) -> np.ndarray:
    # Voxels per axis beyond which both kernels are negligible (4 standard deviations).
    sigma = max(params.position_sigma_mm, params.smoothness_sigma_mm)
    return np.ceil(4 * sigma / spacing).astype(int)


def _smoothness_mass(sigma_mm: float, spacing: np.ndarray) -> float:
    # sum over the truncated kernel of exp(-|p|^2 / 2 sigma^2): what gaussian_filter's normalised kernel lacks
    mass = 1.0
    for s in spacing:
        radius = int(4.0 * sigma_mm / s + 0.5)  # scipy's truncate = 4 radius, in voxels
        t = np.arange(-radius, radius + 1) * s
        mass *= float(np.exp(-(t**2) / (2 * sigma_mm**2)).sum())
    return mass


class _SparseSmoother:
    """``sum_j exp(-|p_i - p_j|^2 / 2 sg^2) Q_j(l)`` at each voxel's kept classes (``j = i`` included).

    Separable Gaussian filtering (:func:`scipy.ndimage.gaussian_filter`, truncated at 4 standard
    deviations, the unnormalised mass restored), one class at a time on the bounding box of the
    voxels that keep it; the grouping by class is done once.
    """

    def __init__(
        self, classes: torch.Tensor, voxels: np.ndarray, shape: tuple, sigma_mm: float, spacing, num_classes: int
    ) -> None:
        self.sigma_vox = sigma_mm / np.asarray(spacing, np.float64)
        self.mass = np.float32(_smoothness_mass(sigma_mm, np.asarray(spacing, np.float64)))
        reach = np.ceil(4 * self.sigma_vox).astype(int) + 1
        flat = classes.numpy().reshape(-1)
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(int(flat.max()) + 2))
        k = classes.shape[1]
        self.groups = []
        for label in range(min(len(bounds) - 1, num_classes)):  # entries of class num_classes (pruned) stay 0
            entries = order[bounds[label] : bounds[label + 1]]
            if len(entries) == 0:
                continue
            at = voxels[entries // k]
            lo = np.maximum(at.min(axis=0) - reach, 0)
            hi = np.minimum(at.max(axis=0) + reach + 1, shape)
            local = tuple(np.ascontiguousarray(c, dtype=np.int32) for c in (at - lo).T)
            self.groups.append((entries.astype(np.int64), local, tuple(hi - lo)))

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        flat_q = q.reshape(-1).numpy()
        out = torch.zeros(q.numel())
        flat_out = out.numpy()

        def one_class(group: tuple) -> None:
            entries, local, box_shape = group
            box = np.zeros(box_shape, np.float32)
            box[local] = flat_q[entries]
            filtered = ndimage.gaussian_filter(box, self.sigma_vox, mode="constant", cval=0.0, truncate=4.0)
            flat_out[entries] = filtered[local] * self.mass  # each class writes its own entries

        # scipy's filters release the GIL: the classes run on torch's threads
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            for _ in pool.map(one_class, self.groups):
                pass
        return out.view(q.shape)


def _top_classes(
    probabilities: np.ndarray, box: tuple[slice, ...], active: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes ``(N, k)`` int64 and their probabilities float32 of the box's active voxels.

    Voxels in C order (``np.argwhere(active)``), slab by slab along the first axis, so that no
    ``(C, N)`` copy of the box is made; the outputs are filled in place.
    """
    n = int(active.sum())
    top, kept = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    z0, z1 = box[0].start, box[0].stop
    # about 4 M float32 values (16 MB) per slab: no large copy of the box
    step = max(1, int(2**22 // max(1, probabilities.shape[0] * active.shape[1] * active.shape[2])))
    row = 0
    for z in range(z0, z1, step):
        inside = active[z - z0 : min(z + step, z1) - z0]
        # the slab's active voxels in the probabilities' own type (float16: half the bytes to copy)
        chunk = np.ascontiguousarray(probabilities[:, z : min(z + step, z1), box[1], box[2]][:, inside])
        v, i = torch.topk(torch.from_numpy(chunk), k, dim=0)  # sorted, most probable first
        top[row : row + v.shape[1]], kept[row : row + v.shape[1]] = i.T.numpy(), v.T.float().numpy()
        row += v.shape[1]
    return top, kept


def _argmax_classes(probabilities: np.ndarray, dtype: type) -> np.ndarray:
    """Arg-max over the class axis slice by slice (``np.argmax(axis=0)`` would copy the whole array)."""
    out = np.empty(probabilities.shape[1:], dtype)
    for z in range(probabilities.shape[1]):
        out[z] = np.argmax(probabilities[:, z], axis=0)
    return out


def _softmax_energy(unary: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
    return torch.softmax(-unary + message, dim=1)


def dense_crf(
    probabilities: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    params: CRFParameters | None = None,
    *,
    return_marginals: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and marginals) of the dense CRF over a volume, by mean field.

    Parameters
    ----------
    probabilities : ndarray of float16 or float32, shape (C, D, H, W)
        A model's class probabilities (class 0 background); each voxel's sum is 1.
    image : ndarray of float, shape (D, H, W)
        The model's normalised intensities on the same grid.
    spacing : tuple of 3 float
        Voxel size along the array axes, mm.
    params : CRFParameters, optional
        Kernel weights and widths, iterations, ``top_k`` (defaults: DeepNAT's, mapped).
    return_marginals : bool
        Also return the mean-field marginals ``(C, D, H, W)``, of the type of ``probabilities``
        (classes outside a voxel's ``top_k`` get 0; voxels outside the CRF's box keep
        ``probabilities``).

    Returns
    -------
    classes : ndarray of uint8 or int16, shape (D, H, W)
        Class index of largest marginal (uint8 when ``C <= 256``).
    marginals : ndarray, shape (C, D, H, W), or None

    Raises
    ------
    ValueError
        If the shapes disagree, the spacing is not positive, or ``probabilities`` holds
        negative or non-finite values.
    """
    params = params or CRFParameters()
    probabilities = np.asarray(probabilities)
    image = np.asarray(image, np.float32)
    spacing_ = np.asarray(spacing, np.float64)
    if probabilities.ndim != 4 or probabilities.shape[1:] != image.shape:
        raise ValueError(f"probabilities {probabilities.shape} must be (C,) + the image's shape {image.shape}")
    if spacing_.shape != (3,) or not (spacing_ > 0).all():
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing}")
    num_classes = probabilities.shape[0]
    out_dtype = np.uint8 if num_classes <= 256 else np.int16
    marginals = probabilities.copy() if return_marginals else None
    foreground = probabilities[0] < 1 - 1e-6 if num_classes > 1 else np.zeros(image.shape, bool)
    no_pairwise = params.appearance_weight == 0 and params.smoothness_weight == 0
    if not foreground.any() or params.iterations == 0 or no_pairwise:  # the unary alone: its arg-max
        return _argmax_classes(probabilities, out_dtype), marginals
    # outside the CRF's voxels the background is certain (probability >= 1 - 1e-6): class 0
    classes = np.zeros(image.shape, out_dtype)
    reach = _reach(params, spacing_)
    where = np.nonzero(foreground)
    lo = np.maximum([int(w.min()) for w in where] - reach, 0)
    hi = np.minimum([int(w.max()) + 1 for w in where] + reach, image.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # the CRF's voxels: those within 3 kernel widths (mm) of a voxel that is not certainly background
    distance = ndimage.distance_transform_edt(~foreground[box], sampling=spacing_)
    active = distance <= 3 * max(params.position_sigma_mm, params.smoothness_sigma_mm)
    del distance
    shape = active.shape
    voxels = np.argwhere(active)  # C order: sorted by the first axis
    k = num_classes if params.top_k == 0 else min(params.top_k, num_classes)
    top, kept = _top_classes(probabilities, box, active, k)
    unary_np = -np.log(np.clip(kept, 1e-8, None))
    if params.prune_margin > 0:  # classes that cannot win: the spare channel C, unary +inf, marginal 0
        margin = params.appearance_weight + params.smoothness_weight + params.prune_margin
        pruned = unary_np > unary_np[:, :1] + margin
        top[pruned], unary_np[pruned] = num_classes, np.inf
        del pruned
    unary = torch.from_numpy(unary_np)
    top_t = torch.from_numpy(np.ascontiguousarray(top, dtype=np.int64))
    features = np.concatenate(
        [voxels * (spacing_ / params.position_sigma_mm), image[box][active][:, None] / params.intensity_sigma], axis=1
    )
    lattice = PermutohedralLattice(features) if params.appearance_weight > 0 else None
    del features
    # symmetric normalisation (as DenseCRF's default): n_i = (sum_j k(i, j))^(-1/2) over the CRF's voxels
    ones, first = torch.ones(len(voxels), 1), torch.zeros((len(voxels), 1), dtype=torch.int64)
    norm_a = norm_s = None
    if lattice is not None:
        norm_a = lattice.filter(ones)[:, :1].clamp_min(1e-20).rsqrt()
    if params.smoothness_weight > 0:
        norm_s = (
            _SparseSmoother(first, voxels, shape, params.smoothness_sigma_mm, spacing_, 1)(ones)
            .clamp_min(1e-20)
            .rsqrt()
        )
        smoother = _SparseSmoother(top_t, voxels, shape, params.smoothness_sigma_mm, spacing_, num_classes)
    # the kept classes stay fixed: where each entry splats and slices is found once
    appearance = lattice.plan(top_t, num_channels=num_classes) if lattice is not None else None  # pruned (C): 0
    q = _softmax_energy(unary, torch.zeros_like(unary))
    for _ in range(params.iterations):
        message = torch.zeros_like(q)
        if appearance is not None and norm_a is not None:  # j != i: the self term n_i^2 k(i, i) Q_i comes out
            filtered = appearance(q * norm_a)
            message += params.appearance_weight * norm_a * (filtered - norm_a * q)
        if norm_s is not None:
            filtered = smoother(q * norm_s)
            message += params.smoothness_weight * norm_s * (filtered - norm_s * q)
        q = _softmax_energy(unary, message)
    best = torch.gather(top_t, 1, q.argmax(dim=1, keepdim=True))[:, 0].numpy()
    classes[box][active] = best.astype(out_dtype)
    if marginals is not None:
        q_np = q.numpy()
        starts = np.searchsorted(voxels[:, 0], np.arange(shape[0] + 1))
        for z in range(shape[0]):  # one slice of the box at a time: no (N, C) array
            rows = slice(starts[z], starts[z + 1])
            if rows.start == rows.stop:
                continue
            plane = marginals[:, lo[0] + z, box[1], box[2]]  # a view: (C, H', W')
            inside = np.zeros((rows.stop - rows.start, num_classes + 1), marginals.dtype)
            np.put_along_axis(inside, top[rows], q_np[rows].astype(marginals.dtype), axis=1)
            plane[:, voxels[rows, 1], voxels[rows, 2]] = inside[:, :num_classes].T
    return classes, marginals


def _explicit_kernels(shape: tuple, image: np.ndarray, spacing, params: CRFParameters) -> tuple[np.ndarray, np.ndarray]:
    # The two kernels over every voxel pair, symmetrically normalised (self included in the norms), zero diagonal.
    positions = np.argwhere(np.ones(shape, bool)) * np.asarray(spacing, np.float64)
    d2 = ((positions[:, None] - positions[None]) ** 2).sum(-1)
    i2 = (image.reshape(-1)[:, None] - image.reshape(-1)[None]) ** 2
    appearance = np.exp(-d2 / (2 * params.position_sigma_mm**2) - i2 / (2 * params.intensity_sigma**2))
    smoothness = np.exp(-d2 / (2 * params.smoothness_sigma_mm**2))
    out = []
    for kernel in (appearance, smoothness):
        norm = 1.0 / np.sqrt(kernel.sum(1))
        kernel = norm[:, None] * kernel * norm[None, :]
        np.fill_diagonal(kernel, 0.0)
        out.append(kernel)
    return out[0], out[1]


def brute_force_mean_field(
    probabilities: np.ndarray, image: np.ndarray, spacing, params: CRFParameters | None = None
) -> list[np.ndarray]:
    """Mean field with explicit ``O(N^2)`` pairwise sums over every voxel: the reference for tests.

    Parameters
    ----------
    probabilities : ndarray of float, shape (C, D, H, W)
    image : ndarray of float, shape (D, H, W)
    spacing : tuple of 3 float
        mm.
    params : CRFParameters, optional
        ``top_k`` is ignored (all classes).

    Returns
    -------
    list of ndarray of float64, shape (N, C)
        The marginals before the first and after each iteration, voxels in C order.
    """
    params = params or CRFParameters()
    num_classes = probabilities.shape[0]
    unary = -np.log(np.clip(probabilities.reshape(num_classes, -1).T.astype(np.float64), 1e-8, None))
    appearance, smoothness = _explicit_kernels(image.shape, np.asarray(image, np.float64), spacing, params)
    kernel = params.appearance_weight * appearance + params.smoothness_weight * smoothness

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    q = softmax(-unary)
    out = [q]
    for _ in range(params.iterations):
        q = softmax(-unary + kernel @ q)
        out.append(q)
    return out


def mean_field_energy(
    q: np.ndarray, probabilities: np.ndarray, image: np.ndarray, spacing, params: CRFParameters | None = None
) -> float:
    """The mean-field free energy ``E_Q[E(y)] - H(Q)`` of marginals ``q`` ``(N, C)`` (explicit sums; tests).

    With the Potts model ``E_Q[mu k] = sum_{i<j} k(i, j) (1 - sum_l Q_i(l) Q_j(l))``; mean field
    minimises this energy (KL(Q || P) up to the log partition function).

    Parameters
    ----------
    q : ndarray of float, shape (N, C)
        Marginals of every voxel (``N = D * H * W``, voxels in C order), e.g. from
        :func:`brute_force_mean_field`.
    probabilities : ndarray of float, shape (C, D, H, W)
        The model's probabilities; the unary is ``-log`` of them (clipped at 1e-8).
    image : ndarray of float, shape (D, H, W)
        Normalised intensities.
    spacing : tuple of 3 float
        Voxel size, mm.
    params : CRFParameters, optional
        Weights and widths of the kernels (default :class:`CRFParameters`); ``top_k`` and ``prune_margin``
        are ignored.

    Returns
    -------
    float
        The free energy, nats (the kernels over every voxel pair are built explicitly: ``O(N^2)`` memory).
    """
    params = params or CRFParameters()
    num_classes = probabilities.shape[0]
    unary = -np.log(np.clip(probabilities.reshape(num_classes, -1).T.astype(np.float64), 1e-8, None))
    appearance, smoothness = _explicit_kernels(image.shape, np.asarray(image, np.float64), spacing, params)
    kernel = params.appearance_weight * appearance + params.smoothness_weight * smoothness
    pair = 0.5 * float((kernel * (1.0 - q @ q.T)).sum())
    entropy = -float((q * np.log(np.clip(q, 1e-300, None))).sum())
    return float((q * unary).sum()) + pair - entropy
