"""Loading labelled cases into memory for training and validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainseg.config import AnyModelConfig
from brainseg.errors import InputError
from brainseg.families import CaseSampler, family_of
from brainseg.io.manifest import Case
from brainseg.io.nifti import Volume, load_volume
from brainseg.labels import LabelTable
from brainseg.preprocessing.intensity import IntensityNormalization
from brainseg.preprocessing.pipeline import PreparedImage, prepare_image
from brainseg.preprocessing.reference import Reference, RegisteredImage, register_to_reference
from brainseg.preprocessing.registration import resample_to_reference

__all__ = ["TrainingCase", "load_prepared_case", "load_training_case", "prepare_case"]


@dataclass
class TrainingCase:
    """A labelled case on the grid the network works on, with its family's inputs and training sampler.

    The grid is the case's own 1 mm grid, or the reference template's for
    reference-space models.

    Attributes
    ----------
    case_id : str
    prepared : PreparedImage
        The case on its own 1 mm grid.
    classes : ndarray of uint8, shape (D, H, W)
        Reference class indices on the working grid (RAS+).
    mask : ndarray of bool, shape (D, H, W)
        Brain mask on the working grid.
    inputs
        What the network reads from the image (:meth:`brainseg.families.Family.case_inputs`).
    sampler : CaseSampler
        Draws the case's training batches (:meth:`brainseg.families.Family.case_sampler_with_labels`).
    registered : RegisteredImage or None
        The case in the reference space, for reference-space models.
    """

    case_id: str
    prepared: PreparedImage
    classes: np.ndarray
    mask: np.ndarray
    inputs: Any
    sampler: CaseSampler
    registered: RegisteredImage | None = None


def prepare_case(
    case: Case, normalization: IntensityNormalization, modalities: Sequence[str] = ("t1",)
) -> tuple[PreparedImage, Volume]:
    """Load one case's image (with its other modalities and mask) and prepare it (:func:`prepare_image`).

    Parameters
    ----------
    case : Case
    normalization : IntensityNormalization
    modalities : sequence of str
        The model's modalities (:attr:`brainseg.model_folder.LoadedModel.modalities`): the first is
        ``case.image``, the others are read from ``case.modalities`` by name.

    Returns
    -------
    prepared : PreparedImage
    image : Volume
        The first modality as loaded (its grid and spacing are the case's).

    Raises
    ------
    InputError
        If a file cannot be read, a modality is missing from the manifest, or the modalities do not
        share a voxel grid.
    """
    image = load_volume(case.image)
    others = [load_volume(path) for path in case.images_of(tuple(modalities))]
    mask = load_volume(case.mask, kind="mask").data if case.mask else None
    try:
        prepared = prepare_image(image, mask, normalization, others)
    except InputError as err:
        raise InputError(f"case {case.case_id} ({case.image}): {err}") from None
    return prepared, image


def load_prepared_case(
    case: Case,
    labels: LabelTable,
    normalization: IntensityNormalization,
    *,
    with_labels: bool = True,
    modalities: Sequence[str] = ("t1",),
) -> tuple[PreparedImage, np.ndarray | None]:
    """Load one case, prepare its image (1 mm, mask, normalisation) and its class map on the same grid.

    ``modalities`` are the model's (:func:`prepare_case`).

    Parameters
    ----------
    case : Case
        A manifest entry.
    labels : LabelTable
        Maps the label map's protocol numbers to class indices (numbers not in the table become background).
    normalization : IntensityNormalization
        The model's intensity normalisation.
    with_labels : bool
        Load the label map too; False for an unlabelled case (``classes`` is then None).
    modalities : sequence of str
        The model's modalities, the first read from ``case.image`` (:func:`prepare_case`).

    Returns
    -------
    prepared : PreparedImage
    classes : ndarray of uint8, shape of ``prepared.mask``, or None
        Reference class indices; None when ``with_labels`` is False.

    Raises
    ------
    InputError
        If labels are asked for and the case has none, or its files do not share a grid.
    """
    if with_labels and case.label_map is None:
        raise InputError(f"case {case.case_id}: the manifest gives no label_map; training needs one")
    prepared, image = prepare_case(case, normalization, modalities)
    if not with_labels:
        return prepared, None
    label_map = load_volume(case.label_map, kind="label_map")
    if label_map.data.shape != image.data.shape or not np.allclose(label_map.affine, image.affine, atol=1e-3):
        raise InputError(f"case {case.case_id}: {case.label_map} is not on the grid of {case.image}")
    return prepared, prepared.from_source_grid(labels.to_classes(label_map.data))


def load_training_case(
    case: Case,
    labels: LabelTable,
    model: AnyModelConfig,
    normalization: IntensityNormalization,
    reference: Reference | None = None,
) -> TrainingCase:
    """Load, resample, normalise and index one labelled case (in the reference space if the model needs it).

    Parameters
    ----------
    case : Case
    labels : LabelTable
    model : ModelConfig or DeepNATConfig
    normalization : IntensityNormalization
    reference : Reference, optional
        Required by reference-space models; its stored transform of the case
        is used when there is one (else the case is registered now).

    Returns
    -------
    TrainingCase
        On the case's own 1 mm grid, or on the reference template's grid (classes resampled by nearest
        neighbour and set to background outside the registered brain mask) for reference-space models.

    Raises
    ------
    InputError
        If the case has no label map, its files do not share a grid, or the
        model needs a reference and none is given.
    """
    family = family_of(model)
    prepared, classes = load_prepared_case(case, labels, normalization, modalities=family.modalities(model))
    assert classes is not None
    image, mask, affine, registered = prepared.network_image, prepared.mask, np.eye(4), None
    background = prepared.network_background
    if model.needs_reference:
        if reference is None:
            raise InputError("this model works in the reference space: set training.reference (brainseg atlas build)")
        registered = register_to_reference(prepared, reference, reference.transforms.get(case.case_id))
        classes = resample_to_reference(
            classes, np.eye(4), registered.matrix, reference.shape, reference.affine, order=0
        )
        classes = np.where(registered.mask, classes, 0).astype(np.uint8)
        image, mask, affine = registered.image, registered.mask, reference.affine
    atlas = reference.atlas if reference is not None else None
    inputs = family.case_inputs(model, image, mask, affine, background, atlas)
    sampler = family.case_sampler_with_labels(model, inputs, classes, mask, labels)
    return TrainingCase(case.case_id, prepared, classes, mask, inputs, sampler, registered)
