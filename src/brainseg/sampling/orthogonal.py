"""Orthogonal, compressed and 3-D patches of one image (de Brébisson and Montana 2015, §3.1.1, Fig. 1).

Every voxel ``u = (x, y, z)`` of an RAS+ volume ``(D, H, W)`` has:

- three *orthogonal* 2-D patches of ``P x P`` samples (``P = 2 h + 1``, the paper's 29 with ``h = 14``),
  one per plane through ``u``: sagittal spans ``(y, z)``, coronal ``(x, z)``, axial ``(x, y)`` (the
  in-plane axes in array order, as :func:`brainseg.sampling.patches.to_plane` orders them); sample
  ``(k, l)`` of the sagittal patch is the voxel ``(x, y + k - h, z + l - h)``;
- three *compressed* 2-D patches (scale ``s = 3``): the same planes, sample ``(k, l)`` the mean of the
  ``s x s`` in-plane block centred on ``(x, y + s (k - h), z + s (l - h))``: an ``87 x 87`` window
  averaged down to ``29 x 29``;
- a 3-D patch of ``Q^3`` voxels centred on ``u`` (the paper's 13^3).

Outside the image every sample is the background intensity. :class:`OrthogonalPatches` keeps the image
cropped to the brain's bounding box and padded with background by :attr:`OrthogonalPatches.margin`
voxels, which is what training draws patches from and what the dense predictor convolves, so that
both read the same numbers. The conventions (block centres, padding) are those of
:mod:`brainseg.sampling.patches` at scale 3 with ``h = 14``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ORTHOGONAL_PLANES", "OrthogonalPatches"]

#: The three planes, in the order of a patch stack's channels; each names the in-plane array axes.
ORTHOGONAL_PLANES: dict[str, tuple[int, int]] = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}


@dataclass(frozen=True)
class OrthogonalPatches:
    """The padded brain crop of one image, and patches of its voxels.

    Attributes
    ----------
    padded : ndarray of float32, shape (D' + 2 M, H' + 2 M, W' + 2 M)
        The image on the brain's bounding box ``(D', H', W')``, padded with :attr:`background` by
        ``M`` = :attr:`margin` voxels on every side.
    origin : ndarray of int64, shape (3,)
        Index, in the full volume, of the crop's first voxel: voxel ``u`` of the volume is
        ``padded[u - origin + margin]``.
    shape : tuple of 3 int
        Shape of the full volume.
    margin : int
        Padding ``M`` in voxels.
    background : float
        Intensity outside the image.
    """

    padded: np.ndarray
    origin: np.ndarray
    shape: tuple[int, int, int]
    margin: int
    background: float

    @classmethod
    def of(
        cls, image: np.ndarray, mask: np.ndarray, background: float, half: int = 14, scale: int = 3, cube: int = 13
    ) -> OrthogonalPatches:
        """Crop ``image`` to ``mask``'s bounding box and pad it for the largest patch asked for.

        Parameters
        ----------
        image : ndarray of float, shape (D, H, W)
            Normalised image (RAS+).
        mask : ndarray of bool, shape (D, H, W)
            Brain mask: only its voxels get patches.
        background : float
            Padding intensity.
        half : int
            Half-width ``h`` of the 2-D patches in samples (paper: 14).
        scale : int
            Block size of the compressed patches (paper: 3).
        cube : int
            Side of the 3-D patch, odd (paper: 13).

        Raises
        ------
        ValueError
            If the shapes differ, the mask is empty, or a size is out of range.
        """
        image, mask = np.asarray(image), np.asarray(mask, bool)
        if image.ndim != 3 or image.shape != mask.shape:
            raise ValueError(f"image and mask must be 3-D of one shape, got {image.shape} and {mask.shape}")
        if half < 1 or scale < 1 or cube < 1 or cube % 2 == 0:
            raise ValueError(f"need half >= 1, scale >= 1 and an odd cube >= 1, got {half}, {scale}, {cube}")
        if not mask.any():
            raise ValueError("the brain mask is empty: no voxel to take patches of")
        nonzero = np.argwhere(mask)
        low, high = nonzero.min(axis=0), nonzero.max(axis=0) + 1
        margin = max(scale * half + (scale - 1) // 2 + 1, half + 1, cube // 2 + 1)
        crop = image[low[0] : high[0], low[1] : high[1], low[2] : high[2]].astype(np.float32)
        padded = np.pad(crop, margin, constant_values=np.float32(background))
        return cls(padded, low.astype(np.int64), tuple(image.shape), int(margin), float(background))  # type: ignore[arg-type]

    def _local(self, voxels: np.ndarray) -> np.ndarray:
        voxels = np.asarray(voxels, np.int64).reshape(-1, 3)
        local = voxels - self.origin + self.margin
        inner = np.array(self.padded.shape) - self.margin
        if len(local) and ((local < self.margin).any() or (local >= inner).any()):
            raise ValueError("voxels outside the brain's bounding box have no patches here")
        return local

    def planar(self, voxels: np.ndarray, half: int = 14, scale: int = 1) -> np.ndarray:
        """The three orthogonal patches (``scale`` 1) or compressed patches (``scale`` > 1) of voxels.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Indices in the full volume, inside the brain's bounding box.
        half : int
            Half-width in samples (``P = 2 half + 1``).
        scale : int
            Block size ``s``: each sample is the mean of an ``s x s`` in-plane block.

        Returns
        -------
        ndarray of float32, shape (N, 3, P, P)
            Sagittal, coronal, axial (:data:`ORTHOGONAL_PLANES`).

        Raises
        ------
        ValueError
            If a voxel is outside the bounding box or the patch reaches past the padding.
        """
        local = self._local(voxels)
        if scale * half + scale // 2 > self.margin:  # an even block reaches scale // 2 past its centre
            raise ValueError(f"a {2 * half + 1}-sample patch at scale {scale} needs more padding than {self.margin}")
        width = 2 * half + 1
        steps = scale * (np.arange(width) - half)  # block centres, relative to the voxel
        block = np.arange(scale) - (scale - 1) // 2
        out = np.empty((len(local), 3, width, width), np.float32)
        for channel, (a, b) in enumerate(ORTHOGONAL_PLANES.values()):
            fixed = 3 - a - b
            total = np.zeros((len(local), width, width), np.float64)
            for da in block:
                for db in block:
                    index = [None, None, None]
                    index[fixed] = local[:, fixed, None, None]
                    index[a] = local[:, a, None, None] + steps[None, :, None] + da
                    index[b] = local[:, b, None, None] + steps[None, None, :] + db
                    total += self.padded[tuple(index)]
            out[:, channel] = total / (scale * scale)
        return out

    def cube(self, voxels: np.ndarray, size: int = 13) -> np.ndarray:
        """The ``size^3`` patches centred on voxels, shape ``(N, 1, size, size, size)`` float32.

        The 3-D patch of de Brébisson and Montana (2015, §3.1.1; their 13^3).

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Indices in the full volume, inside the brain's bounding box.
        size : int
            Side ``Q`` of the cube in voxels, odd and at most ``2 margin + 1``.

        Returns
        -------
        ndarray of float32, shape (N, 1, Q, Q, Q)
            Axes in RAS+ order; samples outside the brain's bounding box are :attr:`background`.

        Raises
        ------
        ValueError
            If a voxel is outside the bounding box or ``size`` is even or too large for the padding.
        """
        if size % 2 == 0 or size // 2 > self.margin:
            raise ValueError(f"the 3-D patch side must be odd and at most {2 * self.margin + 1}, got {size}")
        local = self._local(voxels) - size // 2
        steps = np.arange(size)
        index = (
            local[:, 0, None, None, None] + steps[None, :, None, None],
            local[:, 1, None, None, None] + steps[None, None, :, None],
            local[:, 2, None, None, None] + steps[None, None, None, :],
        )
        return self.padded[index][:, None]
