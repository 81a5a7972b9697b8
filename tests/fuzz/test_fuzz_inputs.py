"""Fuzzing the inputs: NIfTI and MGZ files with random headers and small random data.

Every command that reads volumes (``segment``, ``evaluate``, ``manifest``) must either succeed with its
outputs on the input's grid, or exit with status 2, one line on stderr and nothing written: never a
traceback, never a partial output.

The headers are written byte by byte (nibabel would repair them on save): dimensions (2-D to 5-D),
datatype (integers, floats, complex, RGB), pixdim (0, negative, NaN, tiny, huge), qform/sform codes and
matrices (NaN, singular, oblique), vox_offset, byte order, scl_slope/scl_inter (0, NaN, Inf), spatial
units; plus MGZ files with random voxel sizes and orientations, and valid files with random header
bytes overwritten.

CI runs a fixed number of examples derandomised (reproducible, about a minute). A longer random run
for developers::

    BRAINSEG_FUZZ_EXAMPLES=2000 BRAINSEG_FUZZ_RANDOM=1 pytest tests/fuzz -p no:cacheprovider

Hypothesis prints the failing example (and ``@reproduce_failure``) when it finds one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainseg.cli.main import main
from brainseg.config import Config, ModelConfig
from brainseg.labels import LabelTable
from brainseg.model_folder import save_model_folder
from brainseg.models import build_model
from brainseg.preprocessing.intensity import IntensityNormalization

EXAMPLES = int(os.environ.get("BRAINSEG_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("BRAINSEG_FUZZ_RANDOM"),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
LABELS = LabelTable((0, 4, 11, 23), ("Background", "3rd Ventricle", "4th Ventricle", "Right Accumbens Area"))
UNIT_MM = {1: 1000.0, 2: 1.0, 3: 0.001, 0: 1.0}  # NIfTI xyzt_units codes: metre, mm, micron, unknown

DTYPES = {  # NIfTI datatype code -> numpy dtype
    2: np.uint8,
    4: np.int16,
    8: np.int32,
    16: np.float32,
    32: np.complex64,
    64: np.float64,
    128: np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]),
    256: np.int8,
    512: np.uint16,
    768: np.uint32,
    1024: np.int64,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = Config(ModelConfig(num_classes=4, branch_widths=(4, 8), mix_channels=8, fc_widths=(16,), dropout=0.0))
    network = build_model(cfg.model).eval()
    return save_model_folder(tmp_path_factory.mktemp("model"), cfg, LABELS, IntensityNormalization(), network)


# --- strategies -------------------------------------------------------------------------------------

FLOATS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.7, -12.5, 1e-4, 1e6, float("nan"), float("inf")])
SPACINGS = st.sampled_from([1.0, 1.0, 1.2, 2.0, 0.9, 0.0, -1.0, 0.01, 15.0, float("nan"), float("inf")])
SHAPES = st.one_of(
    st.tuples(*[st.integers(8, 14)] * 3),  # brain-like enough for the test limits
    st.lists(st.integers(1, 12), min_size=2, max_size=5).map(tuple),  # anything
)


@st.composite
def data_arrays(draw, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Random small data of ``shape``: an ellipsoid 'brain' with noise, noise, zeros, a constant, labels, NaN."""
    kind = draw(st.sampled_from(["brain", "brain", "noise", "zeros", "constant", "labels", "nan"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spatial = shape[:3] if len(shape) >= 3 else shape
    if kind == "brain" and len(spatial) == 3:
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in spatial], indexing="ij")
        inside = sum(g**2 for g in grids) < 0.8
        values = np.where(inside, 100 + 20 * rng.standard_normal(spatial), 0)
        values = np.broadcast_to(values.reshape(spatial + (1,) * (len(shape) - 3)), shape)
    elif kind == "noise":
        values = rng.uniform(0, 200, shape)
    elif kind == "zeros":
        values = np.zeros(shape)
    elif kind == "constant":
        values = np.full(shape, 7.0)
    elif kind == "labels":
        values = rng.choice([0, 4, 11, 23], size=shape).astype(float)
    else:
        values = rng.uniform(0, 200, shape)
        values.flat[rng.integers(0, values.size)] = np.nan
    if dtype.fields is not None:  # RGB
        out = np.zeros(shape, dtype)
        for name in dtype.names:
            out[name] = np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
        return out
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.nan_to_num(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


@st.composite
def nifti_files(draw) -> tuple[str, bytes]:
    """(suffix, file bytes) of a NIfTI-1 file whose header fields are set raw."""
    shape = draw(SHAPES)
    code = draw(st.sampled_from(sorted(DTYPES)))
    dtype = np.dtype(DTYPES[code])
    order = draw(st.sampled_from("<>"))
    header = nib.Nifti1Header(endianness=order)
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    pixdim = header["pixdim"]
    pixdim[0] = draw(st.sampled_from([1.0, -1.0, 0.0]))  # qfac
    pixdim[1:4] = [draw(SPACINGS) for _ in range(3)]
    header["pixdim"] = pixdim
    header["qform_code"] = draw(st.sampled_from([0, 1, 2, 4, 7]))
    header["sform_code"] = draw(st.sampled_from([0, 1, 2, 4, -1]))
    for field in ("quatern_b", "quatern_c", "quatern_d"):
        header[field] = draw(st.sampled_from([0.0, 0.0, 0.1, -0.3, 0.7, 1.0, float("nan")]))
    for field in ("qoffset_x", "qoffset_y", "qoffset_z"):
        header[field] = draw(FLOATS)
    kind = draw(st.sampled_from(["diagonal", "oblique", "random", "singular"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "diagonal":
        srows = np.hstack([np.diag([draw(SPACINGS) for _ in range(3)]), rng.uniform(-100, 100, (3, 1))])
    elif kind == "oblique":
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        srows = np.hstack([q * rng.uniform(0.5, 2.0, 3), rng.uniform(-100, 100, (3, 1))])
    elif kind == "random":
        srows = np.array([[draw(FLOATS) for _ in range(4)] for _ in range(3)])
    else:
        srows = np.zeros((3, 4))
    header["srow_x"], header["srow_y"], header["srow_z"] = srows
    header["scl_slope"] = draw(st.sampled_from([1.0, 1.0, 0.0, 2.5, -1.0, float("nan"), float("inf")]))
    header["scl_inter"] = draw(st.sampled_from([0.0, 0.0, 10.0, float("nan")]))
    header.set_xyzt_units(xyz=draw(st.sampled_from([0, 1, 2, 2, 3])))
    offset = draw(st.sampled_from([352, 352, 400, 1024, 360]))
    header["vox_offset"] = offset
    data = draw(data_arrays(shape, dtype))
    body = np.asarray(data, dtype=dtype.newbyteorder(order) if dtype.fields is None else dtype).tobytes(order="F")
    if draw(st.booleans()) and body:
        body = body[: draw(st.integers(0, len(body) - 1))]  # truncated file
    raw = header.binaryblock + b"\0\0\0\0"
    raw += b"\0" * max(0, offset - len(raw)) + body
    suffix = draw(st.sampled_from([".nii", ".nii.gz"]))
    return suffix, gzip.compress(raw) if suffix == ".nii.gz" else raw


@st.composite
def mgz_files(draw) -> tuple[str, bytes]:
    """(suffix, bytes) of an MGZ file with random voxel sizes, orientation and data."""
    shape = draw(st.one_of(st.tuples(*[st.integers(8, 14)] * 3), st.tuples(st.integers(1, 10), st.integers(1, 10))))
    dtype = np.dtype(draw(st.sampled_from([np.uint8, np.int16, np.int32, np.float32])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3))) if draw(st.booleans()) else (np.eye(3), None)
    zooms = np.array([draw(st.sampled_from([1.0, 0.8, 1.5, 3.0, 0.05, 20.0])) for _ in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = q * zooms
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    data = draw(data_arrays(shape, dtype))
    img = nib.MGHImage(data, affine)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        f.write(img.header.binaryblock + np.asarray(data).astype(dtype.newbyteorder(">")).tobytes(order="F"))
        f.write(b"\0" * 512)  # the MGH footer area (optional tags)
    return ".mgz", buf.getvalue()


@st.composite
def corrupted_files(draw) -> tuple[str, bytes]:
    """A valid NIfTI file with a few random header bytes overwritten."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (10, 12, 9)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    data = np.where(sum(g**2 for g in grids) < 0.8, 100 + 20 * rng.standard_normal(shape), 0).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([-1.2, 1.0, 2.0, 1.0]))
    raw = bytearray(img.header.binaryblock + b"\0\0\0\0" + data.tobytes(order="F"))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, 351))
        raw[position] = draw(st.integers(0, 255))
    return ".nii", bytes(raw)


ANY_FILE = st.one_of(nifti_files(), nifti_files(), mgz_files(), corrupted_files())


# --- checks -----------------------------------------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _assert_clean_refusal(code: int, err: str, out: Path, command: str) -> None:
    assert code == 2, f"exit status {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"brainseg {command}: error: "), err
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


def _expected_affine(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    affine = np.asarray(img.affine, float)
    if isinstance(img.header, nib.Nifti1Header):
        unit = img.header.get_xyzt_units()[0]
        affine = affine.copy()
        affine[:3] *= {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    return affine


def _write(folder: Path, name: str, file: tuple[str, bytes]) -> Path:
    path = folder / f"{name}{file[0]}"
    path.write_bytes(file[1])
    return path


@FUZZ
@given(file=ANY_FILE)
def test_segment_gives_outputs_on_the_input_grid_or_one_clean_line(tiny_model, file):
    with tempfile.TemporaryDirectory() as tmp:
        image = _write(Path(tmp), "scan", file)
        before = image.read_bytes()
        out = Path(tmp) / "out"
        argv = ["segment", str(image), "-o", str(out), "--model", str(tiny_model), "--skull-strip", "never"]
        code, err = _run(argv + ["--no-progress", "--threads", "1"])
        assert image.read_bytes() == before  # never written over
        if code != 0:
            _assert_clean_refusal(code, err, out, "segment")
            return
        seg = nib.load(str(out / "scan_seg.nii.gz"))
        assert seg.shape == nib.load(str(image)).shape[:3]
        np.testing.assert_allclose(seg.affine, _expected_affine(image), rtol=1e-5, atol=1e-3)
        assert set(np.unique(np.asarray(seg.dataobj))) <= set(LABELS.labels)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


@FUZZ
@given(prediction=ANY_FILE, reference=ANY_FILE, same=st.booleans())
def test_evaluate_scores_or_refuses_in_one_line(prediction, reference, same):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pred = _write(folder, "pred", prediction)
        ref = _write(folder, "ref", prediction if same else reference)
        out = folder / "out"
        code, err = _run(["evaluate", str(pred), str(ref), "-o", str(out / "scores.csv"), "--no-distances"])
        if code != 0:
            _assert_clean_refusal(code, err, out, "evaluate")
            return
        text = (out / "scores.csv").read_text().splitlines()
        assert text[0].startswith("case") or "dice" in text[0] and text[-1].split(",")[0] in ("mean", "")


@FUZZ
@given(image=ANY_FILE, labels=ANY_FILE)
def test_manifest_lists_or_refuses_in_one_line(image, labels):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        _write(data, "case1_SS", image)
        _write(data, "case1_glm", labels)
        out = Path(tmp) / "out"
        code, err = _run(["manifest", str(data), "-o", str(out / "cases.csv")])
        if code != 0:
            _assert_clean_refusal(code, err, out, "manifest")
            return
        assert (out / "cases.csv").read_text().splitlines()[0].startswith("case_id,image")


def test_nibabel_header_repairs_do_not_add_lines_to_stderr(tiny_model, tmp_path):
    """nibabel logs the fields it repairs to its own stderr handler; the user still sees one line."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((4, 4, 4))
    header["qform_code"], header["sform_code"] = 7, -1  # invalid codes nibabel resets, noisily
    path = tmp_path / "scan.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + np.arange(64, dtype=np.int16).tobytes())
    argv = [
        sys.executable,
        "-m",
        "brainseg",
        "segment",
        str(path),
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(tiny_model),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "scan.nii" in done.stderr, done.stderr
