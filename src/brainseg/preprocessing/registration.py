"""Affine registration to a reference space, with SimpleITK.

Ganaye et al. (2018, section 3.1) register every image affinely to a
reference atlas (FSL FLIRT) before computing spatial priors. brainseg uses
SimpleITK's ``ImageRegistrationMethod`` (Mattes mutual information, a
regular-step gradient descent, three resolution levels, moments-based
initialisation): it is a maintained wrapper of ITK with binary wheels for
every platform, needs no external executables (unlike FLIRT), and an affine
registration of a 1 mm brain takes seconds on two cores.

Arrays are in RAS+ order with a voxel -> RAS+ mm ``affine`` (as returned by
:func:`brainseg.io.load_volume`); SimpleITK works in LPS, and the conversion
is kept inside this module. Transforms are returned as 4 x 4 matrices that map
**reference-space RAS+ mm to moving-image RAS+ mm** (the direction a
resampler needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AffineRegistration", "register_affine", "resample_to_reference", "rotation_angle_deg"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS, its own inverse


def _to_sitk(data: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data).astype(np.float32)))
    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    return image


@dataclass(frozen=True)
class AffineRegistration:
    """Result of :func:`register_affine`.

    Attributes
    ----------
    matrix : ndarray of float64, shape (4, 4)
        Reference RAS+ mm -> moving RAS+ mm.
    metric : float
        Final Mattes mutual information (lower is better).
    """

    matrix: np.ndarray
    metric: float

    def inverse(self) -> np.ndarray:
        """Moving RAS+ mm -> reference RAS+ mm."""
        return np.linalg.inv(self.matrix)


def register_affine(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    reference: np.ndarray,
    reference_affine: np.ndarray,
    *,
    iterations: int = 200,
    sampling_fraction: float = 0.05,
    seed: int = 0,
) -> AffineRegistration:
    """Affinely register a moving image to a reference image.

    Parameters
    ----------
    moving, reference : ndarray of float, shape (D, H, W)
        Skull-stripped intensities in RAS+ order (background 0).
    moving_affine, reference_affine : ndarray of float, shape (4, 4)
        Voxel index -> RAS+ mm of each image.
    iterations : int
        Optimiser iterations per resolution level.
    sampling_fraction : float
        Fraction of voxels sampled for the metric (random, seeded).
    seed : int
        Seed of the metric's voxel sampling (results are reproducible).

    Returns
    -------
    AffineRegistration

    Raises
    ------
    ValueError
        If an image is not 3-D or is empty.
    """
    import SimpleITK as sitk

    for name, data in (("moving", moving), ("reference", reference)):
        if data.ndim != 3 or not np.any(data):
            raise ValueError(f"{name} image must be a non-empty 3-D array, got shape {data.shape}")
    fixed_img = _to_sitk(reference, reference_affine)
    moving_img = _to_sitk(moving, moving_affine)
    initial = sitk.CenteredTransformInitializer(
        fixed_img, moving_img, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed_img, moving_img)
    affine = sitk.AffineTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    linear = np.array(affine.GetMatrix()).reshape(3, 3)
    centre = np.array(affine.GetCenter())
    translation = np.array(affine.GetTranslation())
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = translation + centre - linear @ centre
    return AffineRegistration(_LPS @ lps @ _LPS, float(method.GetMetricValue()))


def resample_to_reference(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    matrix: np.ndarray,
    reference_shape: tuple[int, int, int],
    reference_affine: np.ndarray,
    *,
    order: int = 1,
) -> np.ndarray:
    """Resample a moving image onto the reference grid through a registration.

    Parameters
    ----------
    moving : ndarray, shape (D, H, W)
        Moving image (or label map with ``order=0``), RAS+ order.
    moving_affine : ndarray, shape (4, 4)
        Its voxel -> RAS+ mm affine.
    matrix : ndarray, shape (4, 4)
        Reference RAS+ mm -> moving RAS+ mm (:attr:`AffineRegistration.matrix`).
    reference_shape : tuple of 3 int
        Shape of the reference grid.
    reference_affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm of the reference grid.
    order : int
        0 nearest neighbour (label maps), 1 linear.

    Returns
    -------
    ndarray, shape ``reference_shape``
        Values outside the moving image are 0.
    """
    from scipy import ndimage

    voxel_map = np.linalg.inv(moving_affine) @ np.asarray(matrix) @ np.asarray(reference_affine)
    return ndimage.affine_transform(
        moving, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=tuple(reference_shape), order=order, cval=0.0
    )


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Angle in degrees of the rotation closest to the linear part of a 4 x 4 affine (polar decomposition)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix)[:3, :3])
    rotation = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))
