"""The reference folder on disk: template, atlas, how it was built, and stored transforms.

A reference folder holds ``template.nii.gz`` (RAS+, 1 mm), ``atlas.npz``,
``reference.json`` (how it was built) and ``transforms.json`` (per case, a
4 x 4 matrix from template mm to the case's 1 mm grid mm). Model folders carry
the first three (:data:`MODEL_FILES`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.errors import InputError
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.io.atomic import atomic_path, atomic_write_text

__all__ = [
    "ATLAS",
    "INFO",
    "MODEL_FILES",
    "TEMPLATE",
    "TRANSFORMS",
    "Reference",
    "copy_reference",
    "load_reference",
    "load_transforms",
]

TEMPLATE = "template.nii.gz"
ATLAS = "atlas.npz"
INFO = "reference.json"
TRANSFORMS = "transforms.json"
#: Files a model folder's ``reference/`` needs.
MODEL_FILES = (TEMPLATE, ATLAS, INFO)


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
        """Write the reference folder (each file atomically).

        Parameters
        ----------
        path : str or Path
            The folder; created if missing. Writes :data:`TEMPLATE` (stored as scaled int16), :data:`INFO`,
            :data:`ATLAS` when there is an atlas, and :data:`TRANSFORMS` with ``with_transforms``.
        with_transforms : bool
            Also write ``transforms.json`` (matrices rounded to 8 decimals). Without it an existing
            ``transforms.json`` in the folder is left as it is.

        Returns
        -------
        Path
            ``path``.
        """
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

    Parameters
    ----------
    source : str or Path
        A reference folder.
    destination : str or Path
        The folder to copy into (created if missing); each of :data:`MODEL_FILES` that ``source`` holds is
        copied atomically, overwriting.

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
    """The stored transforms of a reference folder, per case id (empty if none or no folder).

    Parameters
    ----------
    path : str or Path
        A reference folder.

    Returns
    -------
    dict of str to ndarray of float64, shape (4, 4)
        Per case id, template mm -> the case's 1 mm-grid mm.
    """
    file = Path(path) / TRANSFORMS
    if not file.is_file():
        return {}
    return {k: np.array(v, float) for k, v in json.loads(file.read_text()).items()}


def load_reference(path: str | Path) -> Reference:
    """Read a reference folder written by :meth:`Reference.save`.

    Parameters
    ----------
    path : str or Path
        A reference folder.

    Returns
    -------
    Reference
        With the atlas (None if the folder has none), the stored transforms and the build info (empty if
        ``reference.json`` is missing).

    Raises
    ------
    InputError
        If the folder or its template is missing, or its atlas is unreadable.
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
