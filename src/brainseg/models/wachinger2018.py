"""DeepNAT, the multi-task 3-D patch network of Wachinger et al. (2018).

Reference
---------
C. Wachinger, M. Reuter, T. Klein, "DeepNAT: Deep convolutional neural network
for segmenting neuroanatomy", NeuroImage 170:434-445, 2018.
doi:10.1016/j.neuroimage.2017.02.035, arXiv:1702.08192.

The network (paper Table 1, with a 24^3 patch instead of 23^3: see "Deviations
from the paper") classifies one intensity patch::

    conv 7^3 x 32, ReLU                       24 -> 18
    max-pool 2, stride 2                      18 -> 9
    conv 5^3 x 64, batch norm, ReLU            9 -> 5
    conv 3^3 x 64, batch norm, ReLU            5 -> 3    (3^3 x 64 = 1,728 features)
    FC 1024, ReLU, dropout 0.5
    concatenate K per-voxel coordinates       (paper: 3 spectral + 3 Cartesian, K = 6)
    FC 512, batch norm, ReLU, dropout 0.5
    one linear output layer of C classes per task

The patch of voxel ``v`` covers ``v - 11 .. v + 12`` along each axis
(:data:`PATCH_CENTRE` = 11).

Multi-task learning (section 2.3): head ``t`` predicts the label of the voxel
at offset ``task_offsets(T)[t]`` from the patch centre, for ``T`` = 1 (the
centre), 7 (centre and its 6 face neighbours, the paper's choice) or 27 (the
3 x 3 x 3 neighbourhood). Training sums the per-task cross entropies with
equal weights; at inference a voxel's probability is the mean of the heads'
predictions that point at it (Eq. 3, :func:`average_task_probabilities`).

The forward pass is split into :meth:`DeepNAT.features` (the convolutions,
which :mod:`brainseg.inference.dense3d` runs fully convolutionally over a
volume) and :meth:`DeepNAT.head` (the fully connected layers, run per voxel).

Parameter count
---------------
The paper (Table 2) counts weights only, without biases and batch
normalisation: 2,687,200 for one task with 25 outputs and 2,764,000 with 7.
Both numbers are reproduced exactly when the 6 coordinates enter the 512-unit
layer (:func:`paper_parameter_count`)::

    conv1   7^3 x  1 x 32          =    10,976
    conv2   5^3 x 32 x 64          =   256,000
    conv3   3^3 x 64 x 64          =   110,592
    fc1     1,728 x 1,024          = 1,769,472
    fc2     (1,024 + 6) x 512      =   527,360
    heads   512 x 25 x T           =    12,800 T
    total                          = 2,674,400 + 12,800 T
                                   = 2,687,200 (T = 1), 2,764,000 (T = 7)

Without the coordinates the count would be 3,072 lower (2,684,128 for
``T = 1``), so the paper's numbers include them. With biases and batch
normalisation our PyTorch module has 2,766,511 trainable parameters for
``T = 7``, 25 classes and 6 coordinates (2,764,000 weights + 1,231 biases +
1,280 batch-norm scales and shifts).

Deviations from the paper
-------------------------
- **24^3 input patch instead of 23^3.** Table 1 pools 17 conv1 outputs
  into 9, which Caffe does by rounding up: the last pooling window holds
  one conv1 output alone. That window makes the network's conv stage differ
  from a translated copy of itself, so dense inference (the conv stage run
  once over the volume, :mod:`brainseg.inference.dense3d`) would need eight
  corrected variants of the conv2 and conv3 maps per voxel; we built that
  exactly and measured its conv stage 5-7 times slower than a plain dilated
  one (7,100 against 34,600 voxels/s on a 17 x 17 x 140 tile, one thread),
  which kept a whole brain near 10 minutes. With 24 voxels, 18 conv1
  outputs pool into 9 full windows; the layers, their widths, the 3 x 3 x 3
  x 64 block and the parameter count are unchanged, and the receptive field
  grows by one voxel on the far side of each axis, so the classified voxel
  sits at index 11 of 0..23, one voxel off the geometric centre.
- Layers followed by batch normalisation (conv2, conv3, fc2) have no bias:
  the normalisation's mean subtraction would cancel it. The paper counts no
  biases, so its text does not say; the function computed is the same.
- Weights are initialised with Glorot and Bengio's uniform "Xavier" rule over
  fan-in + fan-out (:func:`torch.nn.init.xavier_uniform_`), biases with zero.
  The authors' Caffe implementation presumably used Caffe's ``xavier`` filler,
  whose default scales by the fan-in only (variance ``1 / fan_in``).
- The hierarchy of section 2.2 is :class:`DeepNATCascade`, one module
  holding both networks so that the pipeline trains and stores it as one
  network: the two are trained jointly (the sum of their losses; they share
  no parameters, so each receives the gradient of its own loss only), where
  the paper trains them one after the other. Their outputs are combined into
  one distribution per head (:func:`cascade_log_probabilities`). The 3-D
  fully connected CRF (section 2.5) is not part of this module.
- The number of coordinates is a parameter (0, 3 or 6 are the useful values);
  computing them (Laplace-Beltrami eigenfunctions, section 2.4) is done
  elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeepNAT",
    "DeepNATCascade",
    "DeepNATModel",
    "average_task_probabilities",
    "cascade_log_probabilities",
    "paper_parameter_count",
    "task_offsets",
    "FEATURE_GRID",
    "PATCH_CENTRE",
    "PATCH_PADDING",
    "PATCH_SIZE",
    "PAPER_PARAMETER_COUNTS",
    "TASKS",
]

#: Side of the input patch in voxels (paper Table 1: 23; see "Deviations from the paper").
PATCH_SIZE = 24
#: Index, along each axis, of the classified voxel in its patch: the patch of ``v`` covers ``v - 11 .. v + 12``.
PATCH_CENTRE = 11
#: Padding ``(before, after)`` along each axis that gives every voxel of a volume its whole patch.
PATCH_PADDING = (PATCH_CENTRE, PATCH_SIZE - 1 - PATCH_CENTRE)
#: Side of the last convolution's output grid: 3 x 3 x 3 cells of ``widths[2]`` features.
FEATURE_GRID = 3
#: Supported numbers of tasks (section 2.3).
TASKS = (1, 7, 27)
#: Weights (no biases, no batch norm) the paper's Table 2 gives for 25 classes and 6 coordinates, by task count.
PAPER_PARAMETER_COUNTS = {1: 2_687_200, 7: 2_764_000}

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def task_offsets(tasks: int) -> np.ndarray:
    """Offsets, in voxels, of the voxels the heads predict, relative to the patch centre (section 2.3).

    Parameters
    ----------
    tasks : {1, 7, 27}
        Number of tasks ``T``.

    Returns
    -------
    ndarray of int64, shape (T, 3)
        Row ``t`` is head ``t``'s offset ``(dD, dH, dW)`` in array-axis order.
        Row 0 is always the centre ``(0, 0, 0)``. For ``T = 7`` the face
        neighbours follow as ``-D, +D, -H, +H, -W, +W``; for ``T = 27`` the
        other 26 offsets of ``{-1, 0, 1}^3`` follow in lexicographic order.

    Raises
    ------
    ValueError
        If ``tasks`` is not 1, 7 or 27.

    Examples
    --------
    >>> task_offsets(7)[:3].tolist()
    [[0, 0, 0], [-1, 0, 0], [1, 0, 0]]
    """
    if tasks not in TASKS:
        raise ValueError(f"tasks must be one of {TASKS}, got {tasks}")
    offsets = [(0, 0, 0)]
    if tasks == 7:
        for axis in range(3):
            for step in (-1, 1):
                o = [0, 0, 0]
                o[axis] = step
                offsets.append(tuple(o))
    elif tasks == 27:
        offsets += [o for o in product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]
    return np.array(offsets, dtype=np.int64)


class DeepNAT(nn.Module):
    """The DeepNAT patch network (paper Table 1) with one output layer per task.

    Parameters
    ----------
    num_classes : int
        Outputs of each head ``C``, including background (paper: 25 for the
        second network of the hierarchy).
    tasks : {1, 7, 27}
        Number of heads ``T``; head ``t`` predicts the voxel at
        ``task_offsets(T)[t]`` from the patch centre (default 7, as in the paper).
    coordinates : int
        Per-voxel coordinates ``K`` concatenated to the first fully connected
        layer's output (paper: 6, three spectral and three Cartesian; 0 for none).
    widths : sequence of 3 int
        Filters of the three convolutions (paper: 32, 64, 64).
    fc_widths : sequence of 2 int
        Units of the two hidden fully connected layers (paper: 1024, 512).
    dropout : float
        Dropout probability after each hidden fully connected layer (paper: 0.5).

    Raises
    ------
    ValueError
        If ``num_classes < 2``, ``tasks`` is not 1, 7 or 27, ``coordinates < 0``
        or the widths have the wrong length.

    Notes
    -----
    Input: ``patches`` ``(N, 1, 24, 24, 24)`` float32 intensities (zero
    outside the image) and ``coordinates`` ``(N, K)`` float32 of the patch
    centres. Output: logits ``(N, T, C)`` float32. Receptive field: exactly
    the 24^3 patch (every pooling window holds two conv1 outputs per axis);
    the classified voxel is at index :data:`PATCH_CENTRE` = 11.

    The paper does not number this network's equations; the layers follow its
    Table 1 and section 2.3.

    Deviations from the paper
    -------------------------
    See the module docstring: a 24^3 patch (23^3 in the paper), no bias before batch normalisation, Glorot
    (fan-in + fan-out) Xavier initialisation, a single network (the
    hierarchy is :class:`DeepNATCascade`; no CRF).
    """

    def __init__(
        self,
        num_classes: int,
        tasks: int = 7,
        coordinates: int = 6,
        widths: Sequence[int] = (32, 64, 64),
        fc_widths: Sequence[int] = (1024, 512),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if tasks not in TASKS:
            raise ValueError(f"tasks must be one of {TASKS}, got {tasks}")
        if coordinates < 0:
            raise ValueError(f"coordinates must be >= 0, got {coordinates}")
        if len(widths) != 3 or len(fc_widths) != 2:
            raise ValueError(f"need 3 widths and 2 fc_widths, got {tuple(widths)} and {tuple(fc_widths)}")
        c1, c2, c3 = (int(w) for w in widths)
        f1, f2 = (int(w) for w in fc_widths)
        self.num_classes, self.tasks, self.coordinates = int(num_classes), int(tasks), int(coordinates)
        self.feature_channels = c3
        self.num_features = c3 * FEATURE_GRID**3
        self.conv1 = nn.Conv3d(1, c1, 7)
        self.conv2 = nn.Conv3d(c1, c2, 5, bias=False)
        self.norm2 = nn.BatchNorm3d(c2)
        self.conv3 = nn.Conv3d(c2, c3, 3, bias=False)
        self.norm3 = nn.BatchNorm3d(c3)
        self.fc1 = nn.Linear(self.num_features, f1)
        self.fc2 = nn.Linear(f1 + self.coordinates, f2, bias=False)
        self.norm_fc2 = nn.BatchNorm1d(f2)
        self.heads = nn.ModuleList(nn.Linear(f2, self.num_classes) for _ in range(self.tasks))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier (Glorot uniform) weights, zero biases, unit/zero batch-norm scale and shift."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
                m.reset_parameters()

    @property
    def offsets(self) -> np.ndarray:
        """``task_offsets(self.tasks)``, int64 ``(T, 3)``."""
        return task_offsets(self.tasks)

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        """Convolutional stage: patches ``(N, 1, 24, 24, 24)`` -> flat features ``(N, 1728)``.

        Parameters
        ----------
        patches : Tensor of float32, shape (N, 1, 24, 24, 24)
            Intensity patches centred on the voxels to classify.

        Returns
        -------
        Tensor of float32, shape (N, widths[2] * 27)
            The ``(N, widths[2], 3, 3, 3)`` output flattened channel-major.

        Raises
        ------
        ValueError
            If ``patches`` has another shape.
        """
        if patches.ndim != 5 or tuple(patches.shape[1:]) != (1,) + (PATCH_SIZE,) * 3:
            raise ValueError(f"expected patches of shape (N, 1, 24, 24, 24), got {tuple(patches.shape)}")
        x = F.relu(self.conv1(patches))  # 24 -> 18
        x = F.max_pool3d(x, 2, stride=2)  # 18 -> 9
        x = F.relu(self.norm2(self.conv2(x)))  # 9 -> 5
        x = F.relu(self.norm3(self.conv3(x)))  # 5 -> 3
        return torch.flatten(x, 1)

    def head(self, features: torch.Tensor, coordinates: torch.Tensor | None = None) -> torch.Tensor:
        """Fully connected stage: features and coordinates -> per-task logits.

        Parameters
        ----------
        features : Tensor of float32, shape (N, widths[2] * 27)
            From :meth:`features`.
        coordinates : Tensor of float32, shape (N, K), optional
            Coordinates of the patch centres; required when ``K > 0``, None
            or empty when ``K = 0``.

        Returns
        -------
        Tensor of float32, shape (N, T, C)
            Logits of head ``t`` in ``[:, t]``.

        Raises
        ------
        ValueError
            If the shapes are wrong or ``coordinates`` is missing or unexpected.
        """
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features of shape (N, {self.num_features}), got {tuple(features.shape)}")
        x = self.dropout(F.relu(self.fc1(features)))
        if self.coordinates:
            if coordinates is None:
                raise ValueError(f"this network needs coordinates of shape (N, {self.coordinates})")
            if tuple(coordinates.shape) != (features.shape[0], self.coordinates):
                raise ValueError(
                    f"expected coordinates of shape ({features.shape[0]}, {self.coordinates}), "
                    f"got {tuple(coordinates.shape)}"
                )
            x = torch.cat([x, coordinates.to(x.dtype)], dim=1)
        elif coordinates is not None and coordinates.numel():
            raise ValueError("this network takes no coordinates (coordinates=0)")
        x = self.dropout(F.relu(self.norm_fc2(self.fc2(x))))
        return torch.stack([h(x) for h in self.heads], dim=1)

    def forward(self, patches: torch.Tensor, coordinates: torch.Tensor | None = None) -> torch.Tensor:
        """Per-task logits ``(N, T, C)`` of patches ``(N, 1, 24, 24, 24)`` and coordinates ``(N, K)``.

        See :meth:`features` and :meth:`head` for the shapes and errors.

        Parameters
        ----------
        patches : torch.Tensor
            ``(N, 1, 24, 24, 24)`` float32 intensity patches, the classified voxel at index
            :data:`PATCH_CENTRE` along each axis.
        coordinates : torch.Tensor, optional
            ``(N, K)`` float32 coordinates of the patch centres; required when ``K > 0``, None or empty when
            ``K = 0``.

        Returns
        -------
        torch.Tensor
            Logits ``(N, T, C)`` float32, head ``t`` in ``[:, t]``.

        Raises
        ------
        ValueError
            If a shape is wrong or ``coordinates`` is missing or unexpected.
        """
        return self.head(self.features(patches), coordinates)


def cascade_log_probabilities(foreground_logits: torch.Tensor, structure_logits: torch.Tensor) -> torch.Tensor:
    """Combine the hierarchy's two networks into one distribution over all classes (section 2.2).

    ``P(background) = P1(background)`` and ``P(c) = P1(foreground) P2(c | foreground)`` for the
    structures ``c = 1 .. C-1``, head by head, computed in log space: the result is a log-probability
    whose exponentials sum to 1 over the classes, so it can stand wherever logits do (its softmax is
    itself; a logit shift ``b`` added to it gives ``P exp(b) / sum``).

    Parameters
    ----------
    foreground_logits : Tensor of float, shape (N, T, 2)
        Network 1's logits: background (0) and foreground (1).
    structure_logits : Tensor of float, shape (N, T, C - 1)
        Network 2's logits over the structures, class ``c`` at index ``c - 1``.

    Returns
    -------
    Tensor of float, shape (N, T, C)
        Log-probabilities; class 0 is background.

    Raises
    ------
    ValueError
        If the shapes disagree.

    Examples
    --------
    Network 1 gives background 0.2; network 2 splits the foreground 3 : 1 between two structures:

    >>> fg = torch.log(torch.tensor([[[0.2, 0.8]]]))
    >>> st = torch.log(torch.tensor([[[0.75, 0.25]]]))
    >>> [round(float(p), 4) for p in cascade_log_probabilities(fg, st).exp().ravel()]
    [0.2, 0.6, 0.2]
    """
    if (
        foreground_logits.ndim != 3
        or foreground_logits.shape[2] != 2
        or structure_logits.ndim != 3
        or tuple(structure_logits.shape[:2]) != tuple(foreground_logits.shape[:2])
    ):
        raise ValueError(
            f"expected foreground logits (N, T, 2) and structure logits (N, T, C - 1), got "
            f"{tuple(foreground_logits.shape)} and {tuple(structure_logits.shape)}"
        )
    log_fg = torch.log_softmax(foreground_logits, dim=2)
    log_structures = torch.log_softmax(structure_logits, dim=2)
    return torch.cat([log_fg[:, :, :1], log_fg[:, :, 1:] + log_structures], dim=2)


class DeepNATCascade(nn.Module):
    """DeepNAT's hierarchy (section 2.2): a foreground network, then a structure network, as one module.

    Parameters
    ----------
    num_classes : int
        Classes of the combined output ``C``, background included (paper: 26, i.e. 25
        structures); at least 3, so that network 2 has two structures to tell apart.
    tasks, coordinates, widths, fc_widths, dropout
        As for :class:`DeepNAT`; both networks get the same.

    Attributes
    ----------
    foreground : DeepNAT
        Network 1, 2 classes: background (0) and foreground (1).
    structures : DeepNAT
        Network 2, ``C - 1`` classes: structure ``c`` at index ``c - 1`` (no background class).

    Raises
    ------
    ValueError
        If ``num_classes < 3``, or as :class:`DeepNAT`.

    Notes
    -----
    Input as :class:`DeepNAT`: ``patches`` ``(N, 1, 24, 24, 24)`` and ``coordinates``
    ``(N, K)``. :meth:`forward` returns the combined log-probabilities ``(N, T, C)``
    (:func:`cascade_log_probabilities`), which the inference code treats as logits. Training reads
    the two networks separately (each on its own examples; see
    :mod:`brainseg.families.wachinger2018`). Both networks are evaluated on every voxel. The paper
    runs network 2 on network 1's foreground only, a hard decision; the arg-max of the combined
    distribution differs from it only where ``P1(fg) max_c P2(c) < P1(bg) < P1(fg)`` (an
    uncertain foreground voxel whose structure is uncertain too becomes background).

    Deviations from the paper
    -------------------------
    The two networks are trained jointly, by the sum of their losses, and stored as one module;
    their outputs are combined into one distribution per head (the paper hands network 1's
    foreground to network 2 and does not say how the probabilities meet in Eq. 3 and the CRF).
    """

    def __init__(
        self,
        num_classes: int,
        tasks: int = 7,
        coordinates: int = 6,
        widths: Sequence[int] = (32, 64, 64),
        fc_widths: Sequence[int] = (1024, 512),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 3:
            raise ValueError(f"the cascade needs num_classes >= 3 (background and two structures), got {num_classes}")
        shared = dict(tasks=tasks, coordinates=coordinates, widths=widths, fc_widths=fc_widths, dropout=dropout)
        self.foreground = DeepNAT(2, **shared)  # type: ignore[arg-type]
        self.structures = DeepNAT(num_classes - 1, **shared)  # type: ignore[arg-type]
        self.num_classes, self.tasks, self.coordinates = int(num_classes), int(tasks), int(coordinates)

    @property
    def offsets(self) -> np.ndarray:
        """``task_offsets(self.tasks)``, int64 ``(T, 3)``."""
        return task_offsets(self.tasks)

    def forward(self, patches: torch.Tensor, coordinates: torch.Tensor | None = None) -> torch.Tensor:
        """Combined log-probabilities ``(N, T, C)`` of patches ``(N, 1, 24, 24, 24)`` and coordinates ``(N, K)``.

        See :func:`cascade_log_probabilities`; the shapes and errors are :class:`DeepNAT`'s.

        Parameters
        ----------
        patches : torch.Tensor
            ``(N, 1, 24, 24, 24)`` float32 intensity patches, read by both networks.
        coordinates : torch.Tensor, optional
            ``(N, K)`` float32 coordinates of the patch centres; required when ``K > 0``.

        Returns
        -------
        torch.Tensor
            ``(N, T, C)`` float32 log-probabilities (section 2.2's hierarchy), class 0 the background.

        Raises
        ------
        ValueError
            If a shape is wrong or ``coordinates`` is missing or unexpected.
        """
        return cascade_log_probabilities(self.foreground(patches, coordinates), self.structures(patches, coordinates))


#: Either DeepNAT network: one step (:class:`DeepNAT`) or the hierarchy (:class:`DeepNATCascade`).
DeepNATModel = DeepNAT | DeepNATCascade


def paper_parameter_count(model: DeepNAT | DeepNATCascade) -> int:
    """Number of weights counted the paper's way (Table 2): no biases, no batch normalisation.

    Parameters
    ----------
    model : DeepNAT or DeepNATCascade

    Returns
    -------
    int
        Sum of the sizes of the convolution and fully connected weight
        tensors. 2,687,200 (one task) and 2,764,000 (seven tasks) for 25
        classes and 6 coordinates, as in the paper (see the module docstring);
        a cascade counts both of its networks.
    """
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Linear)))


def average_task_probabilities(per_task_probs: ArrayT, offsets: np.ndarray, valid_mask: ArrayT) -> ArrayT:
    """Combine the heads' probability maps by averaging the predictions that point at each voxel (Eq. 3).

    Head ``t`` evaluated at voxel ``v`` predicts voxel ``v + offsets[t]``, so
    its map is shifted by ``+offsets[t]``; each voxel then gets the mean of the
    shifted maps over the heads whose source voxel ``v`` is valid (inside the
    volume and ``valid_mask``). Near the volume or mask border fewer heads
    point at a voxel and the mean is over those available; a voxel no head
    points at gets 0 for every class.

    Parameters
    ----------
    per_task_probs : ndarray or Tensor of float, shape (T, C, D, H, W)
        Softmax probabilities of each head, at the voxel the patch is centred on.
    offsets : ndarray of int, shape (T, 3)
        Head offsets in voxels, e.g. :func:`task_offsets`.
    valid_mask : ndarray or Tensor of bool, shape (D, H, W)
        Voxels at which ``per_task_probs`` were computed (e.g. the brain mask).

    Returns
    -------
    ndarray or Tensor of float32, shape (C, D, H, W)
        Averaged probabilities; the same kind (NumPy or torch) as ``per_task_probs``.

    Raises
    ------
    ValueError
        If the shapes do not agree.

    Examples
    --------
    Two heads on a 1 x 1 x 3 volume, the second pointing one voxel along +W:

    >>> p = np.array([[0.2, 0.4, 0.6], [1.0, 0.0, 0.0]], np.float32).reshape(2, 1, 1, 1, 3)
    >>> average_task_probabilities(p, np.array([[0, 0, 0], [0, 0, 1]]), np.ones((1, 1, 3), bool)).ravel()
    array([0.2, 0.7, 0.3], dtype=float32)
    """
    is_numpy = isinstance(per_task_probs, np.ndarray)
    probs = torch.as_tensor(per_task_probs)
    valid = torch.as_tensor(valid_mask).to(device=probs.device, dtype=torch.bool)
    offsets = np.asarray(offsets, dtype=np.int64)
    if probs.ndim != 5 or offsets.shape != (probs.shape[0], 3) or tuple(valid.shape) != tuple(probs.shape[2:]):
        raise ValueError(
            f"expected per_task_probs (T, C, D, H, W), offsets (T, 3) and valid_mask (D, H, W), got "
            f"{tuple(probs.shape)}, {offsets.shape} and {tuple(valid.shape)}"
        )
    shape = tuple(probs.shape[2:])
    total = torch.zeros(probs.shape[1:], dtype=torch.float32, device=probs.device)
    count = torch.zeros(shape, dtype=torch.float32, device=probs.device)
    for t, offset in enumerate(offsets):
        if (np.abs(offset) >= np.array(shape)).any():
            continue  # this head points outside the volume from every voxel
        source = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset.tolist(), shape))
        target = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset.tolist(), shape))
        weight = valid[source].to(torch.float32)
        total[(slice(None),) + target] += probs[t][(slice(None),) + source].to(torch.float32) * weight
        count[target] += weight
    out = total / count.clamp(min=1)
    return out.cpu().numpy() if is_numpy else out  # type: ignore[return-value]
