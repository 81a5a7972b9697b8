"""Case manifests: CSV files listing ``case_id, image, label_map[, mask]``.

A multi-modal case (co-registered images of one subject, for a model that reads several modalities, e.g.
MixNet on FLAIR and T1c) gives its first modality in ``image`` and each other modality ``NAME`` in a
column ``image_NAME`` (``image_t1c``); the model's ``modalities`` setting names them in order.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text

__all__ = ["MODALITY_PREFIX", "Case", "read_manifest", "write_manifest"]

COLUMNS = ("case_id", "image", "label_map", "mask")

#: Prefix of the columns of a case's other modalities (``image_t1c``).
MODALITY_PREFIX = "image_"


@dataclass(frozen=True)
class Case:
    """One subject: its image, its reference label map, an optional brain mask and its other modalities.

    Attributes
    ----------
    case_id : str
    image : Path
        The first (or only) modality: the image masked, resampled and segmented on.
    label_map, mask : Path or None
    modalities : tuple of (str, Path)
        The other modalities' images by name (manifest columns ``image_NAME``), co-registered with ``image``.
    """

    case_id: str
    image: Path
    label_map: Path | None = None
    mask: Path | None = None
    modalities: tuple[tuple[str, Path], ...] = ()

    def images_of(self, names: tuple[str, ...] | list[str]) -> list[Path]:
        """The images of a model's modalities other than the first (``names[1:]``), in order.

        Parameters
        ----------
        names : tuple or list of str
            The model's modalities in channel order; ``names[0]`` is the case's ``image``.

        Returns
        -------
        list of Path
            One image per name after the first.

        Raises
        ------
        InputError
            If the case lacks one of them (names the manifest column to add).
        """
        given = dict(self.modalities)
        missing = [n for n in names[1:] if n not in given]
        if missing:
            columns = ", ".join(MODALITY_PREFIX + n for n in missing)
            raise InputError(
                f"case {self.case_id}: the model reads modalities {', '.join(names)}; the manifest gives no "
                f"{columns}: add the column(s) with each case's co-registered image"
            )
        return [given[n] for n in names[1:]]


def read_manifest(path: str | Path) -> list[Case]:
    """Read a manifest CSV; relative paths are taken relative to the CSV's folder.

    Parameters
    ----------
    path : str or Path
        The CSV, with columns ``case_id``, ``image`` and optionally ``label_map``, ``mask`` and
        ``image_NAME`` (:data:`MODALITY_PREFIX`).

    Returns
    -------
    list of Case
        One per row, in file order; an empty ``label_map`` or ``mask`` cell gives None, an empty
        ``image_NAME`` cell no entry in ``modalities``.

    Raises
    ------
    InputError
        If the file is missing, lacks the ``case_id`` and ``image`` columns, has a row with an empty
        ``case_id`` or ``image``, or repeats a case id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such manifest; write one with `brainseg manifest FOLDER -o {path}`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"case_id", "image"} <= set(rows[0]):
        raise InputError(f"{path}: a manifest needs the columns case_id,image[,label_map][,mask]")
    base = path.parent

    def resolve(value: str | None) -> Path | None:
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else base / p

    others = [k for k in rows[0] if k and k.startswith(MODALITY_PREFIX) and len(k) > len(MODALITY_PREFIX)]
    cases = [
        Case(
            r["case_id"],
            resolve(r["image"]),  # type: ignore[arg-type]
            resolve(r.get("label_map")),
            resolve(r.get("mask")),
            tuple((k[len(MODALITY_PREFIX) :], resolve(r[k])) for k in others if r.get(k)),  # type: ignore[misc]
        )
        for r in rows
    ]
    for number, case in enumerate(cases, start=2):  # row 1 is the header
        if not case.case_id or case.image is None:
            raise InputError(f"{path}: row {number} has an empty case_id or image; fill it in or delete the row")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: case ids must be unique")
    return cases


def write_manifest(path: str | Path, cases: list[Case], *, relative: bool = False) -> Path:
    """Write cases to a manifest CSV atomically.

    Parameters
    ----------
    path : str or Path
        The CSV to write.
    cases : list of Case
        Its rows.
    relative : bool
        Write paths relative to the CSV's folder (a manifest that moves with
        the data, e.g. committed beside a config); absolute paths otherwise.

    Returns
    -------
    Path
        ``path``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    others = sorted({name for c in cases for name, _ in c.modalities})
    writer.writerow(COLUMNS + tuple(MODALITY_PREFIX + n for n in others))
    folder = Path(path).resolve().parent

    def written(p: Path | None) -> str:
        if not p:
            return ""
        return os.path.relpath(Path(p).resolve(), folder) if relative else str(Path(p).resolve())

    for c in cases:
        given = dict(c.modalities)
        row = [c.case_id] + [written(p) for p in (c.image, c.label_map, c.mask)]
        writer.writerow(row + [written(given.get(n)) for n in others])
    return atomic_write_text(path, buf.getvalue())
