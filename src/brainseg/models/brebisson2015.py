"""The multi-pathway patch network of de Brébisson and Montana (2015).

Reference
---------
A. de Brébisson, G. Montana, "Deep neural networks for anatomical brain
segmentation", CVPR Workshops 2015, pp. 20-28. arXiv:1502.02445.

The paper calls its network "SegNet"; ours is :class:`BrebissonNet`, since SegNet
(Badrinarayanan et al.) names a different, well-known network.

One voxel is classified from up to eight inputs (paper Fig. 1, sections 3.1-3.2, 4), each through its
own pathway, the pathways' outputs concatenated ("merged") and classified by fully connected layers::

    3 orthogonal 2-D patches, 29 x 29   conv 5x5x20 (shared by the three) + pool 2   29 -> 25 -> 12
    (sagittal, coronal, axial)          conv 5x5x50 + pool 2                         12 ->  8 ->  4
                                        = 50 x 4 x 4 = 800 features each
    3 compressed 2-D patches, 87 x 87   the same, with their own shared first layer  800 features each
    averaged in 3 x 3 blocks to 29 x 29
    a 3-D patch, 13 x 13 x 13           FC 1000, FC 1000 (fully connected)           1,000 features
    134 distances to region centroids   unchanged (a Gaussian noise layer in training) 134 features
    merge                               6 x 800 + 1,000 + 134 = 5,934 features
                                        FC 3000, FC 3000, softmax over 135 classes

Every layer but the softmax is followed by a ReLU; pooling is 2 x 2 max pooling, stride 2.

Parameter count
---------------
The paper (section 4) gives 30,565,555 parameters; the widths are in its Fig. 1 and in the authors'
released code (``adbrebs/brain_segmentation``, ``NetworkUltimateConv``), from which the facts above
were read. Counting each patch's first layer once per patch, as the paper does although three
patches share it::

    per 2-D patch   conv 5x5x1x20 + 20 = 520;  conv 5x5x20x50 + 50 = 25,050    6 x 25,570 =    153,420
    3-D pathway     2,197 x 1,000 + 1,000;  1,000 x 1,000 + 1,000                            3,199,000
    merge           5,934 x 3,000 + 3,000;  3,000 x 3,000 + 3,000;  3,000 x 135 + 135       27,213,135
    total                                                                                   30,565,555

(:func:`paper_parameter_count`; the module itself holds 2,080 fewer, the four repeated first layers).

Deviations from the paper
-------------------------
- The inputs a variant reads are a setting (``pathways``), so the single-input and combined models of
  the paper's Table 1 are this one class: ``patch_2d`` (one axial 29 x 29 patch, its own first layer),
  ``orthogonal``, ``compressed``, ``patch_3d``, ``coordinates`` (x, y, z) and ``centroids``. Every
  variant keeps the merge layers (FC 3000, FC 3000); the authors' single-input networks used smaller
  heads of their own (e.g. FC 1000 for one patch).
- The widths are settings too (the paper's are the defaults), so that a smaller network can be
  trained on a CPU; a shipped model states the widths it used.
- Weights are initialised with Glorot's uniform rule and zero biases (the authors' code drew its own
  uniform ranges).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BrebissonNet",
    "BrebissonTwoStage",
    "GaussianNoise",
    "PlanarPathway",
    "PATHWAYS",
    "PAPER_PARAMETER_COUNT",
    "paper_parameter_count",
]

#: The inputs a :class:`BrebissonNet` may read, in the order their features are merged.
PATHWAYS = ("patch_2d", "orthogonal", "compressed", "patch_3d", "coordinates", "centroids")
#: Trainable parameters the paper reports (section 4).
PAPER_PARAMETER_COUNT = 30_565_555


class GaussianNoise(nn.Module):
    """Add zero-mean Gaussian noise of standard deviation ``sigma`` in training mode only (paper section 3.4).

    Parameters
    ----------
    sigma : float
        Standard deviation, in the units of the input (the scaled centroid distances); >= 0.

    Raises
    ------
    ValueError
        If ``sigma`` < 0.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + N(0, sigma^2)`` while training, ``x`` unchanged in eval mode.

        Parameters
        ----------
        x : torch.Tensor
            Any shape and floating dtype (here the centroid distances ``(B, K)`` float32).

        Returns
        -------
        torch.Tensor
            The same shape and dtype as ``x``.
        """
        if self.training and self.sigma > 0:
            return x + self.sigma * torch.randn_like(x)
        return x


class PlanarPathway(nn.Module):
    """One 2-D patch's pathway: conv 5x5 + ReLU + pool 2, twice (29 -> 25 -> 12 -> 8 -> 4).

    Parameters
    ----------
    first : nn.Conv2d
        The first convolution (1 -> c1, 5 x 5), shared with the other patches of its kind.
    width : int
        Filters of the second convolution ``c2`` (paper: 50).
    shared : bool
        ``first`` is registered by the network that owns it (once for the three patches, so that a
        state dict holds each weight once); this pathway only refers to it.

    Notes
    -----
    Input ``(B, 1, 29, 29)`` float32, output ``(B, c2 * 16)`` (channel-major).
    """

    def __init__(self, first: nn.Conv2d, width: int, shared: bool = False) -> None:
        super().__init__()
        if shared:
            self.__dict__["first"] = first  # a plain attribute: not a submodule of this pathway
        else:
            self.first = first
        self.second = nn.Conv2d(first.out_channels, int(width), 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 29, 29)`` -> ``(B, c2 * 16)``.

        Parameters
        ----------
        x : torch.Tensor
            One 2-D patch per voxel, ``(B, 1, P, P)`` float32 (paper: P = 29).

        Returns
        -------
        torch.Tensor
            ``(B, c2 * s * s)`` float32, ``s = ((P - 4) // 2 - 4) // 2`` (4 for P = 29), channel-major.
        """
        x = F.max_pool2d(F.relu(self.first(x)), 2)
        x = F.max_pool2d(F.relu(self.second(x)), 2)
        return torch.flatten(x, 1)


class BrebissonNet(nn.Module):
    """The network of de Brébisson and Montana (2015), Fig. 1, with the pathways a setting.

    Parameters
    ----------
    num_classes : int
        Softmax outputs including background (135 for MICCAI 2012).
    pathways : sequence of str
        Inputs read, a subset of :data:`PATHWAYS` (default: the full network's four kinds).
    num_centroids : int
        Centroid distances ``K`` (134 for MICCAI 2012: every structure but the background).
    widths_2d : sequence of 2 int
        Filters of the 2-D pathways' two convolutions (paper: 20, 50).
    fc_3d : sequence of int
        Units of the 3-D pathway's fully connected layers (paper: 1000, 1000).
    fc : sequence of int
        Units of the merged fully connected layers (paper: 3000, 3000).
    noise_sigma : float
        Standard deviation of the noise added to the centroid distances in training (authors' code: 0.2).
    patch_2d, patch_3d : int
        Patch sides (paper: 29 and 13). Pooling drops a last, partial window, as the authors' Theano
        code did (29 -> conv 25 -> pool 12: the patch's last row and column reach no output).

    Raises
    ------
    ValueError
        On an unknown or empty pathway set, or sizes that leave no features.

    Notes
    -----
    Inputs for a batch of ``B`` voxels (only those of the chosen pathways): ``patch_2d`` ``(B, 1, P, P)``,
    ``orthogonal`` and ``compressed`` ``(B, 3, P, P)`` (sagittal, coronal, axial), ``patch_3d``
    ``(B, 1, Q, Q, Q)``, ``coordinates`` ``(B, 3)``, ``centroids`` ``(B, K)``, all float32. Output: logits
    ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 135,
        pathways: Sequence[str] = ("orthogonal", "compressed", "patch_3d", "centroids"),
        num_centroids: int = 134,
        widths_2d: Sequence[int] = (20, 50),
        fc_3d: Sequence[int] = (1000, 1000),
        fc: Sequence[int] = (3000, 3000),
        noise_sigma: float = 0.2,
        patch_2d: int = 29,
        patch_3d: int = 13,
    ) -> None:
        super().__init__()
        unknown = set(pathways) - set(PATHWAYS)
        if unknown or not pathways:
            raise ValueError(f"pathways must be a non-empty subset of {PATHWAYS}, got {tuple(pathways)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        side = ((patch_2d - 4) // 2 - 4) // 2  # pooling drops a last, partial window (29 -> 25 -> 12)
        if side < 1 and {"patch_2d", "orthogonal", "compressed"} & set(pathways):
            raise ValueError(f"a 2-D patch of {patch_2d} leaves no features; use at least 14")
        self.pathways = tuple(p for p in PATHWAYS if p in pathways)
        self.num_classes, self.num_centroids = int(num_classes), int(num_centroids)
        self.patch_2d, self.patch_3d = int(patch_2d), int(patch_3d)
        c1, c2 = (int(w) for w in widths_2d)
        planar = c2 * side * side
        merged = 0
        if "patch_2d" in self.pathways:
            self.single = PlanarPathway(nn.Conv2d(1, c1, 5), c2)
            merged += planar
        for kind in ("orthogonal", "compressed"):
            if kind in self.pathways:
                first = nn.Conv2d(1, c1, 5)
                setattr(self, f"{kind}_first", first)  # registered once, shared by the three patches
                setattr(self, kind, nn.ModuleList(PlanarPathway(first, c2, shared=True) for _ in range(3)))
                merged += 3 * planar
        if "patch_3d" in self.pathways:
            layers, width = [], self.patch_3d**3
            for units in fc_3d:
                layers += [nn.Linear(width, int(units)), nn.ReLU()]
                width = int(units)
            self.volume = nn.Sequential(nn.Flatten(), *layers)
            merged += width
        if "coordinates" in self.pathways:
            merged += 3
        if "centroids" in self.pathways:
            self.noise = GaussianNoise(noise_sigma)
            merged += self.num_centroids
        layers, width = [], merged
        for units in fc:
            layers += [nn.Linear(width, int(units)), nn.ReLU()]
            width = int(units)
        self.merge = nn.Sequential(*layers)
        self.out = nn.Linear(width, self.num_classes)
        self.num_merged = merged
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def merged_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The concatenated pathway outputs ``(B, num_merged)`` (see the class notes for the inputs).

        Parameters
        ----------
        **inputs : torch.Tensor
            One float32 tensor per name in :attr:`pathways` (shapes in the class notes); other names are
            ignored.

        Returns
        -------
        torch.Tensor
            ``(B, num_merged)`` float32: the pathways' features in the order of :data:`PATHWAYS` (the "merge" of
            paper Fig. 1). The centroid distances pass through :class:`GaussianNoise`, active in training only.

        Raises
        ------
        ValueError
            If an input of a chosen pathway is missing or has the wrong shape.
        """
        parts = []
        for name in self.pathways:
            x = inputs.get(name)
            if x is None:
                raise ValueError(f"this network reads {', '.join(self.pathways)}: {name!r} is missing")
            if name == "patch_2d":
                self._shape(name, x, (1, self.patch_2d, self.patch_2d))
                parts.append(self.single(x))
            elif name in ("orthogonal", "compressed"):
                self._shape(name, x, (3, self.patch_2d, self.patch_2d))
                parts += [path(x[:, k : k + 1]) for k, path in enumerate(getattr(self, name))]
            elif name == "patch_3d":
                self._shape(name, x, (1, self.patch_3d, self.patch_3d, self.patch_3d))
                parts.append(self.volume(x))
            elif name == "coordinates":
                self._shape(name, x, (3,))
                parts.append(x)
            else:
                self._shape(name, x, (self.num_centroids,))
                parts.append(self.noise(x))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _shape(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"expected {name} of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of the inputs named by :attr:`pathways`.

        Parameters
        ----------
        **inputs : torch.Tensor
            One float32 tensor per name in :attr:`pathways` (shapes in the class notes).

        Returns
        -------
        torch.Tensor
            Logits ``(B, num_classes)`` float32 (no softmax).

        Raises
        ------
        ValueError
            If an input of a chosen pathway is missing or has the wrong shape (:meth:`merged_features`).
        """
        return self.out(self.merge(self.merged_features(**inputs)))


class BrebissonTwoStage(nn.Module):
    """The full network and the first-stage network without the centroid pathway (paper section 3.4).

    The centroid distances of a voxel need the brain's region centroids, unknown at inference: the
    first-stage network segments without them, the full network then iterates with the centroids of
    the latest segmentation (:func:`brainseg.inference.two_stage.iterate_centroids`). The authors
    trained the two networks separately; here they are trained together, each on the same batches
    with its own cross-entropy (:meth:`brainseg.families.brebisson2015.BrebissonFamily.loss`).

    Parameters
    ----------
    full : BrebissonNet
        Reads the centroid distances.
    first : BrebissonNet
        Reads no centroid distances: the full network's other pathways, or others of its own
        (Table 1's centroid-only row needs one).

    Raises
    ------
    ValueError
        If ``full`` has no centroid pathway, ``first`` has one, or their classes differ.

    Notes
    -----
    ``forward`` is the full network's (logits ``(B, num_classes)``), so that the family-agnostic code
    sees the model's main output; :attr:`first` is called by name.
    """

    def __init__(self, full: BrebissonNet, first: BrebissonNet) -> None:
        super().__init__()
        if "centroids" not in full.pathways or "centroids" in first.pathways:
            raise ValueError("the full network must read the centroid distances and the first-stage network not")
        if full.num_classes != first.num_classes:
            raise ValueError(f"both networks need the same classes, got {full.num_classes} and {first.num_classes}")
        self.full, self.first = full, first
        self.num_classes, self.num_centroids = full.num_classes, full.num_centroids
        self.pathways = full.pathways

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The full network's logits ``(B, num_classes)``.

        Parameters
        ----------
        **inputs : torch.Tensor
            The full network's inputs, one float32 tensor per name in :attr:`pathways` (centroid distances
            included; shapes in :class:`BrebissonNet`'s notes).

        Returns
        -------
        torch.Tensor
            Logits ``(B, num_classes)`` float32 of the full network.

        Raises
        ------
        ValueError
            If an input of the full network's pathways is missing or has the wrong shape.
        """
        return self.full(**inputs)


def paper_parameter_count(model: BrebissonNet) -> int:
    """Trainable parameters counted as the paper counts them: a shared first layer once per patch using it.

    Parameters
    ----------
    model : BrebissonNet
        The network counted.

    Returns
    -------
    int
        Its trainable parameters plus, for each of the ``orthogonal`` and ``compressed`` pathways it reads, two
        more copies of the shared first layer (paper section 4: 30,565,555 for the paper's widths).

    Examples
    --------
    >>> paper_parameter_count(BrebissonNet(fc=(30, 30), fc_3d=(10, 10)))  # a narrow network
    328975
    """
    own = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for kind in ("orthogonal", "compressed"):
        if kind in model.pathways:
            first = getattr(model, kind)[0].first
            own += 2 * sum(p.numel() for p in first.parameters())
    return own
