"""The reference space: a template built from training subjects, its atlas, and moving scans into it.

Ganaye et al. (2018, section 3.1) register every image affinely to a reference
before computing spatial priors, so that a landmark grid and a probabilistic
atlas mean the same anatomy in every scan. brainseg builds the reference from
the training subjects (``brainseg atlas build``):

1. every training image, prepared as for the network (1 mm, z-scored in the
   brain), is registered affinely (:func:`register_affine`) to the first one;
2. the template is the mean of the registered images, cropped to the union of
   their brain masks plus a margin;
3. the probabilistic atlas is built from the registered training label maps
   (:class:`~brainseg.features.atlas.ProbabilisticAtlas`);
4. every case of the manifest is registered to the template once and the
   transforms are stored, so training and evaluation do not register again.

A reference folder holds ``template.nii.gz`` (RAS+, 1 mm), ``atlas.npz``,
``reference.json`` (how it was built) and ``transforms.json`` (per case, a
4 x 4 matrix from template mm to the case's 1 mm grid mm). Model folders carry
the first three.

Transforms map **template RAS+ mm -> moving mm**, where the moving image is
the scan on its 1 mm grid with voxel index = mm (an identity affine): the
scan's own world coordinates play no role once it is prepared.

Deviations from the paper
-------------------------
- The paper registers to an existing reference atlas with FSL FLIRT; brainseg
  builds its template from the training subjects (one registration pass to
  the first subject, then averaging) and registers with SimpleITK, which
  installs from wheels everywhere.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from brainseg.errors import InputError
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.io.atomic import atomic_path, atomic_write_text
from brainseg.preprocessing.masking import brain_bounding_box
from brainseg.preprocessing.pipeline import PreparedImage
from brainseg.preprocessing.registration import register_affine, resample_to_reference

__all__ = [
    "Reference",
    "RegisteredImage",
    "build_reference",
    "copy_reference",
    "load_reference",
    "load_transforms",
    "register_to_reference",
]

log = logging.getLogger(__name__)

TEMPLATE = "template.nii.gz"
ATLAS = "atlas.npz"
INFO = "reference.json"
TRANSFORMS = "transforms.json"
#: Files a model folder's ``reference/`` needs.
MODEL_FILES = (TEMPLATE, ATLAS, INFO)


def _moving(prepared: PreparedImage) -> np.ndarray:
    # The prepared image with background 0, as registration and the template expect.
    return np.where(prepared.mask, prepared.image - prepared.background, 0).astype(np.float32)


@dataclass(frozen=True)
class Reference:
    """A reference space: template image, its grid, atlas and known transforms.

    Attributes
    ----------
    template : ndarray of float32, shape (D, H, W)
        Mean registered intensities (normalised, background 0), RAS+.
    affine : ndarray of float64, shape (4, 4)
        Template voxel -> template mm (1 mm voxels).
    atlas : ProbabilisticAtlas or None
        Class probabilities on the template grid.
    transforms : dict of str to ndarray, shape (4, 4)
        Per case id, template mm -> the case's 1 mm-grid mm.
    info : dict
        How the reference was built (cases, smoothing, floor, margin).
    """

    template: np.ndarray
    affine: np.ndarray
    atlas: ProbabilisticAtlas | None = None
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Template grid shape."""
        return self.template.shape  # type: ignore[return-value]

    def save(self, path: str | Path, *, with_transforms: bool = True) -> Path:
        """Write the reference folder (each file atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(self.template.astype(np.float32), self.affine)
        img.set_data_dtype(np.int16)  # nibabel scales to int16: ample for a template
        with atomic_path(path / TEMPLATE, suffix=".nii.gz") as tmp:
            nib.save(img, str(tmp))
        if self.atlas is not None:
            self.atlas.save(path / ATLAS)
        atomic_write_text(path / INFO, json.dumps(self.info, indent=2) + "\n")
        if with_transforms:
            transforms = {k: np.asarray(v).round(8).tolist() for k, v in self.transforms.items()}
            atomic_write_text(path / TRANSFORMS, json.dumps(transforms, indent=1) + "\n")
        return path


def copy_reference(source: str | Path, destination: str | Path) -> None:
    """Copy what a model folder needs of the reference folder ``source`` (not the transforms).

    Raises
    ------
    InputError
        If ``source`` has no template.
    """
    source, destination = Path(source), Path(destination)
    if not (source / TEMPLATE).is_file():
        raise InputError(f"{source}: not a reference folder (no {TEMPLATE}); make one with 'brainseg atlas build'")
    destination.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            with atomic_path(destination / name) as tmp:
                shutil.copyfile(source / name, tmp)


def load_transforms(path: str | Path) -> dict[str, np.ndarray]:
    """The stored transforms of a reference folder, per case id (empty if none or no folder)."""
    file = Path(path) / TRANSFORMS
    if not file.is_file():
        return {}
    return {k: np.array(v, float) for k, v in json.loads(file.read_text()).items()}


def load_reference(path: str | Path) -> Reference:
    """Read a reference folder written by :meth:`Reference.save`.

    Raises
    ------
    InputError
        If the folder or its template is missing or unreadable.
    """
    path = Path(path)
    if not (path / TEMPLATE).is_file():
        raise InputError(f"{path}: not a reference folder (no {TEMPLATE}); make one with 'brainseg atlas build'")
    img = nib.load(str(path / TEMPLATE))
    template = np.asarray(img.get_fdata(dtype=np.float32))
    atlas = None
    if (path / ATLAS).is_file():
        try:
            atlas = ProbabilisticAtlas.load(path / ATLAS)
        except (ValueError, OSError) as err:
            raise InputError(f"{path / ATLAS}: unreadable atlas ({err})") from None
    transforms = load_transforms(path)
    info = json.loads((path / INFO).read_text()) if (path / INFO).is_file() else {}
    return Reference(template, np.asarray(img.affine, float), atlas, transforms, info)


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

    def _native_voxel_map(self) -> np.ndarray:
        # Native 1 mm voxel (= mm) -> template voxel.
        return np.linalg.inv(self.reference_affine) @ np.linalg.inv(self.matrix)

    def to_native(self, classes: np.ndarray) -> np.ndarray:
        """Class map on the template grid -> the scan's 1 mm grid (nearest neighbour, brain mask only)."""
        m = self._native_voxel_map()
        out = ndimage.affine_transform(
            classes, m[:3, :3], m[:3, 3], output_shape=self.prepared.mask.shape, order=0, cval=0
        )
        out[~self.prepared.mask] = 0
        return out

    def to_source_grid(self, classes: np.ndarray) -> np.ndarray:
        """Class map on the template grid -> the canonical input grid."""
        return self.prepared.to_source_grid(self.to_native(classes))

    def probabilities_to_source_grid(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities ``(C, D, H, W)`` on the template grid -> the input grid (linear, class by class)."""
        m = self._native_voxel_map()
        native = np.empty((len(probabilities),) + self.prepared.mask.shape, probabilities.dtype)
        for c, p in enumerate(probabilities):
            native[c] = ndimage.affine_transform(
                p.astype(np.float32),
                m[:3, :3],
                m[:3, 3],
                output_shape=self.prepared.mask.shape,
                order=1,
                cval=1.0 if c == 0 else 0.0,
            )
        return self.prepared.probabilities_to_source_grid(native)


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
    moving = _moving(prepared)
    if matrix is None:
        matrix = register_affine(moving, np.eye(4), reference.template, reference.affine).matrix
    shape = reference.shape
    image = resample_to_reference(moving, np.eye(4), matrix, shape, reference.affine, order=1)
    mask = resample_to_reference(prepared.mask.astype(np.float32), np.eye(4), matrix, shape, reference.affine) >= 0.5
    image = np.where(mask, image, 0) + prepared.background
    voxels = np.argwhere(prepared.mask)[::97]  # a sample of brain voxels, mapped into the template grid
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


def build_reference(
    cases: Sequence[tuple[str, PreparedImage, np.ndarray | None]],
    num_classes: int,
    *,
    sigma_mm: float = 1.0,
    floor: float = 1e-4,
    margin_mm: int = 15,
    progress: bool = False,
) -> Reference:
    """Build a template and atlas from training subjects, and register every case to it.

    Parameters
    ----------
    cases : sequence of (case_id, PreparedImage, class map or None)
        Prepared scans on their 1 mm grids; those with a class map (uint8,
        shape of ``prepared.mask``) build the template and the atlas, the
        others are only registered (their transforms are stored).
    num_classes : int
        Classes of the atlas, background included.
    sigma_mm, floor : float
        Atlas smoothing and floor (see :class:`ProbabilisticAtlas`).
    margin_mm : int
        Template grid margin around the union of the registered brain masks.
    progress : bool
        Show progress bars.

    Returns
    -------
    Reference

    Raises
    ------
    ValueError
        If no case has a class map.
    """
    labelled = [c for c in cases if c[2] is not None]
    if not labelled:
        raise ValueError("building a reference needs at least one case with a label map")
    first = labelled[0][1]
    target = _moving(first)
    target_affine = np.eye(4)
    transforms: dict[str, np.ndarray] = {}
    total = np.zeros(target.shape, np.float32)
    count = np.zeros(target.shape, np.float32)
    for case_id, prepared, _ in tqdm(labelled, desc="template", disable=not progress, leave=False):
        moving = _moving(prepared)
        matrix = np.eye(4) if prepared is first else register_affine(moving, np.eye(4), target, target_affine).matrix
        transforms[case_id] = matrix
        total += resample_to_reference(moving, np.eye(4), matrix, target.shape, target_affine)
        count += resample_to_reference(prepared.mask.astype(np.float32), np.eye(4), matrix, target.shape, target_affine)
    box = brain_bounding_box(count > 0.5, margin=int(margin_mm))
    lo = np.array([b.start for b in box], float)  # the margin is clipped at the first subject's grid
    template = (total / len(labelled))[box]
    affine = np.eye(4)
    affine[:3, 3] = lo
    atlas_maps = [
        resample_to_reference(classes, np.eye(4), transforms[case_id], template.shape, affine, order=0)
        for case_id, _, classes in labelled
    ]
    atlas = ProbabilisticAtlas.build(atlas_maps, num_classes, sigma_mm=sigma_mm, floor=floor)
    for case_id, prepared, classes in tqdm(cases, desc="register", disable=not progress, leave=False):
        if case_id not in transforms:
            transforms[case_id] = register_affine(_moving(prepared), np.eye(4), template, affine).matrix
    info = {
        "template_cases": [c[0] for c in labelled],
        "atlas_sigma_mm": sigma_mm,
        "atlas_floor": floor,
        "margin_mm": margin_mm,
        "shape": list(template.shape),
    }
    return Reference(template.astype(np.float32), affine, atlas, transforms, info)
