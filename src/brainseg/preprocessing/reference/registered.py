"""Moving a prepared scan into the reference space and its results back.

Transforms map **template RAS+ mm -> moving mm**, where the moving image is the
scan on its 1 mm grid with voxel index = mm (an identity affine). The scan's
own header orientation (:attr:`PreparedImage.world_affine`) only starts the
registration (see :func:`~brainseg.preprocessing.registration.register_affine`):
an oblique or tilted scan is brought upright by the transform, so training,
atlas building and inference all align to the same template the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainseg.preprocessing.pipeline import PreparedImage, compose_index, take_nearest
from brainseg.preprocessing.reference.folder import Reference
from brainseg.preprocessing.registration import register_affine, resample_to_reference
from brainseg.timing import stage

__all__ = ["RegisteredImage", "moving_image", "register_prepared", "register_to_reference"]

log = logging.getLogger(__name__)


def moving_image(prepared: PreparedImage) -> np.ndarray:
    """The prepared image with background 0, as registration and the template expect.

    Parameters
    ----------
    prepared : PreparedImage
        From :func:`brainseg.preprocessing.pipeline.prepare_image`.

    Returns
    -------
    ndarray of float32, shape of ``prepared.mask``
    """
    return np.where(prepared.mask, prepared.image - prepared.background, 0).astype(np.float32)


def register_prepared(prepared: PreparedImage, target: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Register a prepared scan to a target image; the transform target mm -> the scan's 1 mm-grid mm.

    The registration runs in the scan's world frame (its header orientation
    is the first starting point) and the result is expressed on the 1 mm grid
    whose voxel index is its mm coordinate.

    Parameters
    ----------
    prepared : PreparedImage
    target : ndarray of float32, shape (D, H, W)
        Template (or a subject) with background 0, RAS+.
    target_affine : ndarray, shape (4, 4)
        Voxel -> mm of the target.

    Returns
    -------
    ndarray of float64, shape (4, 4)
    """
    world = prepared.world_affine
    matrix = register_affine(moving_image(prepared), world, target, target_affine).matrix
    return np.linalg.inv(world) @ matrix


@dataclass(frozen=True)
class RegisteredImage:
    """A prepared scan resampled onto the reference template grid.

    Attributes
    ----------
    prepared : PreparedImage
        The scan on its own 1 mm grid.
    matrix : ndarray of float64, shape (4, 4)
        Template mm -> the scan's 1 mm-grid mm.
    image : ndarray of float32, shape of the template
        Normalised intensities on the template grid (``background`` outside the brain).
    mask : ndarray of bool, shape of the template
        Brain mask on the template grid.
    background : float
        Normalised value of an empty voxel.
    reference_affine : ndarray of float64, shape (4, 4)
        Template voxel -> template mm.
    """

    prepared: PreparedImage
    matrix: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    background: float
    reference_affine: np.ndarray

    def native_index(self) -> np.ndarray:
        """For each voxel of the scan's 1 mm grid, the flat index of its nearest template voxel.

        -1 outside the scan's brain mask or the template grid. Labels and
        probabilities come back through this one map, so they agree.

        Returns
        -------
        ndarray of int64, shape of ``prepared.mask``
            Read-only: computed once per image and shared by the labels and the probabilities.
        """
        cached = self.__dict__.get("_native_index")
        if cached is not None:
            return cached
        m = np.linalg.inv(self.reference_affine) @ np.linalg.inv(self.matrix)  # native voxel (= mm) -> template voxel
        index = np.arange(self.mask.size, dtype=np.int64).reshape(self.mask.shape)
        out = ndimage.affine_transform(
            index, m[:3, :3], m[:3, 3], output_shape=self.prepared.mask.shape, order=0, cval=-1
        )
        out[~self.prepared.mask] = -1
        out.setflags(write=False)
        self.__dict__["_native_index"] = out  # frozen dataclass: a cache, not a field
        return out

    def to_native(self, classes: np.ndarray) -> np.ndarray:
        """Class map on the template grid -> the scan's 1 mm grid (nearest neighbour, brain mask only).

        Parameters
        ----------
        classes : ndarray of int, shape of the template
            Labels on the template grid (probabilities of shape (C,) + template shape also pass through
            :func:`~brainseg.preprocessing.pipeline.take_nearest`).

        Returns
        -------
        ndarray, shape of ``prepared.mask`` (with the leading C axis if any), dtype of ``classes``
            Label 0 outside the scan's brain mask or the template grid.
        """
        return take_nearest(classes, self.native_index())

    def to_source_grid(self, classes: np.ndarray) -> np.ndarray:
        """Class map on the template grid -> the canonical input grid.

        Parameters
        ----------
        classes : ndarray of int, shape of the template
            Labels on the template grid.

        Returns
        -------
        ndarray, shape ``prepared.source_shape``, dtype of ``classes``
            Label 0 outside the input's brain mask.
        """
        return self.prepared.to_source_grid(self.to_native(classes))

    def source_index(self) -> np.ndarray:
        """For each input voxel (RAS+), the flat index of its template voxel (-1 for background).

        The composition of the input -> 1 mm map (:meth:`PreparedImage.source_index`) and
        :meth:`native_index`: the maps the labels come back through, so probabilities carried by
        it (:class:`brainseg.inference.probability_map.ProbabilityMap`) have the label map as arg-max.

        Returns
        -------
        ndarray of int64, shape of the input
        """
        return compose_index(self.prepared.source_index(), self.native_index())


def register_to_reference(
    prepared: PreparedImage, reference: Reference, matrix: np.ndarray | None = None
) -> RegisteredImage:
    """Register a prepared scan to the template (unless ``matrix`` is given) and resample it there.

    Parameters
    ----------
    prepared : PreparedImage
        From :func:`brainseg.preprocessing.pipeline.prepare_image`.
    reference : Reference
        The reference space.
    matrix : ndarray, shape (4, 4), optional
        A known transform (template mm -> the scan's 1 mm-grid mm), e.g. from
        ``reference.transforms``; skips the registration.

    Returns
    -------
    RegisteredImage
    """
    moving = moving_image(prepared)
    if matrix is None:
        with stage("registration"):
            matrix = register_prepared(prepared, reference.template, reference.affine)
    shape = reference.shape
    with stage("resampling to the reference"):
        image = resample_to_reference(moving, np.eye(4), matrix, shape, reference.affine, order=1)
        mask = resample_to_reference(prepared.mask.astype(np.float32), np.eye(4), matrix, shape, reference.affine)
        mask = mask >= 0.5
    image = np.where(mask, image, 0) + prepared.background
    # a sample of brain voxels, mapped into the template grid
    voxels = np.stack(np.unravel_index(np.flatnonzero(prepared.mask)[::97], prepared.mask.shape), axis=1)
    to_template = np.linalg.inv(reference.affine) @ np.linalg.inv(matrix)
    mapped = voxels @ to_template[:3, :3].T + to_template[:3, 3]
    inside = np.all((mapped > -0.5) & (mapped < np.array(shape) - 0.5), axis=1)
    if len(voxels) and inside.mean() < 0.99:
        log.warning(
            "%.1f%% of the brain falls outside the reference template grid; check the registration",
            100 * (1 - inside.mean()),
        )
    return RegisteredImage(
        prepared, np.asarray(matrix, float), image.astype(np.float32), mask, prepared.background, reference.affine
    )
