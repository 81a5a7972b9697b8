"""The validation gate (brainseg.io.validation): every refusal is one clear InputError naming the file."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli.main import main
from brainseg.errors import InputError
from brainseg.io import validation
from brainseg.io.nifti import load_volume
from brainseg.io.validation import (
    ImageLimits,
    estimate_memory_bytes,
    looks_like_label_map,
)


def write_raw_nifti(path, data, **fields):
    """Write a NIfTI-1 file byte by byte from a header whose fields are set as given (no nibabel fixing)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header["vox_offset"] = 352
    header["pixdim"] = [1, 1, 1, 1, 1, 1, 1, 1]
    for key, value in fields.items():
        header[key] = value
    blob = header.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")
    if str(path).endswith(".gz"):
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def brain_like(shape=(60, 64, 56), seed=0):
    """A noisy ellipsoid 'brain' with zero background (float32)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    return np.where(inside, 100 + 15 * rng.standard_normal(shape), 0).astype(np.float32)


SFORM = {"sform_code": 1, "srow_x": [1, 0, 0, -30], "srow_y": [0, 1, 0, -32], "srow_z": [0, 0, 1, -28]}


def test_a_brain_sized_image_passes_with_the_shipped_limits(tmp_path):
    path = write_raw_nifti(tmp_path / "ok.nii.gz", brain_like(), **SFORM)
    vol = load_volume(path)
    assert vol.data.shape == (60, 64, 56)
    np.testing.assert_allclose(vol.affine[:3, 3], [-30, -32, -28])


@pytest.mark.real_limits
def test_rgb_image_is_refused(tmp_path):
    rgb = np.zeros((60, 64, 56), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(InputError, match=r"rgb\.nii\.gz: voxels are RGB/structured .*single-channel"):
        load_volume(path)


def test_complex_image_is_refused(tmp_path):
    path = tmp_path / "cx.nii"
    nib.save(nib.Nifti1Image(brain_like().astype(np.complex64), np.eye(4)), path)
    with pytest.raises(InputError, match="complex"):
        load_volume(path)


@pytest.mark.real_limits
def test_4x4x4_image_is_too_small(tmp_path):
    path = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), path)
    with pytest.raises(InputError, match=r"tiny\.nii\.gz: 4x4x4 voxels is too small for a brain image"):
        load_volume(path)


@pytest.mark.real_limits
def test_field_of_view_smaller_than_a_brain_is_refused(tmp_path):
    path = write_raw_nifti(tmp_path / "small.nii.gz", brain_like((20, 64, 60)), **SFORM)  # 20 mm across
    with pytest.raises(InputError, match=r"field of view 20 x 64 x 60 mm is smaller than a brain"):
        load_volume(path)
    # the same array at 3 mm voxels covers 60 mm: accepted
    fields = dict(SFORM, srow_x=[3, 0, 0, 0])
    assert load_volume(write_raw_nifti(tmp_path / "ok.nii.gz", brain_like((20, 64, 60)), **fields)).spacing[0] == 3


def test_nan_in_sform_is_refused(tmp_path):
    path = write_raw_nifti(tmp_path / "nan.nii.gz", brain_like(), **dict(SFORM, srow_x=[np.nan, 0, 0, 0]))
    with pytest.raises(InputError, match=r"nan\.nii\.gz: the header's voxel-to-world matrix .* NaN or Inf"):
        load_volume(path)


def test_singular_sform_is_refused(tmp_path):
    path = write_raw_nifti(tmp_path / "flat.nii.gz", brain_like(), **dict(SFORM, srow_x=[0, 0, 0, 0]))
    with pytest.raises(InputError, match="singular"):
        load_volume(path)


@pytest.mark.parametrize("qform_code", [0, 1])
def test_pixdim_zero_is_refused_not_taken_as_1mm(tmp_path, qform_code):
    pixdim = [1, 0, 0, 0, 1, 1, 1, 1]
    path = write_raw_nifti(tmp_path / "p0.nii.gz", brain_like(), pixdim=pixdim, qform_code=qform_code)
    assert nib.load(path).header.get_zooms()[:3] == (1, 1, 1)  # what nibabel silently does
    with pytest.raises(InputError, match=r"p0\.nii\.gz: voxel size \(pixdim\) is 0 x 0 x 0 .* no volume in mm"):
        load_volume(path)
    with pytest.raises(InputError):
        load_volume(write_raw_nifti(tmp_path / "pnan.nii", brain_like(), pixdim=[1, np.nan, 1, 1, 1, 1, 1, 1]))


def test_pixdim_zero_with_a_valid_sform_is_fine(tmp_path):
    path = write_raw_nifti(tmp_path / "p0s.nii.gz", brain_like(), pixdim=[1, 0, 0, 0, 1, 1, 1, 1], **SFORM)
    assert load_volume(path).spacing == (1.0, 1.0, 1.0)


def test_no_qform_no_sform_warns_about_orientation(tmp_path, caplog):
    path = write_raw_nifti(tmp_path / "analyze.nii.gz", brain_like(), pixdim=[1, 1, 1, 1.5, 1, 1, 1, 1])
    with caplog.at_level(logging.WARNING):
        vol = load_volume(path)
    assert "no qform or sform" in caplog.text
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.5))


def test_sform_wins_when_sform_and_qform_disagree(tmp_path, caplog):
    fields = dict(SFORM, qform_code=1, quatern_b=0, quatern_c=0, quatern_d=0, qoffset_x=10, qoffset_y=0, qoffset_z=0)
    path = write_raw_nifti(tmp_path / "both.nii.gz", brain_like(), **fields)
    with caplog.at_level(logging.WARNING):
        vol = load_volume(path)
    assert "sform and qform disagree" in caplog.text and "using the sform" in caplog.text
    np.testing.assert_allclose(vol.grid.affine[:3, 3], [-30, -32, -28])


def test_units_in_metres_and_microns_are_converted_to_mm(tmp_path):
    metres = dict(SFORM, srow_x=[0.001, 0, 0, 0], srow_y=[0, 0.001, 0, 0], srow_z=[0, 0, 0.0015, 0])
    vol = load_volume(write_raw_nifti(tmp_path / "m.nii.gz", brain_like(), xyzt_units=1, **metres))  # NIFTI_UNITS_METER
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.5))
    microns = dict(SFORM, srow_x=[1000, 0, 0, 0], srow_y=[0, 1000, 0, 0], srow_z=[0, 0, 1000, 0])
    vol = load_volume(
        write_raw_nifti(tmp_path / "u.nii.gz", brain_like(), xyzt_units=3, **microns)
    )  # NIFTI_UNITS_MICRON
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.0))


def test_implausible_voxel_sizes_are_refused(tmp_path):
    for size in (0.01, 25.0):
        fields = dict(SFORM, srow_x=[size, 0, 0, 0])
        with pytest.raises(InputError, match="outside 0.1-10 mm; fix the header's pixdim or spatial units"):
            load_volume(write_raw_nifti(tmp_path / f"s{size}.nii.gz", brain_like(), **fields))


def test_thick_slices_warn(tmp_path, caplog):
    fields = dict(SFORM, srow_z=[0, 0, 5, 0])
    with caplog.at_level(logging.WARNING):
        load_volume(write_raw_nifti(tmp_path / "thick.nii.gz", brain_like((60, 64, 20)), **fields))
    assert "thick slices" in caplog.text


def test_several_volumes_are_refused_one_is_fine(tmp_path):
    four = np.stack([brain_like()] * 3, axis=-1)
    with pytest.raises(InputError, match=r"holds 3 volumes .* fslroi"):
        load_volume(write_raw_nifti(tmp_path / "4d.nii.gz", four, **SFORM))
    one = brain_like()[..., None]
    assert load_volume(write_raw_nifti(tmp_path / "4d1.nii.gz", one, **SFORM)).data.shape == (60, 64, 56)
    vector = brain_like()[..., None, None].repeat(3, axis=4)  # NIfTI vector image (dim[5] = 3)
    with pytest.raises(InputError, match="components or volumes"):
        load_volume(write_raw_nifti(tmp_path / "vec.nii.gz", vector, **SFORM))


def test_huge_header_is_refused_before_reading(tmp_path, monkeypatch):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((10000, 10000, 10000))
    header["vox_offset"] = 352
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 4096)

    def no_read(*args, **kwargs):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_read)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", no_read)
    with pytest.raises(
        InputError, match=r"huge\.nii: segmenting 10000x10000x10000 voxels needs about [\d.]+ GB of memory"
    ):
        load_volume(path)


def test_memory_estimate_is_hand_checkable():
    limits = ImageLimits(bytes_per_input_voxel=10, bytes_per_mm3=100, fixed_bytes=7)
    # 10 x 10 x 10 int16 voxels of 2 x 2 x 1 mm -> 1000 voxels and 20 x 20 x 10 = 4000 mm^3
    assert estimate_memory_bytes((10, 10, 10), 2, (2.0, 2.0, 1.0), limits) == 1000 * 12 + 4000 * 100 + 7


def test_truncated_uncompressed_file_is_refused_from_its_size(tmp_path):
    path = write_raw_nifti(tmp_path / "cut.nii", brain_like(), **SFORM)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(InputError, match=r"cut\.nii: file is truncated"):
        load_volume(path)


def test_label_map_or_mask_given_as_the_image_is_refused(tmp_path):
    labels = np.where(brain_like() > 0, 4, 0).astype(np.int16)
    labels[:30][labels[:30] > 0] = 11
    for name, data in (("labels", labels), ("mask", (labels > 0).astype(np.uint8))):
        path = write_raw_nifti(tmp_path / f"{name}.nii.gz", data, **SFORM)
        with pytest.raises(InputError, match="looks like a label map or mask .* give the T1-weighted image"):
            load_volume(path)
        assert load_volume(path, kind="label_map").data.max() == data.max()  # fine as a label map


def test_a_uint8_t1_is_not_taken_for_a_label_map():
    t1 = np.clip(brain_like(), 0, 255).astype(np.uint8)  # <= 256 distinct integers, but noisy
    assert np.unique(t1).size < 256
    assert not looks_like_label_map(t1)


def test_constant_image_is_refused(tmp_path):
    data = np.where(brain_like() > 0, 50.0, 0.0).astype(np.float32)
    data[data > 0] += np.linspace(0, 1e-3, int((data > 0).sum()), dtype=np.float32)  # not integer: not a label map
    ok = load_volume(write_raw_nifti(tmp_path / "ramp.nii.gz", data, **SFORM))
    assert ok.data.max() > 50
    flat = np.full((60, 64, 56), 7.0, np.float32)
    with pytest.raises(InputError, match="intensities are constant"):
        load_volume(write_raw_nifti(tmp_path / "flat.nii.gz", flat, **SFORM))


@pytest.mark.real_limits
def test_the_three_tracebacks_and_pixdim_zero_are_clean_cli_errors(tmp_path, capsys):
    rgb = np.zeros((60, 64, 56), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), tmp_path / "tiny.nii.gz")
    write_raw_nifti(tmp_path / "nan.nii.gz", brain_like(), **dict(SFORM, srow_x=[np.nan, 0, 0, 0]))
    write_raw_nifti(tmp_path / "p0.nii.gz", brain_like(), pixdim=[1, 0, 0, 0, 1, 1, 1, 1])
    for name in ("rgb", "tiny", "nan", "p0"):
        out = tmp_path / f"out_{name}"
        status = main(["segment", str(tmp_path / f"{name}.nii.gz"), "-o", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert status == 2, name
        lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
        assert len(lines) == 1 and f"{name}.nii.gz" in lines[0] and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir())


def test_limits_are_relaxed_only_for_unmarked_tests():
    assert validation.LIMITS.min_field_of_view_mm == 8.0


@pytest.mark.real_limits
def test_shipped_limits_in_marked_tests():
    assert validation.LIMITS == ImageLimits()


def test_mgz_with_an_unknown_data_type_is_one_line(tmp_path):
    """Found by atheris: nibabel raised KeyError on an MGH type code it does not know."""
    img = nib.MGHImage(np.ones((10, 10, 10), np.int16), np.eye(4))
    raw = bytearray(img.header.binaryblock + np.ones((10, 10, 10), ">i2").tobytes())
    raw[20:24] = (678256).to_bytes(4, "big")  # the 'type' field of the MGH header
    path = tmp_path / "scan.mgz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="scan.mgz: cannot read it as NIfTI or MGZ"):
        load_volume(path)


@pytest.mark.real_limits
def test_brain_mask_too_small_or_constant_inside_is_refused():
    from brainseg.io.validation import check_brain_mask

    data = np.random.default_rng(0).uniform(50, 150, (40, 40, 40)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[:30, :30, :30] = True  # 27,000 voxels of 2 ul = 54 ml: a (small) brain
    check_brain_mask("a.nii", data, mask, voxel_ml=0.002)
    with pytest.raises(InputError, match=r"a.nii: the brain mask holds 27000 voxels \(43.2 ml\)"):
        check_brain_mask("a.nii", data, mask, voxel_ml=0.0016)  # 43 ml < 50 ml
    with pytest.raises(InputError, match="holds 7 voxels"):
        check_brain_mask("a.nii", data, _seven(mask), voxel_ml=10.0)  # 70 ml, but 7 voxels cannot be normalised
    flat = np.where(mask, 80.0, data)
    with pytest.raises(InputError, match=r"constant \(80\)"):
        check_brain_mask("a.nii", flat, mask, voxel_ml=0.002)


def _seven(mask):
    seven = np.zeros_like(mask)
    seven.flat[:7] = True
    return seven
