"""Probabilistic atlases: per-class voxel frequencies of registered label maps (Ganaye et al. 2018, section 2.3).

The ProbBranch of Ganaye et al. reads, at each voxel, the probability of every
class given by an atlas built from the training label maps registered to a
common reference space. Frequencies are lightly smoothed and floored so that
no class is impossible anywhere, then renormalised to sum to 1 per voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainseg.io.atomic import atomic_path

__all__ = ["ProbabilisticAtlas"]


@dataclass(frozen=True)
class ProbabilisticAtlas:
    """A compact probabilistic atlas: each class's frequencies cropped to its bounding box, as uint8.

    A 135-class atlas on a 1 mm grid would take ~2.6 GB as float32; most
    classes are zero almost everywhere, so each class keeps only the box where
    its smoothed frequency is non-zero, quantised to ``1/255``. The floor and
    the renormalisation are applied by :meth:`lookup`, so looked-up
    probabilities are positive and sum to 1.

    Attributes
    ----------
    shape : tuple of 3 int
        Grid shape ``(D, H, W)`` (the reference template's grid).
    boxes : ndarray of int64, shape (C, 6)
        Per class ``(d0, h0, w0, d1, h1, w1)``, half-open voxel box; empty if
        ``d0 == d1``.
    values : tuple of ndarray of uint8
        Per class, the quantised frequencies inside its box.
    floor : float
        Added to every class probability before renormalisation.
    """

    shape: tuple[int, int, int]
    boxes: np.ndarray
    values: tuple[np.ndarray, ...]
    floor: float = 1e-4

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.values)

    @classmethod
    def build(
        cls,
        class_maps: Sequence[np.ndarray],
        num_classes: int,
        *,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        sigma_mm: float = 1.0,
        floor: float = 1e-4,
    ) -> ProbabilisticAtlas:
        """Build from class maps on the reference grid, one class at a time (low memory).

        Per class, the frequency of the class over the maps, smoothed with a
        Gaussian of ``sigma_mm`` (mm, zero outside the grid), kept in the box
        where the class occurs grown by 4 sigma and stored as uint8 (1/255
        steps); the floor is added and rows renormalised at lookup.

        Parameters
        ----------
        class_maps : sequence of ndarray of int, each shape (D, H, W)
            Class indices of the registered training subjects.
        num_classes : int
            Number of classes, background included.
        spacing : tuple of 3 float
            Voxel size in mm.
        sigma_mm : float
            Gaussian smoothing in mm.
        floor : float
            Floor applied at lookup.

        Returns
        -------
        ProbabilisticAtlas
            On the grid of the maps, with one box (empty for a class that never occurs) per class.

        Raises
        ------
        ValueError
            If no map is given, the shapes differ or a class index is out of range.
        """
        maps = [np.asarray(m) for m in class_maps]
        if not maps:
            raise ValueError("no label maps given")
        shape = maps[0].shape
        for m in maps:
            if m.shape != shape:
                raise ValueError(f"label map shape {m.shape} != {shape}")
            if m.min() < 0 or m.max() >= num_classes:
                raise ValueError(f"class indices must lie in [0, {num_classes}), got {m.min()}..{m.max()}")
        sigma = [sigma_mm / s for s in spacing]
        margin = [int(np.ceil(4 * sg)) + 1 for sg in sigma]
        # Where each class occurs in each map, in one pass per map (class c is object c + 1).
        found = [ndimage.find_objects(m.astype(np.int32) + 1, max_label=num_classes) for m in maps]
        boxes = np.zeros((num_classes, 6), np.int64)
        values = []
        for c in range(num_classes):
            where = [f[c] for f in found if f[c] is not None]
            if not where:
                values.append(np.zeros((0, 0, 0), np.uint8))
                continue
            lo = [max(min(w[a].start for w in where) - margin[a], 0) for a in range(3)]
            hi = [min(max(w[a].stop for w in where) + margin[a], shape[a]) for a in range(3)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            freq = np.zeros([b - a for a, b in zip(lo, hi)], np.float32)
            for m in maps:
                freq += m[box] == c
            freq /= len(maps)
            if sigma_mm > 0:
                freq = ndimage.gaussian_filter(freq, sigma, mode="constant")
            boxes[c] = lo + hi
            values.append(np.round(np.clip(freq, 0, 1) * 255).astype(np.uint8))
        return cls(tuple(int(n) for n in shape), boxes, tuple(values), float(floor))  # type: ignore[arg-type]

    def quantised(self, indices: np.ndarray) -> np.ndarray:
        """Stored uint8 frequencies (``255 * f``) at voxels, before the floor; 0 outside the grid.

        Parameters
        ----------
        indices : ndarray of int, shape (N, 3)
            Voxel indices on the atlas grid.

        Returns
        -------
        ndarray of uint8, shape (N, C)
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
        out = np.zeros((len(idx), self.num_classes), np.uint8)
        inside = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        if len(idx) > 4096:
            # Many voxels: walk each class's box once through a voxel -> row index volume, filling one
            # class row at a time (contiguous writes); a repeated voxel reads the row of its last copy.
            flat = np.ravel_multi_index(tuple(idx[inside].T), self.shape)
            rows = np.full(int(np.prod(self.shape)), -1, np.int32 if len(flat) < 2**31 else np.int64)
            rows[flat] = np.arange(len(flat))
            rows = rows.reshape(self.shape)
            found = np.zeros((self.num_classes, len(flat)), np.uint8)
            for c, (box, values) in enumerate(zip(self.boxes, self.values)):
                if box[0] == box[3]:
                    continue
                sub = rows[box[0] : box[3], box[1] : box[4], box[2] : box[5]]
                hit = sub >= 0
                found[c, sub[hit]] = values[hit]
            found = np.ascontiguousarray(found.T)  # (voxels, classes): one transposing copy
            order = rows.reshape(-1)[flat]
            if not np.array_equal(order, np.arange(len(flat))):  # repeated voxels
                found = found[order]
            if inside.all():
                return found
            out[inside] = found
            return out
        for c, (box, values) in enumerate(zip(self.boxes, self.values)):
            if box[0] == box[3]:
                continue
            lo, hi = box[:3], box[3:]
            sel = np.flatnonzero(inside & np.all((idx >= lo) & (idx < hi), axis=1))
            if sel.size:
                local = idx[sel] - lo
                out[sel, c] = values[local[:, 0], local[:, 1], local[:, 2]]
        return out

    def normalise(self, quantised: np.ndarray) -> np.ndarray:
        """Probabilities from :meth:`quantised` values: ``q / 255 + floor``, renormalised per row.

        Rows that are all zero (outside the grid) get the background-only prior.

        Parameters
        ----------
        quantised : ndarray of uint8, shape (N, C)
            Stored frequencies from :meth:`quantised`.

        Returns
        -------
        ndarray of float32, shape (N, C)
        """
        probs = quantised.astype(np.float32) * np.float32(1.0 / 255.0)
        empty = ~quantised.any(axis=1)
        probs[empty, 0] = 1.0
        probs += np.float32(self.floor)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        """Class probabilities at voxels.

        Parameters
        ----------
        indices : ndarray of int, shape (N, 3)
            Voxel indices on the atlas grid; voxels outside the grid (or where
            no class was ever seen) get the background-only prior (class 0
            probability ~1).

        Returns
        -------
        ndarray of float32, shape (N, C)
            Positive probabilities summing to 1 per row.
        """
        return self.normalise(self.quantised(indices))

    def support(self, max_background: int = 250) -> np.ndarray:
        """Voxels where brains land: the stored background frequency at most ``max_background`` / 255.

        Parameters
        ----------
        max_background : int
            Largest stored background value (0..255) of a support voxel; 250 keeps
            every voxel some training brain reached, after the atlas' smoothing,
            with a background frequency below 98 %.

        Returns
        -------
        ndarray of bool, shape ``self.shape``

        Examples
        --------
        >>> import numpy as np
        >>> maps = [np.array([[[0, 1], [0, 0]]]), np.array([[[0, 1], [1, 0]]])]
        >>> ProbabilisticAtlas.build(maps, 2, sigma_mm=0.0).support()[0].astype(int)
        array([[0, 1],
               [1, 0]])
        """
        box, values = self.boxes[0], self.values[0]
        out = np.ones(self.shape, bool)  # no background seen: brain everywhere but where stored
        if box[0] < box[3]:
            out[box[0] : box[3], box[1] : box[4], box[2] : box[5]] = values <= max_background
        return out

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` file (compressed, no pickled objects).

        Parameters
        ----------
        path : str or Path
            The file to write (atomically; overwritten if present).
        """
        arrays = {"shape": np.array(self.shape), "boxes": self.boxes, "floor": np.array(self.floor)}
        arrays.update({f"class_{c:03d}": v for c, v in enumerate(self.values)})
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ProbabilisticAtlas:
        """Read an atlas written by :meth:`save` (``allow_pickle=False``).

        Parameters
        ----------
        path : str or Path
            An ``.npz`` file written by :meth:`save`.

        Returns
        -------
        ProbabilisticAtlas

        Raises
        ------
        ValueError
            If the file does not hold an atlas.
        """
        with np.load(path, allow_pickle=False) as data:
            try:
                boxes = data["boxes"]
                values = tuple(data[f"class_{c:03d}"] for c in range(len(boxes)))
                return cls(tuple(int(n) for n in data["shape"]), boxes, values, float(data["floor"]))  # type: ignore[arg-type]
            except KeyError as err:
                raise ValueError(f"{path}: not a brainseg atlas (missing {err})") from None
