"""Case manifests: CSV files listing ``case_id, image, label_map[, mask]``."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text

__all__ = ["Case", "read_manifest", "write_manifest", "scan_folder"]

COLUMNS = ("case_id", "image", "label_map", "mask")


@dataclass(frozen=True)
class Case:
    """One subject: its image, its reference label map and an optional brain mask."""

    case_id: str
    image: Path
    label_map: Path | None = None
    mask: Path | None = None


def read_manifest(path: str | Path) -> list[Case]:
    """Read a manifest CSV; relative paths are taken relative to the CSV's folder.

    Raises
    ------
    InputError
        If the file is missing, lacks the ``case_id`` and ``image`` columns, or
        repeats a case id.
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

    cases = [
        Case(r["case_id"], resolve(r["image"]), resolve(r.get("label_map")), resolve(r.get("mask")))  # type: ignore[arg-type]
        for r in rows
    ]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: case ids must be unique")
    return cases


def write_manifest(path: str | Path, cases: list[Case]) -> Path:
    """Write cases to a manifest CSV atomically (absolute paths)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for c in cases:
        writer.writerow([c.case_id] + [str(Path(p).resolve()) if p else "" for p in (c.image, c.label_map, c.mask)])
    return atomic_write_text(path, buf.getvalue())


def scan_folder(
    folder: str | Path,
    image_pattern: str = r"(?P<case_id>.+)_SS\.nii(\.gz)?$",
    label_suffix: str = "_glm",
    mask_suffix: str = "_mask",
) -> list[Case]:
    """Find cases in a folder laid out like the MICCAI 2012 data.

    Images match ``image_pattern`` (a regular expression with a ``case_id``
    group); the label map and mask share the case id with ``label_suffix`` and
    ``mask_suffix`` and the same extension.

    Raises
    ------
    InputError
        If the folder does not exist or holds no matching image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    regex = re.compile(image_pattern)
    cases = []
    for image in sorted(folder.iterdir()):
        match = regex.match(image.name)
        if not match:
            continue
        case_id = match.group("case_id")
        ext = ".nii.gz" if image.name.endswith(".gz") else ".nii"
        label = folder / f"{case_id}{label_suffix}{ext}"
        mask = folder / f"{case_id}{mask_suffix}{ext}"
        cases.append(Case(case_id, image, label if label.exists() else None, mask if mask.exists() else None))
    if not cases:
        raise InputError(f"{folder}: no image matches {image_pattern!r}; pass --pattern")
    return cases
