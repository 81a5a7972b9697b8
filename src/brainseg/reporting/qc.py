"""Quality-control figure: label map over the image in three orthogonal planes."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from brainseg.io.atomic import atomic_path
from brainseg.labels import LabelTable

__all__ = ["label_colors", "qc_figure", "save_qc_png"]


def label_colors(max_label: int) -> np.ndarray:
    """A fixed, well-spread RGB colour per label number (golden-angle hues); label 0 black.

    Parameters
    ----------
    max_label : int
        The largest label number to colour.

    Returns
    -------
    ndarray of uint8, shape (max_label + 1, 3)
    """
    colors = np.zeros((max_label + 1, 3), np.uint8)
    for label in range(1, max_label + 1):
        hue = (label * 0.618033988749895) % 1.0
        value = 0.75 + 0.25 * ((label * 7) % 3) / 2
        colors[label] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.8, value)) * 255)
    return colors


OUTLINE_COLOR = np.array([255, 230, 0], np.uint8)  # brain mask outline: yellow


def _panel(
    image2d: np.ndarray, labels2d: np.ndarray, colors: np.ndarray, alpha: float, outline2d: np.ndarray | None = None
) -> np.ndarray:
    # In-plane axes (first: left->right, second: bottom->top) -> display rows top->bottom.
    img = np.flipud(image2d.T)
    lab = np.flipud(labels2d.T)
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
    overlay = colors[lab].astype(np.float32)
    on = (lab > 0)[..., None]
    panel = np.where(on, (1 - alpha) * rgb + alpha * overlay, rgb).astype(np.uint8)
    if outline2d is not None:
        inside = np.flipud(np.asarray(outline2d, bool).T)
        edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
        panel[edge] = OUTLINE_COLOR
    return panel


def qc_figure(
    image: np.ndarray,
    label_map: np.ndarray,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    *,
    alpha: float = 0.45,
    pixel_mm: float = 0.5,
    outline: np.ndarray | None = None,
    labels: LabelTable | None = None,
) -> np.ndarray:
    """Axial, coronal and sagittal overlays through the centre of the labelled brain.

    Parameters
    ----------
    image : ndarray of float, shape (D, H, W)
        Intensities in RAS+ order.
    label_map : ndarray of int, shape (D, H, W)
        Protocol label numbers in RAS+ order.
    spacing : tuple of 3 float
        Voxel size in mm; panels are drawn at ``pixel_mm`` per pixel so that
        anisotropic voxels keep their true proportions.
    alpha : float
        Opacity of the label colours.
    pixel_mm : float
        Display pixel size in mm.
    outline : ndarray of bool, shape (D, H, W), optional
        A brain mask drawn as a one-pixel yellow outline (to check skull stripping).
    labels : LabelTable, optional
        Its colours (from a colour table) replace brainseg's palette for its
        label numbers.

    Returns
    -------
    ndarray of uint8, shape (rows, cols, 3)
        Panels side by side, neurological convention (left on the left),
        anterior/superior up.

    Raises
    ------
    ValueError
        If ``label_map`` or ``outline`` does not have ``image``'s shape.
    """
    if image.shape != label_map.shape:
        raise ValueError(f"image shape {image.shape} != label map shape {label_map.shape}")
    fg = label_map > 0
    centre = np.round(np.argwhere(fg).mean(axis=0)).astype(int) if fg.any() else np.array(image.shape) // 2
    lo, hi = np.percentile(image[image != 0], [1, 99.5]) if (image != 0).any() else (0.0, 1.0)
    scaled = np.clip((image - lo) / max(hi - lo, 1e-6) * 255, 0, 255)
    colors = label_colors(max(int(label_map.max(initial=0)), max(labels.labels) if labels else 0))
    if labels is not None and labels.colors is not None:
        for c in range(1, labels.num_classes):
            colors[labels.labels[c]] = labels.colors[c]
    x, y, z = centre
    if outline is not None and outline.shape != image.shape:
        raise ValueError(f"outline shape {outline.shape} != image shape {image.shape}")
    cuts = [(slice(None), slice(None), z), (slice(None), y, slice(None)), (x, slice(None), slice(None))]
    in_plane = [
        (spacing[0], spacing[1]),
        (spacing[0], spacing[2]),
        (spacing[1], spacing[2]),
    ]  # axial, coronal, sagittal
    panels = []
    for cut, (sa, sb) in zip(cuts, in_plane):
        mask2d = None if outline is None else outline[cut]
        panel = _panel(scaled[cut], np.clip(label_map[cut], 0, None), colors, alpha, mask2d)
        size = (max(int(round(panel.shape[1] * sa / pixel_mm)), 1), max(int(round(panel.shape[0] * sb / pixel_mm)), 1))
        panels.append(np.asarray(Image.fromarray(panel).resize(size, Image.NEAREST)))
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)


def save_qc_png(path: str | Path, figure: np.ndarray) -> Path:
    """Write an RGB figure as PNG atomically.

    Parameters
    ----------
    path : str or Path
        The PNG file (replaced if it exists; missing parent folders are created).
    figure : ndarray of uint8, shape (rows, cols, 3)
        From :func:`qc_figure`.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(figure).save(tmp, format="PNG")
    return Path(path)
