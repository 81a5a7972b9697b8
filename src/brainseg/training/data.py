"""Loading labelled cases into memory for training and validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainseg.config import ModelConfig
from brainseg.errors import InputError
from brainseg.io.manifest import Case
from brainseg.io.nifti import load_volume
from brainseg.labels import LabelTable
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.pipeline import PreparedImage, prepare_image
from brainseg.sampling.patches import MultiScaleStack, build_stack, to_plane
from brainseg.sampling.samplers import VoxelSampler

__all__ = ["TrainingCase", "load_training_case"]


@dataclass
class TrainingCase:
    """A labelled case on the 1 mm grid, with its patch source and voxel sampler.

    Attributes
    ----------
    case_id : str
    prepared : PreparedImage
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the 1 mm grid (RAS+).
    stack : MultiScaleStack
    sampler : VoxelSampler
    """

    case_id: str
    prepared: PreparedImage
    classes: np.ndarray
    stack: MultiScaleStack
    sampler: VoxelSampler


def load_training_case(
    case: Case, labels: LabelTable, model: ModelConfig, normalization: IntensityNormalization
) -> TrainingCase:
    """Load, resample, normalise and index one labelled case.

    Raises
    ------
    InputError
        If the case has no label map or its files do not share a grid.
    """
    if case.label_map is None:
        raise InputError(f"case {case.case_id}: the manifest gives no label_map; training needs one")
    image = load_volume(case.image)
    label_map = load_volume(case.label_map, kind="label_map")
    mask = load_volume(case.mask, kind="mask").data if case.mask else None
    if label_map.data.shape != image.data.shape or not np.allclose(label_map.affine, image.affine, atol=1e-3):
        raise InputError(f"case {case.case_id}: {case.label_map} is not on the grid of {case.image}")
    prepared = prepare_image(image, mask, normalization)
    classes = prepared.from_source_grid(labels.to_classes(label_map.data))
    stack = build_stack(prepared.image, model.plane, model.scales, prepared.background)
    sampler = VoxelSampler(to_plane(classes, model.plane), to_plane(prepared.mask, model.plane))
    return TrainingCase(case.case_id, prepared, classes, stack, sampler)
