"""Segmenting scans with a model folder: the Python API behind ``brainseg segment``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.inference.probability_map import ProbabilityMap
from brainseg.io.nifti import Grid, Volume, load_volume, voxel_spacing
from brainseg.labels import LabelTable
from brainseg.model_folder import LoadedModel, load_model_folder
from brainseg.postprocessing.dense_crf import CRFParameters, dense_crf
from brainseg.preprocessing.pipeline import PreparedImage, prepare_image
from brainseg.preprocessing.reference import RegisteredImage, register_to_reference
from brainseg.timing import stage

__all__ = ["Predictor", "Segmentation"]


@dataclass(frozen=True)
class Segmentation:
    """The result of segmenting one scan, on the input's voxels in RAS+ order.

    Attributes
    ----------
    label_map : ndarray of int32, shape (D, H, W)
        Protocol label numbers (0 = background).
    probabilities : ProbabilityMap or None
        Class probabilities ``(C, D, H, W)`` (float16), class ``c`` standing for ``labels.labels[c]``:
        ``probabilities[c]`` is one class's volume, ``np.asarray(probabilities)`` all of them.
    grid : Grid
        The input file's grid, for :func:`brainseg.io.save_volume`.
    spacing : tuple of 3 float
        Voxel size in mm of the RAS+ arrays.
    labels : LabelTable
        The model's label table.
    """

    label_map: np.ndarray
    probabilities: ProbabilityMap | None
    grid: Grid
    spacing: tuple[float, float, float]
    labels: LabelTable


class Predictor:
    """Segment T1 scans with a trained model folder.

    Parameters
    ----------
    model : LoadedModel
        From :func:`brainseg.model_folder.load_model_folder`.
    num_threads : int, optional
        Torch threads for inference (default: torch's choice).

    Examples
    --------
    >>> predictor = Predictor.from_model_dir()  # the shipped default model  # doctest: +SKIP
    >>> result = predictor.predict(load_volume("sub-01_T1w.nii.gz"))  # doctest: +SKIP
    """

    def __init__(self, model: LoadedModel, num_threads: int | None = None) -> None:
        self.model = model
        if num_threads:
            torch.set_num_threads(num_threads)

    @classmethod
    def from_model_dir(cls, path: str | Path | None = None, num_threads: int | None = None) -> Predictor:
        """Load a model folder (default: the model shipped with brainseg).

        Parameters
        ----------
        path : str or Path, optional
            A model folder or a shipped model's name (:func:`brainseg.model_folder.load_model_folder`);
            None for the default model.
        num_threads : int, optional
            Torch threads for inference (process-wide, ``torch.set_num_threads``; default: torch's choice).

        Returns
        -------
        Predictor

        Raises
        ------
        InputError
            From :func:`~brainseg.model_folder.load_model_folder`, if the folder or one of its files is missing
            or the weights do not fit the configured network.
        """
        return cls(load_model_folder(path), num_threads)

    def segment_prepared(
        self,
        prepared: PreparedImage,
        *,
        matrix: np.ndarray | None = None,
        probabilities: bool = False,
        progress: bool = False,
        probability_dtype: type = np.float16,
        crf: CRFParameters | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, RegisteredImage | None]:
        """Segment a prepared image; reference-space models register it (or use ``matrix``) first.

        Parameters
        ----------
        prepared : PreparedImage
            From :func:`brainseg.preprocessing.pipeline.prepare_image` with the
            model's normalisation.
        matrix : ndarray, shape (4, 4), optional
            Known transform template mm -> the scan's 1 mm-grid mm (skips registration).
        probabilities, progress : bool
            As in :meth:`predict`.
        probability_dtype : numpy dtype
            Storage type of the probabilities (float16 halves the memory;
            float32 keeps their arg-max equal to ``classes``).
        crf : CRFParameters, optional
            Refine the network's probabilities with the dense CRF on the working grid
            (:func:`brainseg.postprocessing.dense_crf.dense_crf`); the classes are then the
            CRF's, and the probabilities its marginals.

        Returns
        -------
        classes : ndarray of uint8, shape of ``prepared.mask``
            Class indices on the scan's 1 mm grid.
        probabilities : ndarray of ``probability_dtype``, shape (C, D, H, W) on the working grid, or None
            On the template grid for reference-space models (see ``registered``).
        registered : RegisteredImage or None
            The scan in the reference space (reference-space models).
        """
        inputs, mask, registered = self.working_inputs(prepared, matrix)
        with stage("dense inference"):
            classes, probs = family_of(self.model.config.model).predict(
                self.model.network,
                inputs,
                mask,
                probabilities=probabilities or crf is not None,
                progress=progress,
                probability_dtype=probability_dtype,
                logit_bias=self.model.prior.logit_bias() if self.model.prior is not None else None,
            )
        if crf is not None:
            if registered is None:
                image, spacing = prepared.image, (1.0, 1.0, 1.0)
            else:
                image = registered.image
                spacing = voxel_spacing(registered.reference_affine)
            with stage("crf"):
                classes, probs = dense_crf(probs, image, spacing, crf, return_marginals=probabilities)  # type: ignore[arg-type]
        if registered is not None:
            with stage("labels to input grid"):
                classes = registered.to_native(classes)
        return classes, probs, registered

    def working_inputs(
        self, prepared: PreparedImage, matrix: np.ndarray | None = None
    ) -> tuple[Any, np.ndarray, RegisteredImage | None]:
        """What the network reads for a prepared image: on its 1 mm grid, or registered to the reference.

        Parameters
        ----------
        prepared : PreparedImage
            From :func:`brainseg.preprocessing.pipeline.prepare_image` with the model's normalisation.
        matrix : ndarray of float, shape (4, 4), optional
            Reference-space models: a known transform template mm -> the scan's 1 mm-grid mm (skips the
            registration); ignored by other models.

        Returns
        -------
        inputs
            The family's inputs on the working grid (:meth:`brainseg.families.Family.case_inputs`).
        mask : ndarray of bool
            Brain mask on the working grid.
        registered : RegisteredImage or None
            For reference-space models; maps results back with :meth:`RegisteredImage.to_native`.

        Raises
        ------
        InputError
            If ``prepared`` holds another number of modalities than the model reads (checked before any
            registration).
        """
        cfg = self.model.config.model
        reference = self.model.reference
        modalities = self.model.modalities
        if len(prepared.channels) + 1 != len(modalities):  # before any registration
            raise InputError(
                f"the model reads {len(modalities)} modalities ({', '.join(modalities)}); "
                f"{len(prepared.channels) + 1} image(s) given"
            )
        background = prepared.network_background
        if reference is None:
            image, mask, affine, atlas, registered = prepared.network_image, prepared.mask, np.eye(4), None, None
        else:
            registered = register_to_reference(prepared, reference, matrix)
            image, mask, affine, atlas = registered.image, registered.mask, reference.affine, reference.atlas
        inputs = family_of(cfg).case_inputs(cfg, image, mask, affine, background, atlas)
        return inputs, mask, registered

    def predict(
        self,
        image: Volume,
        mask: np.ndarray | None = None,
        *,
        probabilities: bool = False,
        progress: bool = False,
        matrix: np.ndarray | None = None,
        crf: CRFParameters | None = None,
        others: Sequence[Volume] = (),
    ) -> Segmentation:
        """Segment one skull-stripped T1 image (with a multi-modal model's other modalities).

        Parameters
        ----------
        image : Volume
            From :func:`brainseg.io.load_volume` (any orientation, any spacing:
            it is resampled to 1 mm for the network and the labels brought back).
        mask : ndarray of bool, shape of ``image.data``, optional
            Brain mask; default: the non-zero voxels.
        probabilities : bool
            Also return class probabilities on the input voxels.
        progress : bool
            Show a progress bar.
        matrix : ndarray, shape (4, 4), optional
            Reference-space models: a known transform (template mm -> the
            scan's 1 mm-grid mm) instead of registering the scan.
        crf : CRFParameters, optional
            Refine with the dense CRF (e.g. ``predictor.model.config.crf``, the model folder's
            settings); see :meth:`segment_prepared`.
        others : sequence of Volume
            A multi-modal model's other modalities (:attr:`~brainseg.model_folder.LoadedModel.modalities`
            after the first), in order, on ``image``'s voxel grid.

        Returns
        -------
        Segmentation

        Raises
        ------
        InputError
            If ``others`` does not give the model's other modalities, or is not on ``image``'s grid.
        """
        with stage("prepare"):
            prepared = prepare_image(image, mask, self.model.normalization, others)
        classes, probs, registered = self.segment_prepared(
            prepared, matrix=matrix, probabilities=probabilities, progress=progress, crf=crf
        )
        with stage("labels to input grid"):
            classes = prepared.to_source_grid(classes)
        probability_map = None
        if probs is not None:
            # input voxel -> 1 mm voxel [-> template voxel]: the maps the labels came back through
            owner = registered if registered is not None else prepared
            probability_map = ProbabilityMap(probs, owner.source_index())
        label_map = self.model.labels.to_labels(classes)
        return Segmentation(label_map, probability_map, image.grid, image.spacing, self.model.labels)

    def predict_file(self, path: str | Path, **kwargs: object) -> Segmentation:
        """Load an image file and segment it; see :meth:`predict`.

        Parameters
        ----------
        path : str or Path
            A NIfTI or MGZ image (:func:`brainseg.io.load_volume`).
        **kwargs
            Keyword arguments of :meth:`predict` (``mask``, ``probabilities``, ``progress``, ``matrix``,
            ``crf``, ``others``).

        Returns
        -------
        Segmentation

        Raises
        ------
        InputError
            If the file cannot be read or fails the validation gate (:func:`brainseg.io.load_volume`), or as
            :meth:`predict`.
        """
        return self.predict(load_volume(path), **kwargs)  # type: ignore[arg-type]
