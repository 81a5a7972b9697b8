"""Tests of brainseg.io.nifti: loading into RAS+, writing back on the source grid, input errors."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from brainseg.errors import InputError
from brainseg.io.nifti import Grid, is_volume_path, load_volume, output_stem, save_volume


def _permuted_affine() -> np.ndarray:
    # Disk axis 0 -> S (1 mm), axis 1 -> L (1 mm), axis 2 -> P (2 mm), plus a translation.
    return np.array(
        [
            [0.0, -1.0, 0.0, 5.0],
            [0.0, 0.0, -2.0, 30.0],
            [1.0, 0.0, 0.0, -8.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def _world(affine: np.ndarray, index) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, float) + affine[:3, 3]


def test_load_las_gives_ras(tmp_path, volume, affine):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
    vol = load_volume(path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.data.dtype == np.float32
    assert vol.data.shape == (10, 20, 30)
    np.testing.assert_array_equal(vol.data, volume[::-1])
    assert vol.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert vol.grid.shape == (10, 20, 30)
    np.testing.assert_array_equal(vol.grid.affine, affine)


def test_load_permuted_axes_gives_ras_and_spacing(tmp_path, volume):
    affine = _permuted_affine()
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    vol = load_volume(path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    # RAS axes: R <- disk axis 1 (20 voxels, 1 mm), A <- disk axis 2 (30, 2 mm), S <- disk axis 0 (10, 1 mm).
    assert vol.data.shape == (20, 30, 10)
    assert vol.spacing == pytest.approx((1.0, 2.0, 1.0))
    expected = nib.as_closest_canonical(nib.Nifti1Image(volume, affine))
    np.testing.assert_array_equal(vol.data, np.asarray(expected.dataobj))
    np.testing.assert_allclose(vol.affine, expected.affine)


@pytest.mark.parametrize("which", ["las", "permuted"])
def test_loaded_affine_keeps_world_positions(tmp_path, volume, affine, which):
    affine = affine if which == "las" else _permuted_affine()
    path = tmp_path / "img.nii"
    nib.save(nib.Nifti1Image(volume, affine), path)
    vol = load_volume(path)
    # The voxel holding a given value sits at the same world point before and after.
    for disk_index in [(0, 0, 0), (9, 19, 29), (3, 7, 11)]:
        value = volume[disk_index]
        hits = np.argwhere(vol.data == value)
        assert len(hits) == 1
        np.testing.assert_allclose(_world(vol.affine, hits[0]), _world(affine, disk_index))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mgz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
def test_save_back_on_grid_reproduces_labels(tmp_path, label_volume, affine, suffix, dtype):
    original = label_volume.astype(dtype)
    src = tmp_path / f"labels{suffix}"
    img = nib.MGHImage(original, affine) if suffix == ".mgz" else nib.Nifti1Image(original, affine)
    nib.save(img, src)
    vol = load_volume(src, kind="label_map")
    assert vol.data.dtype == np.int32
    out = save_volume(tmp_path / f"out{suffix}", vol.data, vol.grid, dtype=dtype)
    back = nib.load(out)
    data = np.asarray(back.dataobj)
    assert data.dtype.newbyteorder("=") == np.dtype(dtype)  # MGH files are big-endian
    np.testing.assert_array_equal(data, original)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert nib.aff2axcodes(back.affine) == ("L", "A", "S")


def test_save_back_permuted_grid(tmp_path, label_volume):
    affine = _permuted_affine()
    src = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(label_volume, affine), src)
    vol = load_volume(src, kind="label_map")
    back = nib.load(save_volume(tmp_path / "out.nii.gz", vol.data, vol.grid, dtype=np.int16))
    np.testing.assert_array_equal(np.asarray(back.dataobj), label_volume)
    assert back.get_data_dtype() == np.int16
    np.testing.assert_allclose(back.affine, affine)


def test_save_image_keeps_float_values(tmp_path, volume, affine):
    src = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), src)
    vol = load_volume(src)
    back = nib.load(save_volume(tmp_path / "out.nii.gz", vol.data, vol.grid))
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(back.dataobj), volume)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mgz"])
def test_scaled_uint8_probabilities_read_back_as_probabilities(tmp_path, affine, suffix):
    # MGH has no scale factor: the slope used to be dropped there, so a .mgz held 0..255, not 0..1
    grid = Grid((4, 3, 2), affine)
    probabilities = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 3, 2)
    stored = np.round(probabilities * 255)
    back = nib.load(save_volume(tmp_path / f"p{suffix}", stored, grid, dtype=np.uint8, slope=1 / 255))
    read = grid.to_canonical(np.asarray(back.get_fdata(), np.float32))[0]
    np.testing.assert_allclose(read, probabilities, atol=0.5 / 255 + 1e-6)


def test_save_channels_last(tmp_path, volume, affine):
    grid = Grid((10, 20, 30), affine)
    canonical, _ = grid.to_canonical(volume)
    stacked = np.stack([canonical, 2 * canonical])
    back = np.asarray(nib.load(save_volume(tmp_path / "p.nii.gz", stacked, grid)).dataobj)
    assert back.shape == (10, 20, 30, 2)
    np.testing.assert_array_equal(back[..., 0], volume)
    np.testing.assert_array_equal(back[..., 1], 2 * volume)


def test_grid_round_trip(volume, affine):
    grid = Grid((10, 20, 30), affine)
    canonical, _ = grid.to_canonical(volume)
    np.testing.assert_array_equal(grid.from_canonical(canonical), volume)


def test_save_wrong_shape_raises(tmp_path, affine):
    grid = Grid((10, 20, 30), affine)
    with pytest.raises(ValueError, match="grid shape"):
        save_volume(tmp_path / "x.nii.gz", np.zeros((10, 30, 20), np.float32), grid)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".mgz"])
def test_save_leaves_no_temp_files(tmp_path, volume, affine, suffix):
    grid = Grid((10, 20, 30), affine)
    canonical, _ = grid.to_canonical(volume)
    save_volume(tmp_path / f"a{suffix}", canonical, grid)
    save_volume(tmp_path / f"a{suffix}", canonical, grid)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}"]


def test_4d_single_volume_accepted(tmp_path, volume, affine):
    path = tmp_path / "img4d.nii.gz"
    nib.save(nib.Nifti1Image(volume[..., None], affine), path)
    vol = load_volume(path)
    assert vol.data.shape == (10, 20, 30)
    np.testing.assert_array_equal(vol.data, volume[::-1])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "absent.nii.gz")


def test_text_file_named_nii_gz(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match="cannot read"):
        load_volume(path)


def test_gzipped_text_named_nii_gz(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(InputError, match="cannot read"):
        load_volume(path)


def test_truncated_nii_gz(tmp_path, volume, affine):
    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read"):
        load_volume(path)


def test_2d_image(tmp_path, rng):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(rng.uniform(1, 2, (10, 20)).astype(np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="3-D"):
        load_volume(path)


def test_4d_two_volumes(tmp_path, volume, affine):
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([volume, volume], axis=-1), affine), path)
    with pytest.raises(InputError, match="3-D"):
        load_volume(path)


def test_single_slice_volume(tmp_path, volume, affine):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(volume[:, :, :1], affine), path)
    with pytest.raises(InputError, match="too small for a brain image"):
        load_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_voxel(tmp_path, volume, affine, bad):
    volume = volume.copy()
    volume[3, 4, 5] = bad
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    with pytest.raises(InputError, match="NaN or Inf"):
        load_volume(path)


def test_all_zero_image(tmp_path, affine):
    path = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 20, 30), np.float32), affine), path)
    with pytest.raises(InputError, match="all zero"):
        load_volume(path)
    # An all-zero label map is legitimate (e.g. an empty prediction).
    assert not load_volume(path, kind="label_map").data.any()


def test_non_integer_label_map(tmp_path, volume, affine):
    path = tmp_path / "frac.nii.gz"
    nib.save(nib.Nifti1Image(volume + 0.5, affine), path)
    with pytest.raises(InputError, match=r"must hold integer values \(e.g. [0-9.]+ is not\); give the label file"):
        load_volume(path, kind="label_map")


@pytest.mark.parametrize("kind", ["mask", "label_map"])
def test_float_stored_integers_are_rounded_not_truncated(tmp_path, affine, kind):
    """A mask saved as float64 holds 0.99999997 for 1 (BraTS's brainmask.nii.gz): it loads as 1."""
    data = np.zeros((6, 7, 5))
    data[1:4, 2:6, 1:4] = 1 - 3e-8
    data[2, 3, 2] = 2 + 4e-4
    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    loaded = load_volume(path, kind=kind).data
    assert loaded.dtype == np.int32 and loaded.sum() == 3 * 4 * 3 + 1 and loaded.max() == 2


def test_bad_kind(tmp_path, volume, affine):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    with pytest.raises(ValueError, match="kind"):
        load_volume(path, kind="segmentation")


@pytest.mark.parametrize(
    ("name", "stem", "is_volume"),
    [
        ("sub-01_T1w.nii.gz", "sub-01_T1w", True),
        ("a.b.NII", "a.b", True),
        ("brain.mgz", "brain", True),
        ("notes.txt", "notes", False),
    ],
)
def test_output_stem_and_suffix(name, stem, is_volume):
    assert output_stem(f"/some/dir/{name}") == stem
    assert is_volume_path(name) is is_volume
