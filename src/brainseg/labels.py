"""Label protocols: class index <-> protocol label number <-> structure name (and colour).

A protocol is a property of the data and of the model folder, never of the code. A
:class:`LabelTable` comes from

* our TSV (``class_index``, ``label``, ``name`` and optionally ``color`` as ``#rrggbb`` and
  ``merged``: other label numbers that map to the same class, ``;``-separated), written into every
  model folder as ``labels.tsv``;
* the data (:func:`build_label_table`, ``brainseg labels MANIFEST``): every label number present in
  the label maps, named from a FreeSurfer-style colour table (:func:`read_lut`) when one is given,
  with labels ignored (mapped to background) or merged into another;
* the shipped MICCAI 2012 table (``'miccai2012'``), for the shipped models.

Label numbers may be large and non-contiguous (0, 2, 41, 1002, 2035, 10000). Class 0 is always
background, label 0.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from brainseg.errors import InputError

__all__ = ["SHIPPED_TABLES", "LabelCounts", "LabelTable", "build_label_table", "read_lut", "resolve_label_table"]

#: Label tables shipped inside the package, by the name ``training.labels`` and ``--labels`` accept.
SHIPPED_TABLES = {"miccai2012": "miccai2012_labels.tsv"}

Color = tuple[int, int, int]


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
        ``labels[c]`` is the protocol label number of class ``c`` (written
        into predicted label maps).
    names : tuple of str
        ``names[c]`` is the structure name of class ``c``.
    colors : tuple of (int, int, int) or None
        ``colors[c]`` is the RGB colour of class ``c`` (from a colour table;
        the QC figure uses it), or None for brainseg's palette.
    merged : tuple of tuple of int
        ``merged[c]`` lists the other label numbers that a reference label map
        may hold for class ``c`` (merged protocols; labels listed under class 0
        are ignored, i.e. background). Empty, or one tuple per class.
    """

    labels: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[Color, ...] | None = None
    merged: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.names):
            raise InputError(f"label table: {len(self.labels)} labels but {len(self.names)} names")
        if not self.labels or self.labels[0] != 0:
            raise InputError("label table: class 0 must be background with label number 0")
        if len(set(self.labels)) != len(self.labels):
            raise InputError("label table: label numbers must be unique")
        if min(self.labels) < 0:
            raise InputError("label table: label numbers must be >= 0")
        if self.colors is not None and len(self.colors) != len(self.labels):
            raise InputError(f"label table: {len(self.colors)} colours for {len(self.labels)} classes")
        if self.merged:
            if len(self.merged) != len(self.labels):
                raise InputError(f"label table: 'merged' has {len(self.merged)} entries for {len(self.labels)} classes")
            every = [n for group in self.merged for n in group] + list(self.labels)
            if len(set(every)) != len(every) or min(every) < 0:
                raise InputError("label table: a label number is listed twice (as a class and as merged) or is < 0")

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.labels)

    def sources(self, c: int) -> tuple[int, ...]:
        """Every label number a reference label map may hold for class ``c`` (its own first).

        Parameters
        ----------
        c : int
            A class index, ``0 .. num_classes - 1``.

        Returns
        -------
        tuple of int
            ``labels[c]``, then the label numbers merged into class ``c``.
        """
        return (self.labels[c], *(self.merged[c] if self.merged else ()))

    @classmethod
    def from_tsv(cls, path: str | Path) -> LabelTable:
        """Read a TSV with columns ``class_index``, ``label``, ``name`` (and optionally ``color``, ``merged``).

        Other columns (``voxels``, ``cases`` written by ``brainseg labels``) are ignored.

        Parameters
        ----------
        path : str or Path
            The TSV (e.g. a model folder's ``labels.tsv``).

        Returns
        -------
        LabelTable
            One class per row.

        Raises
        ------
        InputError
            If the file is missing, columns are missing, class indices are not
            ``0 .. C-1`` in order, a number or colour does not parse, or the rows do not make a valid
            table (class 0 not background, a label number repeated or negative).
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such label table; give a TSV written by 'brainseg labels' or a model folder")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or not {"class_index", "label", "name"} <= set(rows[0]):
            raise InputError(f"{path}: expected a TSV with columns class_index, label, name")
        try:
            indices = [int(r["class_index"]) for r in rows]
            labels = tuple(int(r["label"]) for r in rows)
            merged = tuple(tuple(int(n) for n in (r.get("merged") or "").split(";") if n.strip()) for r in rows)
            colors = tuple(_parse_color(r["color"]) for r in rows) if "color" in rows[0] else None
        except (TypeError, ValueError) as err:
            raise InputError(f"{path}: {err}; label numbers and class indices are integers, colours #rrggbb") from None
        if indices != list(range(len(rows))):
            raise InputError(f"{path}: class_index must run 0, 1, ..., {len(rows) - 1} in order")
        try:
            return cls(labels, tuple(r["name"] for r in rows), colors, merged if any(merged) else ())
        except InputError as err:
            raise InputError(f"{path}: {err}") from None

    @classmethod
    def miccai2012(cls) -> LabelTable:
        """The MICCAI 2012 Multi-Atlas Labeling protocol: 134 structures + background.

        Label numbers the challenge ignored are not classes; :meth:`to_classes`
        maps them to background.

        Returns
        -------
        LabelTable
            The shipped ``miccai2012`` table.
        """
        return cls.shipped("miccai2012")

    @classmethod
    def shipped(cls, name: str) -> LabelTable:
        """A table shipped inside the package (:data:`SHIPPED_TABLES`).

        Parameters
        ----------
        name : str
            A key of :data:`SHIPPED_TABLES` (``'miccai2012'``).

        Returns
        -------
        LabelTable
            The table.

        Raises
        ------
        KeyError
            If ``name`` is not a shipped table (:func:`resolve_label_table` checks the name first).
        """
        ref = resources.files("brainseg.data").joinpath(SHIPPED_TABLES[name])
        with resources.as_file(ref) as path:
            return cls.from_tsv(path)

    def to_tsv(self, path: str | Path, extra: Mapping[str, Sequence[object]] | None = None) -> None:
        """Write the table in the format :meth:`from_tsv` reads.

        Parameters
        ----------
        path : str or Path
            The TSV to write (atomically).
        extra : dict of str to sequence, optional
            More columns, one value per class (e.g. ``voxels``, ``cases``).
        """
        from brainseg.io.atomic import atomic_write_text

        extra = dict(extra or {})
        header = ["class_index", "label", "name"]
        header += ["color"] if self.colors is not None else []
        header += ["merged"] if self.merged else []
        header += list(extra)
        lines = ["\t".join(header)]
        for c, (label, name) in enumerate(zip(self.labels, self.names)):
            row = [str(c), str(label), name.replace("\t", " ")]
            if self.colors is not None:
                row.append("#{:02x}{:02x}{:02x}".format(*self.colors[c]))
            if self.merged:
                row.append(";".join(str(n) for n in self.merged[c]))
            row += [str(values[c]) for values in extra.values()]
            lines.append("\t".join(row))
        atomic_write_text(path, "\n".join(lines) + "\n")

    def to_classes(self, label_map: np.ndarray) -> np.ndarray:
        """Map protocol label numbers to class indices (merged labels to their class, unknown labels to 0).

        Parameters
        ----------
        label_map : ndarray of int, any shape
            Protocol label numbers (>= 0).

        Returns
        -------
        ndarray of uint8 (int16 if more than 256 classes), same shape

        Raises
        ------
        ValueError
            If ``label_map`` holds negative numbers.
        """
        label_map = np.asarray(label_map)
        if label_map.size and label_map.min() < 0:
            raise ValueError("label maps must not hold negative label numbers")
        every = [n for c in range(self.num_classes) for n in self.sources(c)]
        lut = np.zeros(max(int(label_map.max(initial=0)), max(every)) + 1, np.int64)
        for c in range(self.num_classes):
            lut[list(self.sources(c))] = c
        dtype = np.uint8 if self.num_classes <= 256 else np.int16
        return lut[label_map.astype(np.int64)].astype(dtype)

    def to_labels(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices to protocol label numbers, as int32.

        Parameters
        ----------
        classes : ndarray of int, any shape
            Class indices, ``0 .. num_classes - 1``.

        Returns
        -------
        ndarray of int32, same shape
            ``labels[classes]``.

        Raises
        ------
        IndexError
            If a class index is ``num_classes`` or more.
        """
        return np.asarray(self.labels, dtype=np.int32)[np.asarray(classes, dtype=np.int64)]


def _parse_color(text: str) -> Color:
    match = re.fullmatch(r"#?([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})", text.strip())
    if not match:
        raise ValueError(f"colour {text!r} is not #rrggbb")
    return tuple(int(g, 16) for g in match.groups())  # type: ignore[return-value]


def read_lut(path: str | Path) -> dict[int, tuple[str, Color]]:
    r"""Read a FreeSurfer-style colour table (``FreeSurferColorLUT.txt``).

    Each non-comment line is ``number name R G B A`` separated by white space;
    ``#`` starts a comment; blank lines are skipped. The alpha column may be
    missing.

    Parameters
    ----------
    path : str or Path
        The colour table.

    Returns
    -------
    dict of int to (str, (int, int, int))
        Label number -> (name, RGB colour).

    Raises
    ------
    InputError
        If the file is missing or a line does not parse (its number is named).

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "lut.txt")
    ...     _ = open(p, "w").write("# FreeSurfer\n0 Unknown 0 0 0 0\n17  Left-Hippocampus  220 216 20 0\n")
    ...     read_lut(p)[17]
    ('Left-Hippocampus', (220, 216, 20))
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such colour table")
    table: dict[int, tuple[str, Color]] = {}
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            label = int(parts[0])
            rgb = tuple(int(v) for v in parts[2:5]) if len(parts) >= 5 else (128, 128, 128)
            if len(parts) < 2 or label < 0 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except ValueError:
            raise InputError(
                f"{path}: line {number} is not 'number name R G B A' ({raw.strip()[:60]!r}); fix or remove it"
            ) from None
        table[label] = (parts[1], rgb)  # type: ignore[assignment]
    if not table:
        raise InputError(f"{path}: holds no 'number name R G B A' lines")
    return table


@dataclass(frozen=True)
class LabelCounts:
    """How often each label number occurs in a set of label maps.

    Attributes
    ----------
    voxels : dict of int to int
        Label number -> voxels holding it, over all label maps.
    cases : dict of int to int
        Label number -> label maps holding it.
    """

    voxels: dict[int, int]
    cases: dict[int, int]

    @classmethod
    def count(cls, label_maps: Iterable[np.ndarray]) -> LabelCounts:
        """Count the label numbers of some label maps (arrays of int >= 0).

        Parameters
        ----------
        label_maps : iterable of ndarray of int
            The label maps, any shape (read one at a time, so a generator keeps one in memory).

        Returns
        -------
        LabelCounts
            Voxels and label maps per label number present.
        """
        voxels: dict[int, int] = {}
        cases: dict[int, int] = {}
        for label_map in label_maps:
            values, counts = np.unique(np.asarray(label_map), return_counts=True)
            for v, n in zip(values.tolist(), counts.tolist()):
                voxels[v] = voxels.get(v, 0) + n
                cases[v] = cases.get(v, 0) + 1
        return cls(voxels, cases)


def build_label_table(
    counts: LabelCounts,
    lut: Mapping[int, tuple[str, Color]] | None = None,
    ignore: Iterable[int] = (),
    merge: Sequence[tuple[Sequence[int], int]] = (),
) -> LabelTable:
    """A label table with one class per label number present in the data.

    Parameters
    ----------
    counts : LabelCounts
        The label numbers present (:meth:`LabelCounts.count`).
    lut : dict, optional
        Names and colours by label number (:func:`read_lut`); else ``'label N'``
        and brainseg's palette.
    ignore : iterable of int
        Label numbers mapped to background (listed under class 0's ``merged``).
    merge : sequence of (sources, destination)
        Each source label number becomes the class of ``destination`` (which
        need not occur in the data itself).

    Returns
    -------
    LabelTable
        Background first, then the classes in increasing label number.

    Raises
    ------
    InputError
        If a label is both ignored and merged, merged twice, merged into an
        ignored label, or 0 is ignored or merged.

    Examples
    --------
    >>> counts = LabelCounts.count([np.array([0, 2, 41, 41, 1002, 2035])])
    >>> table = build_label_table(counts, merge=[((2035,), 1002)])
    >>> table.labels, table.merged
    ((0, 2, 41, 1002), ((), (), (), (2035,)))
    """
    ignore = {int(n) for n in ignore}
    sources: dict[int, int] = {}
    for group, destination in merge:
        for n in group:
            n = int(n)
            if n in sources or n in ignore or n == 0 or n == destination:
                raise InputError(f"label {n} is merged twice, merged into itself, ignored or background; fix --merge")
            sources[n] = int(destination)
    if 0 in ignore or ignore & set(sources.values()) or set(sources.values()) & set(sources):
        raise InputError("--ignore 0, merging into an ignored label or chains of merges (a:b, b:c) are not allowed")
    present = set(counts.voxels) - {0}
    kept = sorted((present - ignore - set(sources)) | set(sources.values()))
    labels = (0, *kept)
    lut = dict(lut or {})
    names = tuple(lut[n][0] if n in lut else ("Background" if n == 0 else f"label {n}") for n in labels)
    colors = tuple(lut[n][1] if n in lut else (128, 128, 128) for n in labels) if lut else None
    merged = [tuple(sorted(ignore))]
    merged += [tuple(sorted(s for s, d in sources.items() if d == n)) for n in kept]
    return LabelTable(labels, names, colors, tuple(merged) if any(merged) else ())


def resolve_label_table(spec: str | Path, *, base: Path | None = None) -> LabelTable:
    """A label table named in a config or on the command line: a shipped name or a TSV file.

    Parameters
    ----------
    spec : str or Path
        ``'miccai2012'`` (:data:`SHIPPED_TABLES`) or the path of a TSV.
    base : Path, optional
        Folder that relative paths are relative to.

    Returns
    -------
    LabelTable
        The shipped table (when no file of that name exists) or the TSV's table.

    Raises
    ------
    InputError
        If the file is missing or not a label table.
    """
    path = Path(spec)
    if base is not None and not path.is_absolute():
        path = base / path
    if str(spec) in SHIPPED_TABLES and not path.exists():  # a file of that name, where relative paths point, wins
        return LabelTable.shipped(str(spec))
    return LabelTable.from_tsv(path)
