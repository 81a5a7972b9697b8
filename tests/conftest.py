"""Shared fixtures: a small non-cubic, anisotropic, non-RAS synthetic volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHAPE = (10, 20, 30)
SPACING = (1.0, 1.0, 2.0)


@pytest.fixture(autouse=True, scope="session")
def branch_cache_dir(tmp_path_factory):
    """One DistBranch cache folder for the whole session (not the user's ~/.cache), inherited by subprocesses.

    Tests that segment with the default model share its table (built once, about half a minute).
    """
    import os

    from brainseg.inference.position_table import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("branch_cache"))
    yield
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(autouse=True)
def tiny_images_allowed(request, monkeypatch):
    """Let synthetic volumes smaller than a brain through the validation gate.

    The synthetic test volumes are 10-30 mm across, below the gate's 50 mm
    minimum field of view (no brain is that small). Tests marked
    ``real_limits`` (and the slow end-to-end tests on real scans) keep the
    shipped limits.
    """
    if request.node.get_closest_marker("real_limits") or request.node.get_closest_marker("slow"):
        return
    from dataclasses import replace

    from brainseg.io import validation

    monkeypatch.setattr(validation, "LIMITS", replace(validation.LIMITS, min_field_of_view_mm=8.0, min_brain_ml=0.0))


@pytest.fixture
def float32_mixnet(monkeypatch):
    """MixNet inference in float32 even where the CPU multiplies bfloat16 natively (exact comparisons)."""
    from brainseg.inference import dense_mixnet

    monkeypatch.setattr(dense_mixnet, "BFLOAT16", False)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator; every test gets the same stream."""
    return np.random.default_rng(20180404)


@pytest.fixture
def shape() -> tuple[int, int, int]:
    """Non-cubic volume shape, so a swapped axis fails."""
    return SHAPE


@pytest.fixture
def spacing() -> tuple[float, float, float]:
    """Anisotropic voxel size in mm (on-disk axis order)."""
    return SPACING


@pytest.fixture
def affine() -> np.ndarray:
    """Voxel -> world affine with a flipped first axis (LAS) and a translation."""
    return np.array(
        [
            [-SPACING[0], 0.0, 0.0, 40.0],
            [0.0, SPACING[1], 0.0, -12.5],
            [0.0, 0.0, SPACING[2], 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


@pytest.fixture
def volume(rng: np.random.Generator) -> np.ndarray:
    """Positive float32 image of shape (10, 20, 30) with no all-zero voxel."""
    return rng.uniform(1.0, 100.0, size=SHAPE).astype(np.float32)


@pytest.fixture
def label_volume(rng: np.random.Generator) -> np.ndarray:
    """Integer label map of shape (10, 20, 30) holding a few MICCAI label numbers."""
    return rng.choice(np.array([0, 4, 11, 23, 30], np.int16), size=SHAPE)


@pytest.fixture
def mask(shape: tuple[int, int, int]) -> np.ndarray:
    """A box mask that does not fill the volume."""
    m = np.zeros(shape, bool)
    m[2:8, 3:15, 5:24] = True
    return m


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
MICCAI = REPO.parent / "shared" / "data" / "miccai2012"


@pytest.fixture(scope="session")
def miccai_dir():
    """The MICCAI 2012 training subjects in ../shared/data (skips the test where absent)."""
    if not (MICCAI / "1008_SS.nii.gz").is_file():
        pytest.skip(f"real MICCAI 2012 data not found at {MICCAI} (present in CI; see ../shared/data/README.md)")
    return MICCAI


def write_tiny_case(folder, case_id, rng, shift=(0, 0, 0)):
    """A synthetic 18 x 20 x 16 'brain' (two structures) as MICCAI-style files in ``folder``."""
    import nibabel as nib

    shape = (18, 20, 16)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = zz**2 + yy**2 + xx**2 < 0.7
    labels = np.where(brain, np.where(zz < 0, 4, 11), 0).astype(np.int16)  # two structures split along x
    image = np.where(brain, np.where(zz < 0, 80, 140) + 5 * rng.standard_normal(shape), 0).astype(np.float32)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = shift
    for suffix, data in (("SS", image), ("glm", labels), ("mask", brain.astype(np.uint8))):
        nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id}_{suffix}.nii.gz")


@pytest.fixture
def tiny_manifest(tmp_path):
    """Three tiny labelled cases a, b, c and their manifest ``cases.csv`` in ``tmp_path``."""
    from brainseg.cli.main import main

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for case_id in ("a", "b", "c"):
        write_tiny_case(data, case_id, rng)
    manifest = tmp_path / "cases.csv"
    assert main(["manifest", str(data), "-o", str(manifest)]) == 0
    return manifest


def _tiny_config(**training) -> dict:
    """A tiny BaseNet trained on cases a and b of a ``cases.csv`` beside the config, validated on c."""
    return {
        "model": {"branch_widths": [4, 8], "mix_channels": 8, "fc_widths": [32], "dropout": 0.0},
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 2,
            "samples_per_epoch": 512,
            "batch_size": 64,
            "learning_rate": 0.05,
            "sampling": "mixed",
            "num_threads": 1,
            **training,
        },
    }


@pytest.fixture
def tiny_config():
    """The factory of tiny BaseNet configs: ``tiny_config(**training_settings) -> dict``."""
    return _tiny_config


@pytest.fixture
def tiny_setup(tmp_path, tiny_manifest):
    """``config.yaml`` of a tiny BaseNet (:func:`_tiny_config`) beside the manifest of :func:`tiny_manifest`."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_tiny_config()))
    return path


def _tiny_mixnet_config(model: dict | None = None, **training) -> dict:
    """A tiny MixNetv2 (F = 4, 16-pixel crops) trained on cases a and b of a ``cases.csv`` beside the config, validated on c."""
    return {
        "model": {"name": "mixnet", "filters": 4, "crop": 16, **(model or {})},
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 2,
            "samples_per_epoch": 192,
            "batch_size": 12,
            "learning_rate": 0.05,
            "momentum": 0.5,
            "poly_power": 0.0,
            "sampling": "uniform",
            "num_threads": 1,
            **training,
        },
    }


@pytest.fixture
def train_tiny_mixnet(tmp_path):
    """Train a tiny MixNet on the ``cases.csv`` in ``tmp_path``: ``train_tiny_mixnet(model=None, **training) -> model folder``.

    ``model`` updates the model settings of :func:`_tiny_mixnet_config`, ``training`` its training
    settings; the folder is ``tmp_path / 'model'``.
    """
    import yaml

    from brainseg.cli.main import main

    def train(model: dict | None = None, **training) -> Path:
        config = tmp_path / "mixnet.yaml"
        config.write_text(yaml.safe_dump(_tiny_mixnet_config(model, **training)))
        assert main(["train", str(config), "-o", str(tmp_path / "model"), "--no-progress"]) == 0
        return tmp_path / "model"

    return train


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (the machine's other core stays free), then restore the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
