"""Label protocols: class index <-> protocol label number <-> structure name."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["LabelTable"]


@dataclass(frozen=True)
class LabelTable:
    """The classes a model predicts and the protocol label numbers they stand for.

    Class indices ``0 .. C-1`` are what networks predict; protocol label
    numbers (MICCAI 2012 / BrainCOLOR, FreeSurfer, ...) are what label maps on
    disk hold. Class 0 is background and maps to label 0. Only this class maps
    between the two.

    Attributes
    ----------
    labels : tuple of int
        ``labels[c]`` is the protocol label number of class ``c``.
    names : tuple of str
        ``names[c]`` is the structure name of class ``c``.
    """

    labels: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.names):
            raise ValueError(f"{len(self.labels)} labels but {len(self.names)} names")
        if not self.labels or self.labels[0] != 0:
            raise ValueError("class 0 must be background with label number 0")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("label numbers must be unique")
        if min(self.labels) < 0:
            raise ValueError("label numbers must be >= 0")

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.labels)

    @classmethod
    def from_tsv(cls, path: str | Path) -> LabelTable:
        """Read a TSV with columns ``class_index``, ``label``, ``name``.

        Raises
        ------
        ValueError
            If columns are missing or class indices are not ``0 .. C-1`` in order.
        """
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or not {"class_index", "label", "name"} <= set(rows[0]):
            raise ValueError(f"{path}: expected columns class_index, label, name")
        indices = [int(r["class_index"]) for r in rows]
        if indices != list(range(len(rows))):
            raise ValueError(f"{path}: class_index must run 0, 1, ..., {len(rows) - 1} in order")
        return cls(tuple(int(r["label"]) for r in rows), tuple(r["name"] for r in rows))

    @classmethod
    def miccai2012(cls) -> LabelTable:
        """The MICCAI 2012 Multi-Atlas Labeling protocol: 134 structures + background.

        Label numbers the challenge ignored are not classes; :meth:`to_classes`
        maps them to background.
        """
        ref = resources.files("brainseg.data").joinpath("miccai2012_labels.tsv")
        with resources.as_file(ref) as path:
            return cls.from_tsv(path)

    def to_tsv(self, path: str | Path) -> None:
        """Write the table in the format :meth:`from_tsv` reads."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["class_index", "label", "name"])
            for c, (label, name) in enumerate(zip(self.labels, self.names)):
                writer.writerow([c, label, name])

    def to_classes(self, label_map: np.ndarray) -> np.ndarray:
        """Map protocol label numbers to class indices (unknown labels -> 0).

        Parameters
        ----------
        label_map : ndarray of int, any shape
            Protocol label numbers (>= 0).

        Returns
        -------
        ndarray of uint8 (int16 if more than 255 classes), same shape
        """
        label_map = np.asarray(label_map)
        if label_map.size and label_map.min() < 0:
            raise ValueError("label maps must not hold negative label numbers")
        lut = np.zeros(max(int(label_map.max(initial=0)), max(self.labels)) + 1, np.int64)
        lut[list(self.labels)] = np.arange(self.num_classes)
        dtype = np.uint8 if self.num_classes <= 256 else np.int16
        return lut[label_map.astype(np.int64)].astype(dtype)

    def to_labels(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices to protocol label numbers, as int32."""
        return np.asarray(self.labels, dtype=np.int32)[np.asarray(classes, dtype=np.int64)]
