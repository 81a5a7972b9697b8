"""MixNet, the 2-D multi-modality dilated residual network of Chen and Merhof (2018).

Reference
---------
L. Chen, D. Merhof, "MixNet: Multi-modality Mix Network for Brain Segmentation", in: Brainlesion:
Glioma, Multiple Sclerosis, Stroke and Traumatic Brain Injuries (BrainLes 2018, MICCAI workshop),
LNCS 11383, Springer 2019. doi:10.1007/978-3-030-11723-8_37, arXiv:2004.09832.
The authors' TensorFlow code: ``looooongChen/MRBrainS-Brain-Segmentation`` (``model.py`` and the released
checkpoints; read for the facts marked "code" below, none of it copied). The paper's full text was not at
hand: its facts here (Table 1, section 2.1) are those quoted in the issue that asked for this module.

A MixNet labels every pixel of a 2-D slice of ``M`` co-registered modalities (paper section 2.1,
Table 1). The default widths are the paper's; ``F`` is a unit's dilated-convolution width (Table 1's
filter count, see "Deviations") and ``H x W`` = 240 x 240 in the paper (Table 1's 120 x 120 after pooling)::

    InitUnit        conv 5x5 (bias) + max-pool 2, stride 2             (M or 1, H, W) -> (F, H/2, W/2)
    level 1..5      DilateResUnits with dilation 2, 1, 4, 1, 8,           (., H/2, W/2) -> (2F, H/2, W/2)
                    3, 2, 3, 2, 3 units (code); 2F outputs each
    merge           concatenate InitUnit and level outputs, ReLU
    OutputUnit      bilinear x2 to H x W; pyramid pooling (bins 2, 4, 6, 12: average, 1x1 conv to F,
                    ReLU, bilinear back); concatenate; conv 3x3 (bias) -> logits (num_classes, H, W)

    MixNetv1   one stack over the stacked modalities, F = 72
    MixNetv2   F = 24 per modality stream; odd levels (1, 3, 5) summarise: one level over the streams'
               concatenated features (width M F); even levels (2, 4) run per stream on the stream's
               features concatenated with the last summary (summaries fed back)
    MixNetv3   M independent streams, F = 24 each, joined only at the OutputUnit

A DilateResUnit ``(c_in -> c_out, width w, dilation d)`` is a pre-activation bottleneck (code)::

    BN, ReLU -> conv 1x1 (w) -> BN, ReLU -> conv 3x3, dilation d (w) -> BN, ReLU -> conv 1x1 (c_out)
    + the input itself, or conv 1x1 (c_out) of the activated input where c_in != c_out
    (no convolution biases in the unit; 2 c_in + c_in w + 4 w + 9 w^2 + w c_out [+ c_in c_out] parameters)

Parameter count
---------------
The paper gives none. For its setting (M = 3 modalities, the 11 MRBrainS18 classes, pooling and
pyramid pooling on; :data:`PARAMETER_COUNTS`), with U(c_in, w, c_out) the unit formula above:
``U(24, 24, 48) = 8,208``, ``U(48, 24, 48) = 7,680``, ``U(72, 72, 144) = 73,008``,
``U(144, 72, 144) = U(144, 72, 48) = 67,968``, ``U(72, 24, 48) = 11,760``, ``U(96, 24, 48) = 13,536``,
and an OutputUnit over ``c`` merged channels with pyramid width ``p`` has ``4 c p + 9 (c + 4 p) C + C``::

    v1  InitUnit  25 x 3 x 72 + 72                                =     5,472
        units     73,008 + 12 x 67,968                            =   888,624
        output    c = 72 + 10 x 72 = 792, p = 72: 228,096 + 9,721 x 11 = 335,027
        total                                                     = 1,229,123
    v2  InitUnits 3 x (25 x 24 + 24)                              =     1,872
        summary   level 1: 73,008 + 2 x 67,968; levels 3, 5: 3 x 67,968 each  =   616,752
        streams   3 x [(11,760 + 7,680) + (13,536 + 7,680)]       =   121,968
        output    c = 3 x 5 x 24 + 3 x 48 = 504, p = 24: 48,384 + 5,401 x 11 = 107,795
        total                                                     =   848,387
    v3  streams   3 x [624 + (8,208 + 2 x 7,680) + 10 x 7,680]    =   302,976
        output    c = 3 x 11 x 24 = 792, p = 24: 76,032 + 7,993 x 11 = 163,955
        total                                                     =   466,931

For T1 alone (M = 1), with the same formulas: v1 1,229,123 - 25 x 2 x 72 = 1,225,523; v3 100,992 +
25,344 + 3,241 x 11 = 161,987 (c = 264); v2 624 + 23,568 + 19,440 + 23,040 + 21,216 + 23,040 + 25,344 +
3,241 x 11 = 171,923 (its summaries are plain levels, its level 2 and 4 read 72 and 96 channels).
Check against the authors' released v3 checkpoint (``models/model_2013_pp``: 3 modalities, 9 classes,
dilations 2, 4, 8, 16, 32, which change no count): its graph has 792 merged and 888 output-convolution
channels and 450,945 trainable variables; ``MixNet(3, 3, 9)`` has 450,945 parameters.

Deviations from the paper
-------------------------
Readings of what the paper leaves open (``docs/mixnet.md`` gives the passages as the issue quotes them):

- Widths: section 2.1 gives the dilated layer "f/2" filters beside a unit width ``f``; we read Table 1's
  counts (72, 24) as that dilated width ``F = f/2``, so a unit outputs ``2F`` (the code's
  ``filter_num = 24`` with ``block_factor = 2``). Kernel 3 x 3, pre-activation BN/ReLU, bias-free unit
  convolutions, 1 x 1 projection of the activated input, and 3, 2, 3, 2, 3 units per level are the code's.
- v2 summary levels are ``M F`` wide inside and end at ``2F`` (the code's ``stream`` multiplier); the
  code's own v2 (``make_mixNet_mix``) does not run, so this wiring is ours: summary ``k`` reads the
  streams' latest features, stream level ``k`` reads ``[summary k-1, own features]``.
- Every version feeds its InitUnit output and all five levels to the OutputUnit (the code's v2 and v3
  do; its v1 leaves the InitUnit out). The merged features are upscaled before the pyramid pooling, whose
  bins are taken over the full-resolution slice (code: average pools of 120, 60, 40, 20 on 240 x 240).
- Any ``H x W``: pooling rounds up (``ceil_mode``; the code's pooling rounds down), so an odd-sized
  slice's last row or column is pooled alone; the upscaling doubles the grid and crops it to ``H x W``,
  which keeps every pixel on its pooling cell (resizing ``ceil(H/2)`` cells to ``H`` would not); the pyramid bins are adaptive average pools, which also work on maps
  smaller than 12 x 12 (bins then repeat pixels). With pyramid pooling an output pixel depends on at
  least the quarter of the slice holding it (the 2 x 2 bins; the whole slice for its central half), so
  the network is fully convolutional but not translation-equivariant.
- Dilations 2, 1, 4, 1, 8 are Table 1's; the released code uses 2, 4, 8, 16, 32.
- He-normal (fan-in) weights and zero biases; the code used variance scaling with scale 0.01.
  Batch-norm momentum is PyTorch's 0.1 (code: decay 0.997).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DilateResUnit",
    "InitUnit",
    "MixNet",
    "OutputUnit",
    "PyramidPooling",
    "receptive_field",
    "DILATIONS",
    "PARAMETER_COUNTS",
    "PYRAMID_BINS",
    "UNITS_PER_LEVEL",
    "VERSIONS",
    "WIDTHS",
]

#: MixNet versions (Table 1).
VERSIONS = (1, 2, 3)
#: Dilation of each level's units (Table 1).
DILATIONS = (2, 1, 4, 1, 8)
#: DilateResUnits per level (the authors' code; the paper does not say).
UNITS_PER_LEVEL = (3, 2, 3, 2, 3)
#: Pyramid pooling bins per side (section 2.1).
PYRAMID_BINS = (2, 4, 6, 12)
#: Default dilated-convolution width ``F`` by version (Table 1: 72 stacked, 24 per stream).
WIDTHS = {1: 72, 2: 24, 3: 24}
#: Trainable parameters for ``(version, modalities)`` with 11 classes and the defaults (module docstring).
PARAMETER_COUNTS = {
    (1, 3): 1_229_123,
    (2, 3): 848_387,
    (3, 3): 466_931,
    (1, 1): 1_225_523,
    (2, 1): 171_923,
    (3, 1): 161_987,
}


class InitUnit(nn.Module):
    """5 x 5 convolution and optional 2 x 2 max pooling, stride 2 (section 2.1, "InitUnit").

    Parameters
    ----------
    in_channels : int
        Modalities read: all ``M`` (MixNetv1) or 1 (a v2/v3 stream).
    out_channels : int
        Filters ``F``.
    pool : bool
        Pool 2 x 2 with stride 2, rounding up: ``(H, W)`` -> ``(ceil(H/2), ceil(W/2))``.

    Notes
    -----
    Input ``(B, in_channels, H, W)`` float32, output ``(B, out_channels, H', W')`` float32, not activated
    (the DilateResUnits start with batch norm and ReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 5, padding=2)
        self.pool = bool(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``.

        Parameters
        ----------
        x : torch.Tensor
            Slices ``(B, in_channels, H, W)`` float32.

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, H', W')`` float32, not activated; ``(H', W') = (ceil(H/2), ceil(W/2))`` when
            pooling, else ``(H, W)``.
        """
        x = self.conv(x)
        return F.max_pool2d(x, 2, stride=2, ceil_mode=True) if self.pool else x


class DilateResUnit(nn.Module):
    """Pre-activation bottleneck residual unit with a dilated middle convolution (section 2.1).

    Parameters
    ----------
    in_channels, out_channels : int
        ``c_in`` and ``c_out``; a 1 x 1 projection replaces the identity shortcut where they differ.
    width : int
        Filters ``w`` of the first 1 x 1 and the dilated convolution (section 2.1's ``f/2``).
    dilation : int
        Dilation ``d`` of the middle convolution (>= 1); padding keeps ``H x W``.
    kernel_size : int
        Side of the dilated convolution (odd; 3 in the authors' code).

    Raises
    ------
    ValueError
        If ``dilation < 1`` or ``kernel_size`` is not odd and positive.

    Notes
    -----
    Input ``(B, c_in, H, W)`` float32, output ``(B, c_out, H, W)`` float32 (not activated). Receptive
    field: ``(kernel_size - 1) dilation + 1`` pixels of its input grid.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, dilation: int, kernel_size: int = 3) -> None:
        super().__init__()
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        pad = dilation * (kernel_size - 1) // 2
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.reduce = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.dilated = nn.Conv2d(width, width, kernel_size, padding=pad, dilation=dilation, bias=False)
        self.norm3 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, out_channels, 1, bias=False)
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c_in, H, W)`` -> ``(B, c_out, H, W)``.

        Parameters
        ----------
        x : torch.Tensor
            Features ``(B, c_in, H, W)`` float32 (not activated: the unit starts with batch norm and ReLU).

        Returns
        -------
        torch.Tensor
            ``(B, c_out, H, W)`` float32: the bottleneck's output plus the shortcut (identity, or the 1 x 1
            projection of the activated input), not activated.
        """
        a = F.relu(self.norm1(x))
        r = self.reduce(a)
        r = self.dilated(F.relu(self.norm2(r)))
        r = self.expand(F.relu(self.norm3(r)))
        return r + (x if self.project is None else self.project(a))


def _level(
    in_channels: int, out_channels: int, width: int, units: int, dilation: int, kernel_size: int, mid: int
) -> nn.Sequential:
    """``units`` DilateResUnits: the first reads ``in_channels``, all but the last output ``mid``."""
    blocks, c = [], in_channels
    for k in range(units):
        c_out = out_channels if k == units - 1 else mid
        blocks.append(DilateResUnit(c, c_out, width, dilation, kernel_size))
        c = c_out
    return nn.Sequential(*blocks)


class PyramidPooling(nn.Module):
    """Pyramid pooling (section 2.1): per bin count, average pool, 1 x 1 conv, ReLU, bilinear back; concatenate.

    Parameters
    ----------
    in_channels : int
        Channels ``c`` of the pooled map.
    bins : sequence of int
        Bins per side of each branch (paper: 2, 4, 6, 12); empty for none (the input is returned).
    filters : int
        Outputs ``p`` of each branch's bias-free 1 x 1 convolution.

    Raises
    ------
    ValueError
        If a bin count is < 1.

    Notes
    -----
    Input ``(B, c, H, W)`` float32, output ``(B, c + len(bins) p, H, W)`` float32: the input followed by
    the branches in ``bins`` order. Bins are adaptive average pools (:func:`torch.nn.functional.adaptive_avg_pool2d`):
    bin ``i`` of ``n`` spans rows ``floor(i H / n)`` to ``ceil((i + 1) H / n)``, so bins overlap when ``n``
    does not divide ``H`` and repeat pixels when ``H < n``. Upsampling is bilinear with half-pixel centres
    (``align_corners=False``).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = PYRAMID_BINS, filters: int = 24) -> None:
        super().__init__()
        if any(int(b) < 1 for b in bins):
            raise ValueError(f"bins must be >= 1, got {tuple(bins)}")
        self.bins = tuple(int(b) for b in bins)
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, filters, 1, bias=False) for _ in self.bins)
        self.out_channels = in_channels + len(self.bins) * filters

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The branches alone: ``(B, c, H, W)`` -> one ``(B, p, H, W)`` per bin count, in ``bins`` order.

        Parameters
        ----------
        x : torch.Tensor
            The pooled map ``(B, c, H, W)`` float32.

        Returns
        -------
        list of torch.Tensor
            One ``(B, p, H, W)`` float32 per bin count (average pool to ``n x n``, 1 x 1 conv, ReLU, bilinear
            back to ``H x W``); empty when ``bins`` is.
        """
        size = x.shape[-2:]
        parts = []
        for n, conv in zip(self.bins, self.convs):
            y = F.relu(conv(F.adaptive_avg_pool2d(x, n)))
            parts.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c, H, W)`` -> ``(B, c + len(bins) p, H, W)``.

        Parameters
        ----------
        x : torch.Tensor
            The pooled map ``(B, c, H, W)`` float32.

        Returns
        -------
        torch.Tensor
            ``(B, c + len(bins) p, H, W)`` float32: ``x`` followed by :meth:`branches`.
        """
        return torch.cat([x, *self.branches(x)], dim=1)


class OutputUnit(nn.Module):
    """ReLU, optional bilinear upscaling, pyramid pooling and a 3 x 3 convolution to logits (section 2.1).

    Parameters
    ----------
    in_channels : int
        Merged feature channels ``c``.
    num_classes : int
        Logit channels ``C``.
    bins : sequence of int
        Pyramid bins per side (paper: 2, 4, 6, 12; empty: no pyramid pooling).
    pyramid_filters : int
        Outputs of each pyramid branch.

    Notes
    -----
    ``forward(x, size)``: ``x`` ``(B, c, h, w)`` float32, ``size`` the slice's ``(H, W)``; returns logits
    ``(B, C, H, W)`` float32. Where ``(h, w) != (H, W)`` (the InitUnit pooled, so ``h = ceil(H/2)``), ``x``
    is upscaled x2 (bilinear, half-pixel centres) and cropped to ``H x W``: pixels ``2i`` and ``2i + 1``
    stay on cell ``i``, whose pooling window they were.

    Raises
    ------
    ValueError
        (from ``forward``) If ``(h, w)`` is neither ``(H, W)`` nor ``(ceil(H/2), ceil(W/2))``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, bins: Sequence[int] = PYRAMID_BINS, pyramid_filters: int = 24
    ) -> None:
        super().__init__()
        self.pyramid = PyramidPooling(in_channels, bins, pyramid_filters)
        self.conv = nn.Conv2d(self.pyramid.out_channels, num_classes, 3, padding=1)

    def _upscaled(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """ReLU, then x2 bilinear and crop to ``size`` where the InitUnit pooled."""
        x = F.relu(x)
        (h, w), (height, width) = x.shape[-2:], size
        if (h, w) != (height, width):
            if (h, w) != (-(-height // 2), -(-width // 2)):
                raise ValueError(f"features of size {(h, w)} are neither {tuple(size)} nor half of it, rounded up")
            x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)[..., :height, :width]
        return x

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, c, h, w)`` merged features -> logits ``(B, C, H, W)``.

        Parameters
        ----------
        x : torch.Tensor
            Merged features ``(B, c, h, w)`` float32, before the ReLU.
        size : (int, int)
            The slices' ``(H, W)`` in pixels; ``(h, w)`` is ``(H, W)`` or ``(ceil(H/2), ceil(W/2))``.

        Returns
        -------
        torch.Tensor
            Logits ``(B, C, H, W)`` float32.

        Raises
        ------
        ValueError
            If ``(h, w)`` is neither ``(H, W)`` nor ``(ceil(H/2), ceil(W/2))``.
        """
        return self.conv(self.pyramid(self._upscaled(x, size)))

    def logits_at(self, x: torch.Tensor, size: tuple[int, int], pixels: torch.Tensor) -> torch.Tensor:
        """The logits of :meth:`forward` at some pixels only: ``(n, C)`` float32.

        Parameters
        ----------
        x : Tensor of float32, shape (B, c, h, w)
            Merged features, as for :meth:`forward`.
        size : (int, int)
            The slices' ``(H, W)``.
        pixels : Tensor of int64, shape (n,)
            Flat indices into ``(B, H, W)`` (``b H W + i W + j``), each in ``[0, B H W)``.

        Returns
        -------
        Tensor of float32, shape (n, C)
            ``forward(x, size)`` at ``pixels``, in their order (equal up to float rounding).

        Raises
        ------
        ValueError
            As :meth:`forward`.

        Notes
        -----
        Dense inference keeps only brain pixels, about a third of a slice cropped to the brain's box.
        The upscaling and the pyramid still see the whole slices (the pyramid's bins span them), but the
        concatenation and the 3 x 3 convolution to ``C`` classes, which dominates the network's cost at
        135 classes, run on the rows and columns that hold ``pixels`` plus one pixel around them (the
        convolution's reach), about half of the slices' area: inside that box the convolution sees what
        it sees on the whole slices, its zero padding only where the box meets the slices' edges.
        """
        up = self._upscaled(x, size)
        height, width = int(size[0]), int(size[1])
        pixels = pixels.to(torch.int64)
        if len(pixels) == 0:
            return up.new_zeros((0, self.conv.out_channels))
        b, i, j = pixels // (height * width), (pixels // width) % height, pixels % width
        r0, r1 = max(int(i.min()) - 1, 0), min(int(i.max()) + 2, height)
        c0, c1 = max(int(j.min()) - 1, 0), min(int(j.max()) + 2, width)
        parts = [up, *self.pyramid.branches(up)]
        logits = self.conv(torch.cat([t[..., r0:r1, c0:c1] for t in parts], dim=1))
        rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # a view when channels-last
        return rows.index_select(0, (b * (r1 - r0) + i - r0) * (c1 - c0) + j - c0)


class MixNet(nn.Module):
    """MixNetv1, v2 or v3 (paper section 2, Table 1) for ``M`` co-registered modalities.

    Parameters
    ----------
    version : {1, 2, 3}
        1: one stack over the stacked modalities; 2: a stream per modality with periodic summaries fed
        back; 3: independent streams joined at the OutputUnit.
    in_channels : int
        Modalities ``M`` (1 for T1 alone; 3 in the paper: T1, T1-IR, FLAIR).
    num_classes : int
        Classes ``C`` including background (>= 2).
    pool : bool
        Pool in the InitUnit (the paper's setting) and upscale in the OutputUnit.
    filters : int, optional
        Dilated-convolution width ``F`` (per stream in v2/v3); default :data:`WIDTHS` (72, 24, 24).
    expansion : int
        A unit's output width is ``expansion F`` (2; section 2.1's ``f``).
    dilations, units_per_level : sequence of int
        One entry per level (defaults :data:`DILATIONS`, :data:`UNITS_PER_LEVEL`).
    pyramid_bins : sequence of int
        Pyramid pooling bins per side (default :data:`PYRAMID_BINS`; empty for none).
    pyramid_filters : int, optional
        Outputs of each pyramid branch; default ``F``.
    kernel_size : int
        Side of the dilated convolutions (3).

    Raises
    ------
    ValueError
        On an unknown version, ``in_channels < 1``, ``num_classes < 2``, non-positive widths, or
        ``dilations`` and ``units_per_level`` of different or zero length or with entries < 1.

    Notes
    -----
    Input ``(B, M, H, W)`` float32 for any ``H, W >= 1``; output logits ``(B, C, H, W)`` float32.
    :meth:`features` gives the merged feature maps by name. Receptive field of the convolutions:
    :func:`receptive_field` (194 pixels for the defaults); pyramid pooling adds context up to the whole
    slice (at least the quarter holding the pixel).

    Deviations from the paper
    -------------------------
    See the module docstring: widths read as the dilated layer's, the code's unit layout and depths,
    our v2 wiring, InitUnit features merged in every version, adaptive bins, He initialisation.

    Examples
    --------
    >>> net = MixNet(3, in_channels=1, num_classes=4, filters=4).eval()
    >>> net(torch.zeros(2, 1, 37, 45)).shape
    torch.Size([2, 4, 37, 45])
    """

    def __init__(
        self,
        version: int = 2,
        in_channels: int = 1,
        num_classes: int = 11,
        pool: bool = True,
        filters: int | None = None,
        expansion: int = 2,
        dilations: Sequence[int] = DILATIONS,
        units_per_level: Sequence[int] = UNITS_PER_LEVEL,
        pyramid_bins: Sequence[int] = PYRAMID_BINS,
        pyramid_filters: int | None = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if len(dilations) != len(units_per_level) or not dilations or min(*dilations, *units_per_level) < 1:
            raise ValueError(
                f"need as many dilations as levels, all >= 1; got {tuple(dilations)} and {tuple(units_per_level)}"
            )
        width = WIDTHS[version] if filters is None else int(filters)
        p = width if pyramid_filters is None else int(pyramid_filters)
        if min(width, expansion, p) < 1:
            raise ValueError(f"filters, expansion and pyramid_filters must be >= 1, got {width}, {expansion}, {p}")
        self.version, self.in_channels, self.num_classes = int(version), int(in_channels), int(num_classes)
        self.pool, self.filters = bool(pool), width
        self.dilations, self.units_per_level = tuple(int(d) for d in dilations), tuple(int(n) for n in units_per_level)
        out, m = expansion * width, self.in_channels
        streams = 1 if version == 1 else m
        self.inits = nn.ModuleList(InitUnit(m if version == 1 else 1, width, pool) for _ in range(streams))
        self.levels = nn.ModuleList()
        prev = [width] * streams  # channels of each stream's latest features
        merged, summary = sum(prev), 0
        for k, (d, n) in enumerate(zip(self.dilations, self.units_per_level)):
            if version == 2 and k % 2 == 0:  # a summary over the streams, M F wide inside
                level = [_level(sum(prev), out, m * width, n, d, kernel_size, m * out)]
                summary = out
            else:
                fed = summary  # v2 stream levels read the last summary (0 channels in v1, v3)
                level = [_level(prev[s] + fed, out, width, n, d, kernel_size, out) for s in range(streams)]
                prev = [out] * streams
            self.levels.append(nn.ModuleList(level))
            merged += out * len(level)
        self.merged_channels = merged
        self.output = OutputUnit(merged, self.num_classes, pyramid_bins, p)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-in) convolution weights, zero biases, unit/zero batch-norm scale and shift."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_parameters()

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The feature maps the OutputUnit merges, by name, in merge order (before its ReLU).

        Parameters
        ----------
        x : Tensor of float32, shape (B, M, H, W)
            Co-registered modality slices.

        Returns
        -------
        dict of str to Tensor of float32, shape (B, c, H', W')
            ``(H', W') = (ceil(H/2), ceil(W/2))`` with pooling, else ``(H, W)``. Keys: v1 ``"init"``,
            ``"level1"`` ... ``"level5"``; v3 ``"init/s"``, ``"level1/s"`` ... per stream ``s`` (0-based
            modality index), stream by stream; v2 each stream's ``"init/s"`` and stream levels
            (``"level2/s"``, ``"level4/s"``), then the summaries ``"level1"``, ``"level3"``, ``"level5"``.

        Raises
        ------
        ValueError
            If ``x`` is not ``(B, M, H, W)`` with this network's ``M``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.version == 1:
            feats = {"init": self.inits[0](x)}
            h = feats["init"]
            for k, level in enumerate(self.levels, 1):
                h = feats[f"level{k}"] = level[0](h)
            return feats
        streams = range(self.in_channels)
        per = {s: {"init": unit(x[:, s : s + 1])} for s, unit in zip(streams, self.inits)}
        latest = [per[s]["init"] for s in streams]
        summaries: dict[str, torch.Tensor] = {}
        last_summary = None
        for k, level in enumerate(self.levels, 1):
            if self.version == 2 and k % 2 == 1:
                last_summary = summaries[f"level{k}"] = level[0](torch.cat(latest, dim=1))
            else:
                for s in streams:
                    inp = latest[s] if last_summary is None else torch.cat([last_summary, latest[s]], dim=1)
                    latest[s] = per[s][f"level{k}"] = level[s](inp)
        feats = {f"{name}/{s}": t for s in streams for name, t in per[s].items()}
        feats.update(summaries)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` float32 of slices ``x`` ``(B, M, H, W)`` float32 (see :meth:`features`).

        Parameters
        ----------
        x : torch.Tensor
            Co-registered modality slices ``(B, M, H, W)`` float32.

        Returns
        -------
        torch.Tensor
            Logits ``(B, C, H, W)`` float32 (no softmax).

        Raises
        ------
        ValueError
            If ``x`` is not ``(B, M, H, W)`` with this network's ``M`` (:meth:`features`).
        """
        merged = torch.cat(list(self.features(x).values()), dim=1)
        return self.output(merged, (x.shape[-2], x.shape[-1]))

    def logits_at(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, C)`` float32 of slices ``x`` ``(B, M, H, W)`` at ``pixels`` ``(n,)`` int64 only.

        ``pixels`` are flat indices into ``(B, H, W)``; the result equals ``forward(x)`` at them up to
        float rounding (:meth:`OutputUnit.logits_at`: the last convolution runs at those pixels only).

        Parameters
        ----------
        x : torch.Tensor
            Co-registered modality slices ``(B, M, H, W)`` float32.
        pixels : torch.Tensor
            ``(n,)`` integer flat indices into ``(B, H, W)`` (``b H W + i W + j``), each in ``[0, B H W)``.

        Returns
        -------
        torch.Tensor
            Logits ``(n, C)`` float32, in the order of ``pixels``.

        Raises
        ------
        ValueError
            As :meth:`features`.
        """
        merged = torch.cat(list(self.features(x).values()), dim=1)
        return self.output.logits_at(merged, (x.shape[-2], x.shape[-1]), pixels)


def receptive_field(
    dilations: Sequence[int] = DILATIONS,
    units_per_level: Sequence[int] = UNITS_PER_LEVEL,
    *,
    pool: bool = True,
    kernel_size: int = 3,
) -> int:
    """Side, in input pixels, of the square a MixNet output pixel sees through its convolutions.

    The deepest path (InitUnit, every unit of every level, OutputUnit) bounds the others, which skip
    units. A layer of kernel ``k`` and dilation ``d`` on a grid ``j`` input pixels apart adds
    ``(k - 1) d j``: the InitUnit's 5 x 5 convolution ``4``; its pooling ``1`` (then ``j = 2``); each
    unit ``(kernel_size - 1) d j``; the x2 bilinear upscaling ``j`` (an output pixel interpolates two
    neighbouring cells per axis; then ``j = 1``); the 3 x 3 output convolution ``2``. Pyramid pooling is
    left out: through its 2 x 2 bins a pixel of the slice's central half (along both axes) depends on the
    whole slice, and every pixel on at least the quarter of the slice holding it.

    Parameters
    ----------
    dilations, units_per_level : sequence of int
        Dilation and number of DilateResUnits of each level.
    pool : bool
        Whether the InitUnit pools (and the OutputUnit upscales).
    kernel_size : int
        Side of the dilated convolutions.

    Returns
    -------
    int
        Receptive field side in pixels of the input slice.

    Raises
    ------
    ValueError
        If the two sequences differ in length.

    Examples
    --------
    >>> receptive_field()  # Table 1's schedule, 3, 2, 3, 2, 3 units, pooling on
    194
    >>> receptive_field(pool=False)
    99
    """
    if len(dilations) != len(units_per_level):
        raise ValueError(f"one dilation per level: got {tuple(dilations)} and {tuple(units_per_level)}")
    size, jump = 5, 1
    if pool:
        size, jump = size + 1, 2
    size += sum((kernel_size - 1) * int(d) * int(n) * jump for d, n in zip(dilations, units_per_level))
    if pool:
        size += jump
    return size + 2
