"""DeepNAT's training examples (Wachinger et al. 2018, sections 2.2-2.3 and 3): 3-D patches, coordinates, task targets.

C. Wachinger, M. Reuter, T. Klein, "DeepNAT: Deep convolutional neural network for segmenting
neuroanatomy", NeuroImage 170:434-445, 2018. doi:10.1016/j.neuroimage.2017.02.035.

A training example is the 24^3 patch centred on a drawn voxel (:class:`DeepNATInputs`, cut from the
padded image), the coordinates of that voxel, and ``T`` targets: the classes of the voxels at the
heads' offsets (:func:`task_targets`; :func:`~brainseg.models.wachinger2018.task_offsets`).
:class:`DeepNATSampler` draws them for the one-step network, :class:`DeepNATCascadeSampler` for the
two networks of the hierarchy; :mod:`brainseg.families.wachinger2018` builds them for the trainer.

Training examples (``training.sampling``):

- ``'uniform'``, ``'balanced'``, ``'mixed'``: as :class:`~brainseg.sampling.samplers.VoxelSampler`
  draws them, per network: network 1 over the brain region with the classes background / foreground,
  network 2 over the foreground with the structure classes.
- ``'deepnat'`` (section 3): the paper's capped pools. Per image, network 1's pool holds
  ``min(n_fg, fg_bg_per_image)`` foreground and ``min(n_bg, fg_bg_per_image)`` background voxels
  (paper: 30,000 each), network 2's ``min(n_c, cap_c)`` of each structure ``c`` with ``cap_c =
  per_structure`` (paper: 3,000), twice that for ``double_classes`` (the paper's cerebral white and
  grey matter). Every pool member is equally likely
  (:meth:`~brainseg.sampling.samplers.VoxelSampler.sample_pool`); the pool is in effect redrawn for
  every example (a voxel of the member's class, uniformly), so the class proportions are the paper's
  while all voxels of a class take part. The one-step variant draws from the union of network 2's
  structure caps and a background cap of ``fg_bg_per_image``. The trainer draws an image uniformly,
  then a member of its pool, so an epoch of ``samples_per_epoch`` examples per network sees a pool
  of ``P`` members about ``samples_per_epoch / (images x P)`` times each.

  The paper's pools add up to about 1.1 million patches over its training images; ours have the
  same per-image caps, e.g. with the 25 structures of ``configs/deepnat25_labels.tsv`` and its 4 cerebral
  white-matter and cortex classes doubled, at most 60,000 (network 1) and 3,000 x 29 = 87,000
  (network 2) per image. The paper's volumes (FreeSurfer's conformed 256^3 grid) have about 2
  foreground voxels per background voxel within its sampled region; our brain masks are 10-15
  foreground voxels per background voxel, so network 1's task is less unbalanced here and the
  hierarchy may matter less than in the paper.

The **class frequencies** of a sampler (:meth:`DeepNATCascadeSampler.class_frequencies`, read for
the sampling prior) describe what the combined model was trained to output: ``q(bg) = q1(bg)`` and
``q(c) = q1(fg) q2(c)``, with ``q1`` network 1's expected background / foreground frequencies and
``q2`` network 2's expected structure frequencies under the sampling mode, each exact (``'deepnat'``:
the pool's proportions). This is the prior of a model whose P1 and P2 are each Bayes-optimal for
their own examples; it is exact for ``'uniform'`` (the brain's frequencies) and an approximation
otherwise, since network 1's foreground examples mix the structures in the brain's proportions, not
in ``q2``'s. Like the one-step variant's, they are those of the examples' own voxels (the centre
head's targets).

**Jitter** (``training.augment: true``; the paper's 15/15 experiment, section 3): every patch centre
is moved by an independent random integer offset in ``[-1, 1]`` voxels along each axis
(:data:`JITTER_VOXELS`), kept only when the moved centre stays in the volume and in the sampled region
(brain mask or labelled voxels; otherwise the centre stays). The patch and the coordinates are those
of the moved centre; the **targets stay** those of the drawn voxel, so that the network learns to
tolerate a one-voxel displacement of its input. The paper does not spell out the label rule as far
as we know; we take "jittering" as the label-preserving random shift of the data layers of its time
(Caffe's random crop of a slightly larger patch keeps the example's label). Targets that followed the moved centre would
be a draw of a neighbouring voxel with its own label, which our per-example redrawn pools already
reach, so they would not augment anything here. With targets kept, the class frequencies are
unchanged by jitter.

Deviations from the paper
-------------------------
- Sampling: the ``'deepnat'`` pools are redrawn for every example rather than extracted once; the
  caps are the paper's, but the background of network 1 is the unlabelled part of the brain mask.
  The other modes are brainseg's.
- Jitter: the amplitude (one voxel) and the label handling are our reading (above).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainseg.config import TrainingConfig
from brainseg.errors import InputError
from brainseg.models.wachinger2018 import PATCH_PADDING, PATCH_SIZE, task_offsets
from brainseg.sampling.samplers import SAMPLING_MODES, VoxelSampler

__all__ = [
    "IGNORE",
    "JITTER_VOXELS",
    "SAMPLING",
    "DeepNATCascadeSampler",
    "DeepNATInputs",
    "DeepNATSampler",
    "check_training",
    "jitter_centres",
    "structure_targets",
    "task_targets",
]

#: ``training.sampling`` modes DeepNAT draws: :class:`VoxelSampler`'s and the paper's capped pools.
SAMPLING = (*SAMPLING_MODES, "deepnat")
#: Amplitude of the training jitter, in voxels along each axis (``training.augment``).
JITTER_VOXELS = 1
#: Target of a masked network-2 head (its voxel is background): left out of the loss.
IGNORE = -1
_TRAINING_DEFAULTS = TrainingConfig()


@dataclass(frozen=True)
class DeepNATInputs:
    """What DeepNAT reads from one image.

    Attributes
    ----------
    padded : ndarray of float32, shape (D + 23, H + 23, W + 23)
        The normalised image on the working grid, padded with ``background`` by 11 voxels before
        and 12 after along each axis: the patch of voxel ``v`` is ``padded[v : v + 24]`` along
        each axis (as :func:`brainseg.inference.dense3d.extract_patches3d` cuts it).
    coordinates : ndarray of float32, shape (K, D, H, W)
        Per-voxel coordinates (:func:`brainseg.features.coordinates.deepnat_coordinates`), ``K`` =
        0, 3 or 6; zero outside the brain mask.
    background : float
        The normalised intensity outside the brain (the padding value).
    """

    padded: np.ndarray
    coordinates: np.ndarray
    background: float

    @property
    def image(self) -> np.ndarray:
        """The unpadded image, float32 ``(D, H, W)`` (a view of :attr:`padded`)."""
        before, after = PATCH_PADDING
        return self.padded[before:-after, before:-after, before:-after]


def task_targets(classes: np.ndarray, voxels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The class each head must predict: that of the voxel at its offset (section 2.3).

    Parameters
    ----------
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices.
    voxels : ndarray of int, shape (n, 3)
        Patch centres, array-axis order.
    offsets : ndarray of int, shape (T, 3)
        The heads' offsets (:func:`~brainseg.models.wachinger2018.task_offsets`).

    Returns
    -------
    ndarray of the dtype of ``classes``, shape (n, T)
        ``[i, t]`` is ``classes[voxels[i] + offsets[t]]``, or 0 (background) where that voxel
        lies outside the volume.

    Examples
    --------
    >>> classes = np.arange(3, dtype=np.uint8).reshape(1, 1, 3)
    >>> task_targets(classes, np.array([[0, 0, 0], [0, 0, 2]]), np.array([[0, 0, 0], [0, 0, 1]])).tolist()
    [[0, 1], [2, 0]]
    """
    voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
    offsets = np.asarray(offsets, np.int64).reshape(-1, 3)
    out = np.zeros((len(voxels), len(offsets)), classes.dtype)
    for t, offset in enumerate(offsets):
        target = voxels + offset
        inside = ((target >= 0) & (target < classes.shape)).all(axis=1)
        out[inside, t] = classes[tuple(target[inside].T)]
    return out


def structure_targets(classes: np.ndarray, voxels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Network 2's targets: the structure index ``c - 1`` of each head's voxel, :data:`IGNORE` on background.

    Parameters
    ----------
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices (0 = background).
    voxels : ndarray of int, shape (n, 3)
        Patch centres, array-axis order.
    offsets : ndarray of int, shape (T, 3)
        The heads' offsets.

    Returns
    -------
    ndarray of int16, shape (n, T)
        ``classes[voxels[i] + offsets[t]] - 1``, or -1 (:data:`IGNORE`: masked out of the loss)
        where that voxel is background or outside the volume.

    Examples
    --------
    >>> classes = np.array([[[0, 1, 2]]], np.uint8)
    >>> structure_targets(classes, np.array([[0, 0, 1]]), np.array([[0, 0, 0], [0, 0, -1], [0, 0, 1]])).tolist()
    [[0, -1, 1]]
    """
    return task_targets(classes, voxels, offsets).astype(np.int16) - 1


def jitter_centres(
    voxels: np.ndarray, rng: np.random.Generator, region: np.ndarray, amplitude: int = JITTER_VOXELS
) -> np.ndarray:
    """Move patch centres by random integer offsets in ``[-amplitude, amplitude]`` per axis (the paper's jitter).

    Parameters
    ----------
    voxels : ndarray of int, shape (n, 3)
        Drawn voxels, array-axis order.
    rng : numpy.random.Generator
    region : ndarray of bool, shape (D, H, W)
        Where a centre may go (the sampled region: brain mask or labelled voxels).
    amplitude : int
        Largest move along each axis, in voxels.

    Returns
    -------
    ndarray of int64, shape (n, 3)
        The moved centres; a centre whose move would leave the volume or ``region`` stays.

    Examples
    --------
    >>> moved = jitter_centres(np.array([[1, 1, 1]] * 50), np.random.default_rng(0), np.ones((3, 3, 3), bool))
    >>> int(np.abs(moved - 1).max()), len(np.unique(moved, axis=0)) > 10
    (1, True)
    """
    voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
    moved = voxels + rng.integers(-amplitude, amplitude + 1, size=voxels.shape)
    keep = ((moved >= 0) & (moved < region.shape)).all(axis=1)
    keep[keep] = region[tuple(moved[keep].T)]
    return np.where(keep[:, None], moved, voxels)


def check_training(tc: TrainingConfig) -> None:
    """Refuse training settings that mean nothing to DeepNAT rather than ignore them.

    Parameters
    ----------
    tc : TrainingConfig

    Raises
    ------
    InputError
        If ``tc`` asks for auxiliary losses, BaseNet's patch augmentation (scaling, rotation) or a
        sampling mode not in :data:`SAMPLING`.
    """
    if any(tc.auxiliary_weights):
        raise InputError(
            f"training.auxiliary_weights {list(tc.auxiliary_weights)}: DeepNAT has no auxiliary classifiers; "
            "remove the setting"
        )
    if (
        tuple(tc.augment_scale) != _TRAINING_DEFAULTS.augment_scale
        or tc.augment_rotation_deg != _TRAINING_DEFAULTS.augment_rotation_deg
    ):
        raise InputError(
            "training.augment_scale / augment_rotation_deg: BaseNet's patch augmentation; DeepNAT's "
            f"augmentation (augment: true) is a jitter of {JITTER_VOXELS} voxel; remove the settings"
        )
    _check_mode(tc.sampling)


def _check_mode(mode: str) -> None:
    if mode not in SAMPLING:
        raise InputError(f"training.sampling {mode!r}: DeepNAT samples {', '.join(map(repr, SAMPLING))}")


class _NetworkVoxels:
    """The voxels one network draws its examples from: :class:`VoxelSampler`'s modes and a capped pool.

    Parameters
    ----------
    classes : ndarray of uint8, shape (D, H, W)
        The network's class of every voxel.
    region : ndarray of bool, shape (D, H, W)
        Voxels that may be drawn.
    caps : ndarray of int, shape (K,)
        Pool cap per class (``'deepnat'``); classes beyond ``K`` get none.
    """

    def __init__(self, classes: np.ndarray, region: np.ndarray, caps: np.ndarray) -> None:
        self.voxels = VoxelSampler(classes, region)
        counts = self.voxels.counts
        caps = np.asarray(caps, np.int64)
        full = np.zeros(len(counts), np.int64)
        full[: min(len(caps), len(counts))] = caps[: len(counts)]
        #: Pool members per class, ``min(count, cap)``.
        self.pool = np.minimum(counts, full)

    def frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        _check_mode(mode)
        if mode == "deepnat":
            out = np.zeros(num_classes)
            out[: len(self.pool)] = self.pool / self.pool.sum()
            return out
        return self.voxels.class_frequencies(num_classes, mode)

    def sample(self, n: int, rng: np.random.Generator, mode: str) -> np.ndarray:
        _check_mode(mode)
        if mode == "deepnat":
            return self.voxels.sample_pool(n, rng, self.pool).astype(np.int64)
        return self.voxels.sample(n, rng, mode).astype(np.int64)


def _structure_caps(num_classes: int, per_structure: int, double_classes: tuple[int, ...]) -> np.ndarray:
    # Cap per class index: per_structure, doubled for double_classes; 0 for background.
    caps = np.full(max(num_classes, max(double_classes, default=0) + 1), per_structure, np.int64)
    caps[list(double_classes)] *= 2
    caps[0] = 0
    return caps


class _Examples:
    """Patches and coordinates of patch centres, shared by the samplers."""

    def __init__(self, inputs: DeepNATInputs, classes: np.ndarray, mask: np.ndarray, tasks: int) -> None:
        if classes.shape != inputs.image.shape or mask.shape != classes.shape:
            raise ValueError(
                f"image {inputs.image.shape}, classes {classes.shape} and mask {mask.shape} must share a grid"
            )
        self.inputs, self.classes = inputs, classes
        self.region = mask | (classes > 0)
        self.offsets = task_offsets(tasks)
        self._windows = np.lib.stride_tricks.sliding_window_view(inputs.padded, (PATCH_SIZE,) * 3)

    def centres(self, voxels: np.ndarray, rng: np.random.Generator, tc: TrainingConfig) -> np.ndarray:
        return jitter_centres(voxels, rng, self.region) if tc.augment else voxels

    def values(self, centres: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
        d, h, w = centres.T
        out = {f"{prefix}patches": np.ascontiguousarray(self._windows[d, h, w])[:, None]}
        if len(self.inputs.coordinates):
            out[f"{prefix}coordinates"] = np.ascontiguousarray(self.inputs.coordinates[:, d, h, w].T)
        return out


class DeepNATSampler(_Examples):
    """Training examples of the one-step variant: voxels, their patches, coordinates and targets.

    Parameters
    ----------
    inputs : DeepNATInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid (RAS+).
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    tasks : {1, 7, 27}
        The network's heads.
    fg_bg_per_image, per_structure, double_classes
        The ``'deepnat'`` pool's caps (:class:`~brainseg.config.DeepNATConfig`): background
        ``fg_bg_per_image``, each structure ``per_structure``, doubled for ``double_classes``.

    Raises
    ------
    ValueError
        If the shapes disagree.
    """

    def __init__(
        self,
        inputs: DeepNATInputs,
        classes: np.ndarray,
        mask: np.ndarray,
        tasks: int,
        *,
        fg_bg_per_image: int = 30_000,
        per_structure: int = 3_000,
        double_classes: tuple[int, ...] = (),
    ) -> None:
        super().__init__(inputs, classes, mask, tasks)
        caps = _structure_caps(int(classes.max()) + 1, per_structure, double_classes)
        caps[0] = fg_bg_per_image
        self.voxels = _NetworkVoxels(classes, mask, caps)

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """Exact expected class frequencies of the drawn voxels themselves (the centre head's targets).

        ``'deepnat'``: the pool's proportions; otherwise :meth:`VoxelSampler.class_frequencies`. The
        other heads' targets, the drawn voxels' neighbours, differ from them only at structure
        borders; jitter moves the patches, not the targets.

        Parameters
        ----------
        num_classes : int
            Length of the result (background included).
        mode : {'uniform', 'balanced', 'mixed', 'deepnat'}
            The sampling mode (``training.sampling``).

        Returns
        -------
        ndarray of float64, shape (num_classes,)
            Sums to 1.

        Raises
        ------
        InputError
            If ``mode`` is not in :data:`SAMPLING`.
        """
        return self.voxels.frequencies(num_classes, mode)

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` voxels drawn by ``tc.sampling``: network inputs (jittered when ``tc.augment``) and targets.

        Parameters
        ----------
        n : int
            Examples to draw (with replacement).
        rng : numpy.random.Generator
            The random source of the draw and of the jitter.
        tc : TrainingConfig
            Its ``sampling`` mode and ``augment`` (jitter) are read; see :func:`check_training`.

        Returns
        -------
        inputs : dict of str to ndarray
            ``'patches'``: float32 ``(n, 1, 24, 24, 24)`` centred on the (jittered) voxels;
            ``'coordinates'``: float32 ``(n, K)`` of the same centres, only when ``K > 0``.
        targets : ndarray of uint8, shape (n, T)
            :func:`task_targets` of the drawn voxels (not moved by the jitter).

        Raises
        ------
        InputError
            If ``tc`` asks for auxiliary losses, BaseNet's augmentation or an unknown sampling mode.
        """
        check_training(tc)
        voxels = self.voxels.sample(n, rng, tc.sampling)
        return self.values(self.centres(voxels, rng, tc)), task_targets(self.classes, voxels, self.offsets)


class DeepNATCascadeSampler(_Examples):
    """Training examples of the hierarchy: ``n`` for network 1 and ``n`` for network 2 per draw (section 2.2).

    Network 1 draws from the brain region (brain mask or labelled voxels) with the classes
    background (0) and foreground (1); network 2 from the foreground with the structure classes.

    Parameters
    ----------
    inputs : DeepNATInputs
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid (RAS+).
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    tasks : {1, 7, 27}
        The networks' heads.
    fg_bg_per_image, per_structure, double_classes
        The ``'deepnat'`` pools' caps (:class:`~brainseg.config.DeepNATConfig`).

    Raises
    ------
    ValueError
        If the shapes disagree.
    InputError
        If the case has no structure voxel.
    """

    def __init__(
        self,
        inputs: DeepNATInputs,
        classes: np.ndarray,
        mask: np.ndarray,
        tasks: int,
        *,
        fg_bg_per_image: int = 30_000,
        per_structure: int = 3_000,
        double_classes: tuple[int, ...] = (),
    ) -> None:
        super().__init__(inputs, classes, mask, tasks)
        foreground = classes > 0
        if not foreground.any():
            raise InputError("a training case of the DeepNAT hierarchy has no structure voxel (its label map is empty)")
        self.foreground_classes = foreground.astype(np.uint8)
        self.foreground = _NetworkVoxels(self.foreground_classes, mask, np.array([fg_bg_per_image] * 2))
        caps = _structure_caps(int(classes.max()) + 1, per_structure, double_classes)
        self.structures = _NetworkVoxels(classes, foreground, caps)

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """Exact expected frequencies of the combined model's training prior: ``q1(bg)``, ``q1(fg) q2(c)``.

        ``q1`` are network 1's expected background / foreground frequencies under ``mode``, ``q2``
        network 2's structure frequencies (``'deepnat'``: the pools' proportions), both of the
        drawn voxels themselves (see the module docstring for this reading).

        Parameters
        ----------
        num_classes : int
            Length of the result (background included).
        mode : {'uniform', 'balanced', 'mixed', 'deepnat'}
            The sampling mode (``training.sampling``), used by both networks.

        Returns
        -------
        ndarray of float64, shape (num_classes,)
            Sums to 1.

        Raises
        ------
        InputError
            If ``mode`` is not in :data:`SAMPLING`.
        """
        q1 = self.foreground.frequencies(2, mode)
        out = q1[1] * self.structures.frequencies(num_classes, mode)
        out[0] = q1[0]
        return out

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` examples of each network, drawn by ``tc.sampling`` (jittered when ``tc.augment``).

        Parameters
        ----------
        n : int
            Examples to draw for each network (with replacement).
        rng : numpy.random.Generator
            The random source of the draws and of the jitter.
        tc : TrainingConfig
            Its ``sampling`` mode and ``augment`` (jitter) are read; see :func:`check_training`.

        Returns
        -------
        inputs : dict of str to ndarray
            Network 1's ``'patches'`` float32 ``(n, 1, 24, 24, 24)`` (and ``'coordinates'`` float32
            ``(n, K)`` when ``K > 0``); network 2's ``'structure_patches'`` (and
            ``'structure_coordinates'``): example ``i`` of either network sits in row ``i``, so the
            trainer's concatenation over cases keeps them aligned with the targets.
        targets : ndarray of int16, shape (n, T, 2)
            ``[..., 0]``: :func:`task_targets` of network 1's voxels on the background / foreground
            map; ``[..., 1]``: :func:`structure_targets` of network 2's voxels (-1 where masked).
            Both are of the drawn voxels (not moved by the jitter).

        Raises
        ------
        InputError
            If ``tc`` asks for auxiliary losses, BaseNet's augmentation or an unknown sampling mode.
        """
        check_training(tc)
        first = self.foreground.sample(n, rng, tc.sampling)
        second = self.structures.sample(n, rng, tc.sampling)
        values = {
            **self.values(self.centres(first, rng, tc)),
            **self.values(self.centres(second, rng, tc), "structure_"),
        }
        targets = np.stack(
            [
                task_targets(self.foreground_classes, first, self.offsets).astype(np.int16),
                structure_targets(self.classes, second, self.offsets),
            ],
            axis=2,
        )
        return values, targets
