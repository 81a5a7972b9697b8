"""Per-voxel inputs of the spatial priors: landmark distances, atlas probabilities and 3-D patches.

One :class:`SpatialInputs` serves a whole image (on the reference template
grid for the spatial priors): training gathers the inputs of sampled voxels,
patch-by-patch inference of the voxels asked for, and dense inference of a
slice's brain voxels at once (Ganaye et al. 2018, sections 2.2-2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainseg.config import ModelConfig
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.landmarks import landmark_distances, landmark_grid, voxel_centres_mm

__all__ = ["SpatialInputs", "make_spatial_inputs", "spatial_inputs_for", "HALF_3D"]

#: Half-width of the 15 x 15 x 15 patch of the 3dBranch, voxels.
HALF_3D = 7


@dataclass(frozen=True)
class SpatialInputs:
    """Everything needed to compute a network's extra inputs at any voxel of one image.

    Attributes
    ----------
    affine : ndarray of float64, shape (4, 4)
        Voxel -> mm of the grid the voxels index (the reference template's).
    landmarks : ndarray of float64, shape (L, 3), or None
        Landmark positions in mm (DistBranch).
    atlas : ProbabilisticAtlas or None
        Atlas on the same grid (ProbBranch).
    padded_image : ndarray of float32, shape (D + 14, H + 14, W + 14), or None
        The normalised image padded with the background value (3dBranch).
    support : ndarray of bool, shape (D, H, W), or None
        The reference grid's voxels where brains land (:meth:`ProbabilisticAtlas.support`): where
        dense inference reads the DistBranch's output from a table computed once per model
        (:mod:`brainseg.inference.branch_cache`); None computes it per scan.
    """

    affine: np.ndarray
    landmarks: np.ndarray | None = None
    atlas: ProbabilisticAtlas | None = None
    padded_image: np.ndarray | None = None
    support: np.ndarray | None = None

    def patches_3d(self, voxels: np.ndarray) -> np.ndarray:
        """15 x 15 x 15 patches centred on voxels ``(N, 3)`` -> ``(N, 1, 15, 15, 15)`` float32.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices on the unpadded grid, inside it (``padded_image`` is padded by :data:`HALF_3D`).

        Returns
        -------
        ndarray of float32, shape (N, 1, 15, 15, 15)
            The image around each voxel (3dBranch input), the background value beyond the grid.

        Raises
        ------
        ValueError
            If this object holds no ``padded_image``.
        """
        if self.padded_image is None:
            raise ValueError("these spatial inputs hold no image for 3-D patches")
        steps = np.arange(2 * HALF_3D + 1)
        v = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        d = v[:, 0, None, None, None] + steps[None, :, None, None]
        h = v[:, 1, None, None, None] + steps[None, None, :, None]
        w = v[:, 2, None, None, None] + steps[None, None, None, :]
        return self.padded_image[d, h, w][:, None]

    def at(
        self,
        voxels: np.ndarray,
        *,
        with_patches_3d: bool = True,
        with_atlas: bool = True,
        with_distances: bool = True,
    ) -> dict[str, np.ndarray]:
        """Extra network inputs at voxels.

        Parameters
        ----------
        voxels : ndarray of int, shape (N, 3)
            Voxel indices in RAS+ ``(d, h, w)`` order.
        with_patches_3d : bool
            Include the 3-D patches (dense inference computes the 3dBranch
            fully convolutionally instead).
        with_atlas : bool
            Include the atlas vectors (dense inference looks them up for the
            whole brain at once instead).
        with_distances : bool
            Include the landmark distances (dense inference may read the
            DistBranch's output from a table instead).

        Returns
        -------
        dict
            ``'distances'``: ``(N, L)`` float32 mm; ``'atlas'``: ``(N, C)``
            float32; ``'patches_3d'``: ``(N, 1, 15, 15, 15)`` float32 — each
            only if this object holds what it needs.
        """
        voxels = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        out: dict[str, np.ndarray] = {}
        if with_distances and self.landmarks is not None:
            out["distances"] = landmark_distances(voxel_centres_mm(voxels, self.affine), self.landmarks)
        if with_atlas and self.atlas is not None:
            out["atlas"] = self.atlas.lookup(voxels)
        if with_patches_3d and self.padded_image is not None:
            out["patches_3d"] = self.patches_3d(voxels)
        return out


def make_spatial_inputs(
    image: np.ndarray,
    affine: np.ndarray,
    background: float,
    *,
    landmarks: int = 0,
    atlas: ProbabilisticAtlas | None = None,
    patches_3d: bool = False,
    support: np.ndarray | None = None,
) -> SpatialInputs:
    """Set up the spatial inputs of one image.

    Parameters
    ----------
    image : ndarray of float32, shape (D, H, W)
        Normalised image (on the reference template grid).
    affine : ndarray, shape (4, 4)
        Voxel -> mm of that grid.
    background : float
        Normalised value of an empty voxel (3-D patch padding).
    landmarks : int
        Landmarks per axis (0 = no distances).
    atlas : ProbabilisticAtlas, optional
        Atlas on the same grid.
    patches_3d : bool
        Keep a padded copy of the image for 3-D patches.
    support : ndarray of bool, shape (D, H, W), optional
        See :class:`SpatialInputs`.

    Returns
    -------
    SpatialInputs

    Raises
    ------
    ValueError
        If the atlas grid or the support differs from the image's.
    """
    if atlas is not None and tuple(atlas.shape) != tuple(image.shape):
        raise ValueError(f"atlas grid {atlas.shape} differs from the image grid {image.shape}")
    if support is not None and tuple(support.shape) != tuple(image.shape):
        raise ValueError(f"support grid {support.shape} differs from the image grid {image.shape}")
    marks = landmark_grid(image.shape, affine, landmarks) if landmarks > 0 else None
    padded = None
    if patches_3d:
        padded = np.pad(image.astype(np.float32), HALF_3D, constant_values=background)
    return SpatialInputs(np.asarray(affine, float), marks, atlas, padded, support if landmarks > 0 else None)


def spatial_inputs_for(
    model: ModelConfig,
    image: np.ndarray,
    affine: np.ndarray,
    background: float,
    atlas: ProbabilisticAtlas | None = None,
) -> SpatialInputs | None:
    """The spatial inputs a model configuration reads, or None for a plain BaseNet.

    Parameters
    ----------
    model : ModelConfig
        Which priors the network has.
    image, affine, background
        As in :func:`make_spatial_inputs` (the working grid: the template's for
        reference-space models).
    atlas : ProbabilisticAtlas, optional
        The reference atlas: the ProbBranch's input, and its support tells
        the DistBranch where brains land (see :class:`SpatialInputs`).

    Returns
    -------
    SpatialInputs or None
        None when the model reads no spatial prior (no reference space and no 3dBranch).

    Raises
    ------
    ValueError
        From :func:`make_spatial_inputs`, if the atlas grid differs from the image's.
    """
    if not (model.needs_reference or model.branch_3d_widths):
        return None
    support = atlas.support() if (atlas is not None and model.landmarks) else None
    return make_spatial_inputs(
        image,
        affine,
        background,
        landmarks=model.landmarks,
        atlas=atlas if model.prob_branch else None,
        patches_3d=bool(model.branch_3d_widths),
        support=support,
    )
