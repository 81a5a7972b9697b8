"""BaseNet, the multi-scale 2-D patch network of Ganaye et al. (2018).

Reference
---------
P.-A. Ganaye, M. Sdika, H. Benoit-Cattin, "Towards integrating spatial
localization in convolutional neural networks for brain image segmentation",
IEEE ISBI 2018, pp. 621-625. doi:10.1109/ISBI.2018.8363652, arXiv:1804.04563.

BaseNet (paper section 2.1) classifies the centre voxel of three co-centred
2-D patches of 25 x 25 samples taken at three scales. Each scale has its own
convolutional branch; the branch outputs are concatenated, mixed by a 1 x 1
convolution and classified by three fully connected layers with ReLU and
dropout and a softmax over the 135 MICCAI 2012 classes.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BaseNet", "ConvBranch", "PATCH_SIZE", "PAPER_PARAMETER_COUNT"]

#: Side of every 2-D patch in samples (paper section 2.1).
PATCH_SIZE = 25
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


class BaseNet(nn.Module):
    """Multi-scale 2-D patch classifier of Ganaye et al. (2018), section 2.1.

    Parameters
    ----------
    num_classes : int
        Output classes including background (135 for MICCAI 2012).
    scales : sequence of int
        Subsampling factor of each branch's patch (default ``(1, 2, 3)``).
    branch_widths : sequence of 2 int
        Filters per branch convolution, see :class:`ConvBranch`.
    mix_channels : int
        Output channels of the 1 x 1 convolution over the concatenated branches.
    fc_widths : sequence of int
        Hidden fully connected layer sizes; a last layer maps to ``num_classes``.
    dropout : float
        Dropout probability after each hidden fully connected layer.
    batch_norm : bool
        Batch normalisation in the branches (a deviation; off by default).

    Notes
    -----
    Input: ``(B, S, 25, 25)`` float32, one channel per scale, intensities
    normalised as in :mod:`brainseg.preprocessing.intensity`. Output: logits
    ``(B, num_classes)``. The forward pass is split into :meth:`branch_features`
    and :meth:`head` so that dense inference can run the branches fully
    convolutionally and the head only on brain voxels.

    Deviations from the paper
    -------------------------
    See the module docstring.
    """

    def __init__(
        self,
        num_classes: int = 135,
        scales: Sequence[int] = (1, 2, 3),
        branch_widths: Sequence[int] = (32, 64),
        mix_channels: int = 64,
        fc_widths: Sequence[int] = (512, 256),
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.scales = tuple(int(s) for s in scales)
        self.branches = nn.ModuleList(ConvBranch(branch_widths, batch_norm) for _ in self.scales)
        concat = sum(b.out_channels for b in self.branches)
        self.mix = nn.Conv2d(concat, mix_channels, 1)
        layers: list[nn.Module] = []
        width = mix_channels * 3 * 3
        for hidden in fc_widths:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def branch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """Run every branch on its patch and concatenate, ``(B, sum c2, 3, 3)``."""
        if patches.ndim != 4 or patches.shape[1] != len(self.scales):
            raise ValueError(f"expected patches of shape (B, {len(self.scales)}, 25, 25), got {tuple(patches.shape)}")
        return torch.cat([b(patches[:, i : i + 1]) for i, b in enumerate(self.branches)], dim=1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Map concatenated branch features ``(B, C, 3, 3)`` to logits ``(B, num_classes)``."""
        x = F.relu(self.mix(features))
        return self.classifier(torch.flatten(x, 1))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Classify patch centres: ``(B, S, 25, 25)`` -> logits ``(B, num_classes)``."""
        return self.head(self.branch_features(patches))
