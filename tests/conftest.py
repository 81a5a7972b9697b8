"""Shared fixtures: a small non-cubic, anisotropic, non-RAS synthetic volume."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (10, 20, 30)
SPACING = (1.0, 1.0, 2.0)


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
