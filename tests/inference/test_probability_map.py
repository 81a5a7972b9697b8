"""ProbabilityMap: one class at a time on the input voxels, streamed into NIfTI equal to writing it whole."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brainseg.inference.probability_map import ProbabilityMap
from brainseg.io.nifti import Grid, save_volume
from brainseg.preprocessing.pipeline import compose_index


@pytest.fixture
def working(rng) -> np.ndarray:
    logits = rng.standard_normal((5, 6, 7, 8))
    return (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float16)


@pytest.fixture
def index(rng) -> np.ndarray:
    # An input grid of another shape whose voxels point at working voxels, a third of them background.
    out = rng.integers(0, 6 * 7 * 8, (9, 4, 11))
    out[rng.random(out.shape) < 0.33] = -1
    return out


def test_class_volumes_gather_the_working_grid(working, index):
    p = ProbabilityMap(working, index)
    assert p.shape == (5, 9, 4, 11) and len(p) == p.num_classes == 5 and p.dtype == np.float16
    flat = working.reshape(5, -1)
    for c in range(5):
        volume = p[c]
        assert volume.shape == (9, 4, 11) and volume.dtype == np.float16
        np.testing.assert_array_equal(volume[index >= 0], flat[c, index[index >= 0]])
        assert np.all(volume[index < 0] == (1 if c == 0 else 0))
    np.testing.assert_array_equal(p[-1], p[4])
    whole = np.asarray(p)
    assert whole.shape == p.shape
    np.testing.assert_array_equal(whole[2], p[2])
    assert p.astype(np.float32).dtype == np.float32
    with pytest.raises(IndexError, match="class 5 out of range"):
        p[5]


def test_identity_index_is_the_working_array(working):
    p = ProbabilityMap(working, None)
    assert p.shape == working.shape
    np.testing.assert_array_equal(np.asarray(p), working)


def test_compose_index_chains_two_maps(rng):
    outer = rng.integers(-1, 20, (3, 4, 5))
    inner = rng.integers(-1, 50, 20)
    chained = compose_index(outer, inner)
    expected = np.where(outer >= 0, inner[np.maximum(outer, 0)], -1)
    np.testing.assert_array_equal(chained, expected)
    assert compose_index(None, inner) is inner and compose_index(outer, None) is outer


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_streamed_file_equals_the_whole_array_written_at_once(working, index, tmp_path, suffix):
    # A grid stored LPI-like with permuted axes: the reorientation runs per class.
    affine = np.array([[0.0, 0.0, -2.0, 30.0], [1.2, 0.0, 0.0, -5.0], [0.0, -1.0, 0.0, 8.0], [0, 0, 0, 1.0]])
    p = ProbabilityMap(working, index)
    on_disk = Grid((0, 0, 0), affine).from_canonical(p[0]).shape  # reorientation needs no shape
    assert on_disk == (4, 11, 9)  # a RAS+ (9, 4, 11) array stored with the axes permuted
    canonical = Grid(on_disk, affine)
    streamed = p.save(tmp_path / f"streamed{suffix}", canonical)
    whole = np.rint(np.asarray(p).astype(np.float32) * 255).astype(np.uint8)
    reference = save_volume(tmp_path / f"whole{suffix}", whole, canonical, slope=1 / 255)
    a, b = nib.load(streamed), nib.load(reference)
    assert a.shape == b.shape == (4, 11, 9, 5)
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled()))
    np.testing.assert_allclose(a.get_fdata().sum(axis=3), 1.0, atol=5 * 0.5 / 255 + 2e-3)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary left behind
