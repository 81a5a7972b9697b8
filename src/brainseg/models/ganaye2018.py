"""The multi-scale 2-D patch network of Ganaye et al. (2018) and its spatial priors.

Reference
---------
P.-A. Ganaye, M. Sdika, H. Benoit-Cattin, "Towards integrating spatial
localization in convolutional neural networks for brain image segmentation",
IEEE ISBI 2018, pp. 621-625. doi:10.1109/ISBI.2018.8363652, arXiv:1804.04563.

BaseNet (paper section 2.1) classifies the centre voxel of three co-centred
2-D patches of 25 x 25 samples taken at three scales. Each scale has its own
convolutional branch; the branch outputs are concatenated, mixed by a 1 x 1
convolution and classified by three fully connected layers with ReLU and
dropout and a softmax over the classes of the label table (135 for MICCAI 2012).

The spatial priors (sections 2.2-2.3) are optional branches of the same
network, :class:`GanayeNet`: DistBranch (distances in mm from the voxel to
``n**3`` landmarks of the registered volume, optionally through
inception-like convolutions, optionally an RBF; merged into the second fully
connected layer), ProbBranch (the probabilistic atlas' class vector through
three fully connected layers of size ``num_classes``, added to the logits),
and 3dBranch (a 15 x 15 x 15 patch through 3-D convolutions, merged into the
first fully connected layer). Auxiliary classifiers on the BaseNet and
DistBranch features give the auxiliary losses (section 3.3, with the
training recipe: SGD, momentum 0.9, poly decay).

Deviations from the paper
-------------------------
- The paper takes 25, 51 and 71 voxel wide patches and subsamples the two
  larger ones to 25 x 25. We use integer scale factors 1, 2 and 3: the scale-s
  patch samples every s-th voxel of the image box-averaged over s x s voxels,
  so it spans 25, 50 and 75 mm. Integer factors make the network exactly
  convertible into a fully convolutional one (dilated convolutions, see
  :mod:`brainseg.inference.dense`), which is what makes whole-volume inference
  fast; the box average stands in for the anti-aliasing of the subsampling.
- The paper does not list every filter count we could verify; the widths here
  (32-64-64 filters per branch, 64 after the 1 x 1 convolution, 512-256 fully
  connected units) are ours and are set in the configuration. Our parameter
  count is printed by ``brainseg info`` and compared with the paper's
  1,249,415 in the README.
- Optional batch normalisation after each convolution (off by default, as in
  the paper).
- The paper's text we could check gives no filter counts for DistBranch and
  3dBranch. DistBranch here: inception-like convolutions with kernels 1, 3
  and 5 (``distance_filters`` each) over the chosen representation, then one
  fully connected layer of ``distance_width`` units. 3dBranch:
  conv(1 -> 8)-pool-conv(8 -> 16)-conv(16 -> 16)-pool, kernel 3, giving 16
  features per voxel (small so that it runs densely over a whole volume).
  It adds 18,896 parameters (10,704 in the branch, 8,192 in the first fully
  connected layer), far fewer than the paper's 3dBranch: its Table 1 grows
  from 1,563,186 to 2,847,794 parameters with it, about 1.28 M. A wider one
  (``branch_3d_widths``) is a config setting; it costs dense inference time
  over the whole brain box.
- Without the RBF, distances are divided by 100 mm before the network (the
  paper feeds raw distances; the fixed scale keeps SGD stable at our
  learning rate).
- 3dBranch features enter the first fully connected layer (the paper says the
  branch is merged into the network without a place we could verify).
- None in the DistBranch choice: the paper's Table 2 compares raw distances,
  RBF, convolutions and both, and section 4 keeps convolutions without the
  RBF ("using the radial basis function to normalize does not really help,
  consequently we chose not to include it"); the defaults here
  (``rbf=False``, ``distance_rbf: false``) and our own Table 2
  (``docs/ablation.md``) agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BaseNet",
    "ConvBranch",
    "ConvBranch3d",
    "DistBranch",
    "GanayeNet",
    "ProbBranch",
    "PATCH_SIZE",
    "PATCH_SIZE_3D",
    "PAPER_PARAMETER_COUNT",
]

#: Side of every 2-D patch in samples (paper section 2.1).
PATCH_SIZE = 25
#: Side of the 3dBranch patch in voxels (paper section 2).
PATCH_SIZE_3D = 15
#: Number of trainable parameters the paper reports for BaseNet.
PAPER_PARAMETER_COUNT = 1_249_415


class ConvBranch(nn.Module):
    """One scale's convolutional branch: conv-pool-conv-conv-pool.

    Layers (kernel 3 x 3, no padding, ReLU after each convolution)::

        conv(1 -> c1) 25 -> 23, maxpool 2 -> 11, conv(c1 -> c2) -> 9,
        conv(c2 -> c2) -> 7, maxpool 2 -> 3

    Parameters
    ----------
    widths : sequence of 2 int
        Filters of the first convolution and of the two later ones.
    batch_norm : bool
        Insert a batch normalisation after each convolution.

    Notes
    -----
    In patch mode the input is ``(B, 1, 25, 25)`` and the output
    ``(B, c2, 3, 3)``. In dense mode (``dilation=s``) pooling runs with stride
    1 and every later layer is dilated, so the output at position ``q`` equals
    the patch-mode output cell ``(0, 0)`` of the scale-``s`` patch whose first
    sample is at ``q``; cell ``(i, j)`` is found at ``q + CELL_STRIDE * s * (i, j)``.
    """

    #: Distance between output cells, in patch samples.
    CELL_STRIDE = 4
    #: Input samples that one dense output position depends on, minus one.
    SPAN = 13

    def __init__(self, widths: Sequence[int] = (32, 64), batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2 = int(widths[0]), int(widths[1])
        self.out_channels = c2
        self.conv1 = nn.Conv2d(1, c1, 3)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.conv3 = nn.Conv2d(c2, c2, 3)
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        self.norm1, self.norm2, self.norm3 = norm(c1), norm(c2), norm(c2)

    def _conv(self, conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor, dilation: int) -> torch.Tensor:
        return F.relu(norm(F.conv2d(x, conv.weight, conv.bias, dilation=dilation)))

    def forward(self, x: torch.Tensor, dilation: int | None = None) -> torch.Tensor:
        """Run the branch on patches, or densely on a slice when ``dilation`` is set.

        Parameters
        ----------
        x : Tensor of float32, shape (B, 1, H, W)
            Patches (H = W = 25) or, in dense mode, image regions.
        dilation : int, optional
            The branch's scale factor ``s`` for dense mode; ``None`` for patches.

        Returns
        -------
        Tensor of float32
            ``(B, c2, 3, 3)`` for patches, ``(B, c2, H - 13 s, W - 13 s)`` dense.
        """
        if dilation is None:
            x = self._conv(self.conv1, self.norm1, x, 1)
            x = F.max_pool2d(x, 2)
            x = self._conv(self.conv2, self.norm2, x, 1)
            x = self._conv(self.conv3, self.norm3, x, 1)
            return F.max_pool2d(x, 2)
        s = int(dilation)
        x = self._conv(self.conv1, self.norm1, x, s)
        x = F.max_pool2d(x, 2, stride=1, dilation=s)
        x = self._conv(self.conv2, self.norm2, x, 2 * s)
        x = self._conv(self.conv3, self.norm3, x, 2 * s)
        return F.max_pool2d(x, 2, stride=1, dilation=2 * s)


class ConvBranch3d(nn.Module):
    """3dBranch: a 15 x 15 x 15 patch through 3-D convolutions (paper section 2).

    Layers (kernel 3, no padding, ReLU after each convolution)::

        conv(1 -> c1) 15 -> 13, maxpool 2 -> 6, conv(c1 -> c2) -> 4,
        conv(c2 -> c2) -> 2, maxpool 2 -> 1

    Parameters
    ----------
    widths : sequence of 2 int
        Filters of the first convolution and of the two later ones.
    batch_norm : bool
        Batch normalisation after each convolution.

    Notes
    -----
    Patch mode: ``(B, 1, 15, 15, 15)`` -> ``(B, c2)``. Dense mode
    (``dense=True``): pooling with stride 1 and later layers dilated, so that
    ``(B, 1, D, H, W)`` -> ``(B, c2, D - 13, H - 13, W - 13)`` and output
    ``q`` equals the patch-mode output of the patch whose first voxel is ``q``.
    """

    #: Dense mode shrinks each axis by this many voxels.
    SPAN = 13

    def __init__(self, widths: Sequence[int] = (8, 16), batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2 = int(widths[0]), int(widths[1])
        self.out_channels = c2
        self.conv1 = nn.Conv3d(1, c1, 3)
        self.conv2 = nn.Conv3d(c1, c2, 3)
        self.conv3 = nn.Conv3d(c2, c2, 3)
        norm = nn.BatchNorm3d if batch_norm else (lambda c: nn.Identity())
        self.norm1, self.norm2, self.norm3 = norm(c1), norm(c2), norm(c2)

    def forward(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """Run on patches ``(B, 1, 15, 15, 15)`` -> ``(B, c2)``, or densely on a region.

        Parameters
        ----------
        x : torch.Tensor
            Patches ``(B, 1, 15, 15, 15)`` float32 or, in dense mode, image regions ``(B, 1, D, H, W)``.
        dense : bool
            Dense mode: pooling with stride 1 and the later layers dilated (see the class notes).

        Returns
        -------
        torch.Tensor
            ``(B, c2)`` float32 for patches, ``(B, c2, D - 13, H - 13, W - 13)`` float32 dense.
        """
        d = 2 if dense else 1
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.max_pool3d(x, 2, stride=1) if dense else F.max_pool3d(x, 2)
        x = F.relu(self.norm2(F.conv3d(x, self.conv2.weight, self.conv2.bias, dilation=d)))
        x = F.relu(self.norm3(F.conv3d(x, self.conv3.weight, self.conv3.bias, dilation=d)))
        if dense:
            return F.max_pool3d(x, 2, stride=1, dilation=2)
        return torch.flatten(F.max_pool3d(x, 2), 1)


class _Inception(nn.Module):
    # Parallel same-padded convolutions of several kernel sizes, concatenated.
    def __init__(self, conv: type, in_channels: int, filters: int, kernels: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv(in_channels, filters, k, padding=k // 2) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(c(x)) for c in self.convs], dim=1)


class DistBranch(nn.Module):
    """DistBranch: distances to ``n**3`` landmarks -> a feature vector (paper sections 2.2, 3.3).

    Parameters
    ----------
    landmarks : int
        Landmarks per axis ``n`` (paper: 7).
    representation : {'vector', 'images', 'volume'}
        How the ``n**3`` distances are laid out for the convolutions: a 1-D
        signal of length ``n**3``, ``n`` images of ``n x n`` (as channels), or
        one ``n x n x n`` volume.
    conv : bool
        Inception-like convolutions (kernels 1, 3, 5) before the fully
        connected layer; without them the distances go straight into it.
    rbf : bool
        Squash distances with ``exp(-alpha d**2)`` (else divide by 100 mm;
        the paper's choice, section 4, is no RBF).
    alpha : float
        RBF coefficient in mm^-2 (paper: 0.01).
    filters : int
        Filters per kernel size.
    width : int
        Output features (units of the branch's fully connected layer).

    Raises
    ------
    ValueError
        If ``representation`` is not one of the three or ``landmarks`` < 1.

    Notes
    -----
    Input ``(B, n**3)`` float32 distances in mm, landmarks ordered as in
    :func:`brainseg.features.landmarks.landmark_grid`; output ``(B, width)``.
    """

    KERNELS = (1, 3, 5)
    #: Distances are divided by this many mm when the RBF is off.
    DISTANCE_SCALE_MM = 100.0

    def __init__(
        self,
        landmarks: int = 7,
        representation: str = "images",
        conv: bool = True,
        rbf: bool = False,
        alpha: float = 0.01,
        filters: int = 8,
        width: int = 128,
    ) -> None:
        super().__init__()
        if representation not in ("vector", "images", "volume"):
            raise ValueError(f"representation must be 'vector', 'images' or 'volume', got {representation!r}")
        if landmarks < 1:
            raise ValueError(f"landmarks must be >= 1, got {landmarks}")
        self.n, self.representation, self.use_conv, self.use_rbf, self.alpha = (
            int(landmarks),
            representation,
            bool(conv),
            bool(rbf),
            float(alpha),
        )
        self.width = int(width)
        n3 = self.n**3
        if not conv:
            self.conv = None
            flat = n3
        elif representation == "vector":
            self.conv = _Inception(nn.Conv1d, 1, filters, self.KERNELS)
            flat = len(self.KERNELS) * filters * n3
        elif representation == "images":
            self.conv = _Inception(nn.Conv2d, self.n, filters, self.KERNELS)
            flat = len(self.KERNELS) * filters * self.n**2
        else:
            self.conv = _Inception(nn.Conv3d, 1, filters, self.KERNELS)
            flat = len(self.KERNELS) * filters * n3
        self.fc = nn.Linear(flat, self.width)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """Map distances ``(B, n**3)`` in mm to features ``(B, width)``.

        Parameters
        ----------
        distances : torch.Tensor
            ``(B, n**3)`` float32 distances in mm from each voxel to the landmarks.

        Returns
        -------
        torch.Tensor
            ``(B, width)`` float32 features, after a ReLU.

        Raises
        ------
        ValueError
            If ``distances`` is not ``(B, n**3)``.
        """
        n = self.n
        if distances.ndim != 2 or distances.shape[1] != n**3:
            raise ValueError(f"expected distances of shape (B, {n**3}), got {tuple(distances.shape)}")
        x = torch.exp(-self.alpha * distances**2) if self.use_rbf else distances / self.DISTANCE_SCALE_MM
        if self.conv is not None:
            if self.representation == "vector":
                x = x[:, None, :]
            elif self.representation == "images":
                x = x.view(-1, n, n, n)
            else:
                x = x.view(-1, 1, n, n, n)
            x = torch.flatten(self.conv(x), 1)
        return F.relu(self.fc(x))


class ProbBranch(nn.Module):
    """ProbBranch: atlas class probabilities through three fully connected layers (paper section 2.3).

    Parameters
    ----------
    num_classes : int
        ``l``, the size of the input and of every layer.

    Notes
    -----
    Input ``(B, l)`` atlas probabilities (rows sum to 1); output ``(B, l)``,
    added to the BaseNet logits before the softmax. ReLU between layers, none
    after the last.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        c = int(num_classes)
        self.layers = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))

    def forward(self, atlas: torch.Tensor) -> torch.Tensor:
        """``(B, l)`` atlas probabilities -> ``(B, l)`` logit offsets.

        Parameters
        ----------
        atlas : torch.Tensor
            ``(B, l)`` float32 atlas class probabilities at the voxels (rows sum to 1).

        Returns
        -------
        torch.Tensor
            ``(B, l)`` float32 offsets added to the logits (section 2.3).
        """
        return self.layers(atlas)


class GanayeNet(nn.Module):
    """BaseNet with the optional spatial priors of Ganaye et al. (2018).

    Parameters
    ----------
    num_classes : int
        Output classes including background (135 for MICCAI 2012).
    scales : sequence of int
        Subsampling factor of each 2-D branch's patch (default ``(1, 2, 3)``).
    branch_widths : sequence of 2 int
        Filters per 2-D branch convolution, see :class:`ConvBranch`.
    mix_channels : int
        Output channels of the 1 x 1 convolution over the concatenated branches.
    fc_widths : sequence of int
        Hidden fully connected layer sizes; a last layer maps to ``num_classes``.
    dropout : float
        Dropout probability after each hidden fully connected layer.
    batch_norm : bool
        Batch normalisation in the convolutional branches (a deviation; off by default).
    dist_branch : DistBranch, optional
        Its features are concatenated to the input of the second fully
        connected layer (section 2.2).
    prob_branch : bool
        Add :class:`ProbBranch` outputs to the logits (section 2.3).
    branch_3d_widths : sequence of 2 int, optional
        Add a :class:`ConvBranch3d` of these widths, merged into the first
        fully connected layer.
    auxiliary : bool
        Build the auxiliary classifiers (a fully connected layer each) on the
        BaseNet features (first hidden layer) and on the DistBranch features
        (section 3.3); used by :meth:`forward_with_auxiliary` in training.

    Raises
    ------
    ValueError
        If ``num_classes`` < 2 or ``fc_widths`` is empty.

    Notes
    -----
    Inputs, for a batch of ``B`` voxels: ``patches`` ``(B, S, 25, 25)``
    float32 (normalised intensities); ``distances`` ``(B, n**3)`` float32 in
    mm; ``atlas`` ``(B, num_classes)`` float32; ``patches_3d``
    ``(B, 1, 15, 15, 15)`` float32. Output: logits ``(B, num_classes)``.
    The forward pass is split into :meth:`branch_features` (run fully
    convolutionally by dense inference) and :meth:`classify` (run per voxel).
    """

    def __init__(
        self,
        num_classes: int,
        scales: Sequence[int] = (1, 2, 3),
        branch_widths: Sequence[int] = (32, 64),
        mix_channels: int = 64,
        fc_widths: Sequence[int] = (512, 256),
        dropout: float = 0.5,
        batch_norm: bool = False,
        dist_branch: DistBranch | None = None,
        prob_branch: bool = False,
        branch_3d_widths: Sequence[int] | None = None,
        auxiliary: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not fc_widths:
            raise ValueError("fc_widths must name at least one hidden layer")
        self.num_classes = int(num_classes)
        self.scales = tuple(int(s) for s in scales)
        self.branches = nn.ModuleList(ConvBranch(branch_widths, batch_norm) for _ in self.scales)
        concat = sum(b.out_channels for b in self.branches)
        self.mix = nn.Conv2d(concat, mix_channels, 1)
        self.branch_3d = ConvBranch3d(branch_3d_widths, batch_norm) if branch_3d_widths else None
        self.dist_branch = dist_branch
        self.prob_branch = ProbBranch(num_classes) if prob_branch else None
        width = mix_channels * 3 * 3 + (self.branch_3d.out_channels if self.branch_3d else 0)
        self.fc = nn.ModuleList()
        for k, hidden in enumerate(fc_widths):
            extra = dist_branch.width if (dist_branch is not None and k == 1) else 0
            self.fc.append(nn.Linear(width + extra, hidden))
            width = hidden
        extra = dist_branch.width if (dist_branch is not None and len(fc_widths) == 1) else 0
        self.out = nn.Linear(width + extra, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.aux_base = nn.Linear(fc_widths[0], num_classes) if auxiliary else None
        self.aux_dist = nn.Linear(dist_branch.width, num_classes) if (auxiliary and dist_branch) else None

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the inputs this network reads besides ``patches``."""
        names = []
        if self.dist_branch is not None:
            names.append("distances")
        if self.prob_branch is not None:
            names.append("atlas")
        if self.branch_3d is not None:
            names.append("patches_3d")
        return tuple(names)

    def branch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """Run every 2-D branch on its patch and concatenate, ``(B, sum c2, 3, 3)``.

        Parameters
        ----------
        patches : torch.Tensor
            ``(B, S, 25, 25)`` float32, one channel per scale in :attr:`scales` order.

        Returns
        -------
        torch.Tensor
            ``(B, S c2, 3, 3)`` float32, the branches' outputs concatenated along the channels.

        Raises
        ------
        ValueError
            If ``patches`` is not 4-D with one channel per scale.
        """
        if patches.ndim != 4 or patches.shape[1] != len(self.scales):
            raise ValueError(f"expected patches of shape (B, {len(self.scales)}, 25, 25), got {tuple(patches.shape)}")
        return torch.cat([b(patches[:, i : i + 1]) for i, b in enumerate(self.branches)], dim=1)

    def mixed_features(self, features: torch.Tensor) -> torch.Tensor:
        """1 x 1 mixing of branch features ``(B, C, 3, 3)`` -> flat ``(B, M * 9)`` (channel-major).

        Parameters
        ----------
        features : torch.Tensor
            :meth:`branch_features` output ``(B, C, 3, 3)`` float32.

        Returns
        -------
        torch.Tensor
            ``(B, M * 9)`` float32, ``M`` = ``mix_channels``, after a ReLU.
        """
        return torch.flatten(F.relu(self.mix(features)), 1)

    def _check(self, name: str, value: torch.Tensor | None) -> torch.Tensor:
        if value is None:
            raise ValueError(f"this network needs the input {name!r} (it has {', '.join(self.inputs)})")
        return value

    def classify(
        self,
        flat_2d: torch.Tensor,
        distances: torch.Tensor | None = None,
        atlas: torch.Tensor | None = None,
        features_3d: torch.Tensor | None = None,
        dist_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fully connected part: mixed 2-D features and priors -> logits and auxiliary logits.

        Parameters
        ----------
        flat_2d : Tensor, shape (B, M * 9)
            From :meth:`mixed_features`.
        distances, atlas : Tensor, optional
            See the class notes; required when the branch exists.
        features_3d : Tensor, shape (B, c3), optional
            :class:`ConvBranch3d` output.
        dist_features : Tensor, shape (B, distance_width), optional
            The :class:`DistBranch` output, when already known (dense inference
            reads it from :mod:`brainseg.inference.branch_cache`); replaces
            ``distances``.

        Returns
        -------
        logits : Tensor, shape (B, num_classes)
        auxiliary : dict of str to Tensor
            ``'base'`` and ``'dist'`` auxiliary logits, when built.
        """
        x = flat_2d
        if self.branch_3d is not None:
            x = torch.cat([x, self._check("patches_3d", features_3d)], dim=1)
        d = None
        if self.dist_branch is not None:
            d = dist_features if dist_features is not None else self.dist_branch(self._check("distances", distances))
        auxiliary: dict[str, torch.Tensor] = {}
        for k, layer in enumerate(self.fc):
            if k == 1 and d is not None:
                x = torch.cat([x, d], dim=1)
            x = self.dropout(F.relu(layer(x)))
            if k == 0 and self.aux_base is not None:
                auxiliary["base"] = self.aux_base(x)
        if len(self.fc) == 1 and d is not None:
            x = torch.cat([x, d], dim=1)
        logits = self.out(x)
        if self.prob_branch is not None:
            logits = logits + self.prob_branch(self._check("atlas", atlas))
        if self.aux_dist is not None and d is not None:
            auxiliary["dist"] = self.aux_dist(d)
        return logits, auxiliary

    def forward_with_auxiliary(
        self,
        patches: torch.Tensor,
        distances: torch.Tensor | None = None,
        atlas: torch.Tensor | None = None,
        patches_3d: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and auxiliary logits for a batch (see the class notes for shapes).

        Parameters
        ----------
        patches : torch.Tensor
            ``(B, S, 25, 25)`` float32 2-D patches, one per scale.
        distances : torch.Tensor, optional
            ``(B, n**3)`` float32 landmark distances in mm; required with a DistBranch.
        atlas : torch.Tensor, optional
            ``(B, num_classes)`` float32 atlas probabilities; required with a ProbBranch.
        patches_3d : torch.Tensor, optional
            ``(B, 1, 15, 15, 15)`` float32 3-D patches; required with a 3dBranch.

        Returns
        -------
        logits : torch.Tensor
            ``(B, num_classes)`` float32.
        auxiliary : dict of str to torch.Tensor
            ``'base'`` and ``'dist'`` auxiliary logits ``(B, num_classes)`` (section 3.3), when built.

        Raises
        ------
        ValueError
            If ``patches`` has the wrong shape or a branch's input is missing.
        """
        features_3d = self.branch_3d(self._check("patches_3d", patches_3d)) if self.branch_3d is not None else None
        flat = self.mixed_features(self.branch_features(patches))
        return self.classify(flat, distances, atlas, features_3d)

    def forward(
        self,
        patches: torch.Tensor,
        distances: torch.Tensor | None = None,
        atlas: torch.Tensor | None = None,
        patches_3d: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classify patch centres -> logits ``(B, num_classes)``.

        Parameters
        ----------
        patches : torch.Tensor
            ``(B, S, 25, 25)`` float32 2-D patches, one per scale.
        distances : torch.Tensor, optional
            ``(B, n**3)`` float32 landmark distances in mm; required with a DistBranch.
        atlas : torch.Tensor, optional
            ``(B, num_classes)`` float32 atlas probabilities; required with a ProbBranch.
        patches_3d : torch.Tensor, optional
            ``(B, 1, 15, 15, 15)`` float32 3-D patches; required with a 3dBranch.

        Returns
        -------
        torch.Tensor
            Logits ``(B, num_classes)`` float32 (no softmax).

        Raises
        ------
        ValueError
            If ``patches`` has the wrong shape or a branch's input is missing.
        """
        return self.forward_with_auxiliary(patches, distances, atlas, patches_3d)[0]


def BaseNet(  # noqa: N802  (a factory named like the paper's network)
    num_classes: int,
    scales: Sequence[int] = (1, 2, 3),
    branch_widths: Sequence[int] = (32, 64),
    mix_channels: int = 64,
    fc_widths: Sequence[int] = (512, 256),
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> GanayeNet:
    """BaseNet (paper section 2.1): a :class:`GanayeNet` without spatial priors.

    Parameters
    ----------
    num_classes, scales, branch_widths, mix_channels, fc_widths, dropout, batch_norm
        See :class:`GanayeNet`.

    Returns
    -------
    GanayeNet
        Input ``(B, S, 25, 25)`` float32, output logits ``(B, num_classes)``.
    """
    return GanayeNet(num_classes, scales, branch_widths, mix_channels, fc_widths, dropout, batch_norm)
