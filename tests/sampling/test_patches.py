"""Tests of brainseg.sampling.patches against patches cut by hand with np.pad."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.sampling.patches import PLANE_AXIS, build_stack, extract_patches, from_plane, to_plane

PLANES = ("axial", "coronal", "sagittal")
BACKGROUND = -1.5
PAD = 60


def _hand_patch(slice_2d: np.ndarray, a: int, b: int, s: int, half: int = 12) -> np.ndarray:
    """Scale-``s`` patch of voxel (a, b) of a 2-D slice, from the module docstring's definition."""
    padded = np.pad(slice_2d.astype(np.float64), PAD, constant_values=BACKGROUND)
    c = (s - 1) // 2
    width = 2 * half + 1
    out = np.empty((width, width))
    for k in range(width):
        for col in range(width):
            y = PAD + a + s * (k - half) - c
            x = PAD + b + s * (col - half) - c
            out[k, col] = padded[y : y + s, x : x + s].mean()
    return out


def test_to_plane_axes(volume):
    assert PLANE_AXIS == {"sagittal": 0, "coronal": 1, "axial": 2}
    assert to_plane(volume, "sagittal").shape == (10, 20, 30)
    assert to_plane(volume, "coronal").shape == (20, 10, 30)
    assert to_plane(volume, "axial").shape == (30, 10, 20)
    np.testing.assert_array_equal(to_plane(volume, "axial")[7], volume[:, :, 7])
    np.testing.assert_array_equal(to_plane(volume, "coronal")[7], volume[:, 7, :])
    for plane in PLANES:
        np.testing.assert_array_equal(from_plane(to_plane(volume, plane), plane), volume)
    with pytest.raises(ValueError, match="plane"):
        to_plane(volume, "oblique")


@pytest.mark.parametrize("plane", PLANES)
def test_scale1_patch_is_padded_neighbourhood(volume, plane):
    stack = build_stack(volume, plane, scales=(1,), background=BACKGROUND)
    slices = to_plane(volume, plane)
    assert stack.shape == slices.shape
    S, A, B = slices.shape
    indices = np.array([(0, 0, 0), (S - 1, A - 1, B - 1), (S // 2, A // 2, B // 3), (1, A - 2, 3)])
    patches = extract_patches(stack, indices)
    assert patches.shape == (4, 1, 25, 25) and patches.dtype == np.float32
    for (i, a, b), patch in zip(indices, patches):
        padded = np.pad(slices[i], 12, constant_values=BACKGROUND)
        expected = padded[a : a + 25, b : b + 25]  # = slice[a-12 : a+13, b-12 : b+13], padded
        np.testing.assert_array_equal(patch[0], expected)
        np.testing.assert_array_equal(patch[0], _hand_patch(slices[i], a, b, 1))
        assert patch[0, 12, 12] == slices[i, a, b]


@pytest.mark.parametrize("plane", PLANES)
def test_multi_scale_patches_are_box_means(volume, plane):
    stack = build_stack(volume, plane, scales=(1, 2, 3), background=BACKGROUND)
    assert stack.scales == (1, 2, 3)
    assert stack.margin == 13 * 3
    slices = to_plane(volume, plane)
    S, A, B = slices.shape
    indices = np.array([(0, 0, 0), (S - 1, A - 1, B - 1), (S // 2, A // 2, B // 3)])
    patches = extract_patches(stack, indices)
    assert patches.shape == (3, 3, 25, 25)
    for (i, a, b), patch in zip(indices, patches):
        for j, s in enumerate((1, 2, 3)):
            np.testing.assert_allclose(patch[j], _hand_patch(slices[i], a, b, s), rtol=1e-5, atol=1e-4)


def test_scale2_sample_hand_value():
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    stack = build_stack(image, "sagittal", scales=(2,), background=0.0)
    patch = extract_patches(stack, np.array([[1, 2, 3]]))[0, 0]
    # Sample (12, 12) is the mean of voxels [2:4, 3:5] of slice 1; sample (12, 13) of [2:4, 5:7], half outside.
    assert patch[12, 12] == pytest.approx(image[1, 2:4, 3:5].mean())
    assert patch[12, 13] == pytest.approx(image[1, 2:4, 5].sum() / 4)
    assert patch[0, 0] == 0.0


def test_out_of_range_index(volume):
    stack = build_stack(volume, "coronal", scales=(1, 2), background=0.0)  # (S, A, B) = (20, 10, 30)
    for bad in ([20, 0, 0], [0, 10, 0], [0, 0, 30], [-1, 0, 0]):
        with pytest.raises(ValueError, match="outside"):
            extract_patches(stack, np.array([bad]))
    assert extract_patches(stack, np.array([[19, 9, 29]])).shape == (1, 2, 25, 25)
    assert extract_patches(stack, np.zeros((0, 3), int)).shape == (0, 2, 25, 25)


@pytest.mark.parametrize("plane", PLANES)
def test_29_wide_compressed_patches_are_87_wide_windows_in_3x3_blocks(volume, plane):
    # de Brebisson and Montana's orthogonal (scale 1) and compressed (scale 3) patches: half-width 14.
    stack = build_stack(volume, plane, scales=(1, 3), background=BACKGROUND, half=14)
    assert stack.half == 14 and stack.margin == 15 * 3
    slices = to_plane(volume, plane)
    S, A, B = slices.shape
    for i, a, b in [(0, 0, 0), (S // 2, A // 2, B // 3), (S - 1, A - 1, B - 1)]:
        patch = extract_patches(stack, np.array([[i, a, b]]))[0]
        assert patch.shape == (2, 29, 29)
        np.testing.assert_allclose(patch[0], _hand_patch(slices[i], a, b, 1, 14), atol=1e-5)
        padded = np.pad(slices[i].astype(np.float64), PAD, constant_values=BACKGROUND)
        window = padded[PAD + a - 43 : PAD + a + 44, PAD + b - 43 : PAD + b + 44]  # 87 x 87 centred on (a, b)
        blocks = window.reshape(29, 3, 29, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(patch[1], blocks, rtol=1e-5, atol=1e-4)
        assert patch[0, 14, 14] == slices[i, a, b]


def test_build_stack_errors(volume):
    with pytest.raises(ValueError, match="half"):
        build_stack(volume, "axial", (1,), 0.0, half=0)
    with pytest.raises(ValueError, match="3-D"):
        build_stack(volume[0], "axial", (1,), 0.0)
    with pytest.raises(ValueError, match="scales"):
        build_stack(volume, "axial", (0, 1), 0.0)
    with pytest.raises(ValueError, match="plane"):
        build_stack(volume, "transverse", (1,), 0.0)
