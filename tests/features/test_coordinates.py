"""DeepNAT spectral and Cartesian coordinates (Wachinger et al. 2018, section 2.4): hand-checked values and invariants."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from brainseg.features import coordinates
from brainseg.features import laplacian as laplacian_module
from brainseg.features.coordinates import cartesian_coordinates, deepnat_coordinates, spectral_coordinates
from brainseg.features.laplacian import block_mask

MICCAI = Path(__file__).resolve().parents[3] / "shared" / "data" / "miccai2012"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


@pytest.fixture
def brain_like() -> np.ndarray:
    """An asymmetric ellipsoid 'brain' (longest along axis 1) with a bump, on an even-sized grid."""
    mask = _ellipsoid((36, 44, 30), (17.5, 21.5, 14.5), (13.0, 19.0, 11.0))
    mask |= _ellipsoid((36, 44, 30), (22.0, 30.0, 20.0), (6.0, 7.0, 5.0))
    return mask


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """Anisotropic (1, 1.2, 1.5 mm), rotated 10 degrees about z, translated."""
    t = np.deg2rad(10.0)
    rotation = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.0, 1.2, 1.5])
    affine[:3, 3] = [-20.0, 35.0, 4.0]
    return affine


# --- spectral coordinates on boxes: analytic cosines ----------------------------------------------------------------


def _cosine(n: int) -> np.ndarray:
    """Fiedler vector of the path graph on n nodes, signed to increase with the index, scaled to max 1."""
    v = -np.cos(np.pi * (np.arange(n) + 0.5) / n)
    return v / np.abs(v).max()


def test_fiedler_vector_of_a_box_is_the_cosine_along_its_longest_axis(caplog):
    # Box eigenvalues are sums of path eigenvalues 2 - 2 cos(pi m / n) over the three axes. For 30 x 20 x 12 voxels
    # the smallest non-zero ones are (m0, m1, m2) = (1, 0, 0): 0.0110, (0, 1, 0): 0.0246, then (1, 1, 0): 0.0356,
    # below (2, 0, 0): 0.0437 and (0, 0, 1): 0.0681.
    shape = (30, 20, 12)
    with caplog.at_level(logging.WARNING, logger="brainseg.features.coordinates"):
        c = spectral_coordinates(np.ones(shape, bool), np.eye(4), grid_mm=None)
    assert c.shape == (3, *shape) and c.dtype == np.float32
    fiedler = np.broadcast_to(_cosine(30)[:, None, None], shape)
    assert _corr(c[0], fiedler) > 0.99
    np.testing.assert_allclose(c[0], fiedler, atol=0.01)
    np.testing.assert_allclose(c[1], np.broadcast_to(_cosine(20)[None, :, None], shape), atol=0.01)
    # the third mode, cos x cos y, correlates with no world axis: its sign is arbitrary (a documented limit)
    product = _cosine(30)[:, None, None] * _cosine(20)[None, :, None] * np.ones(shape)
    assert abs(_corr(c[2], product)) > 0.99
    assert "sign is unreliable" in caplog.text


# The solver stops at residuals of 5 % of the smallest eigenvalue; on these boxes, whose third and fourth
# eigenvalues lie within 15 % of each other, that leaves differences of up to 0.02 from the exact modes.
ATOL = 0.03


def _box_modes(shape: tuple[int, int, int]) -> list[np.ndarray]:
    return [
        np.broadcast_to(np.expand_dims(_cosine(n), [a for a in range(3) if a != axis]), shape)
        for axis, n in enumerate(shape)
    ]


def test_box_with_three_axis_modes_gives_three_cosines(caplog):
    # 30 x 24 x 20: (1, 0, 0): 0.0110, (0, 1, 0): 0.0171, (0, 0, 1): 0.0246, below (1, 1, 0): 0.0281
    shape = (30, 24, 20)
    with caplog.at_level(logging.WARNING, logger="brainseg.features.coordinates"):
        c = spectral_coordinates(np.ones(shape, bool), np.eye(4), grid_mm=None)
    for axis, mode in enumerate(_box_modes(shape)):
        np.testing.assert_allclose(c[axis], mode, atol=ATOL)
    assert caplog.text == ""


def test_order_follows_world_axes_not_eigenvalues():
    # The same box with its axes relabelled by the affine: world x = array axis 1, y = axis 2, z = axis 0 (30 voxels,
    # the smallest eigenvalue) -- so the Fiedler vector comes out third.
    affine = np.array([[0.0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    shape = (30, 24, 20)
    c = spectral_coordinates(np.ones(shape, bool), affine, grid_mm=None)
    modes = _box_modes(shape)
    for k, axis in enumerate((1, 2, 0)):
        np.testing.assert_allclose(c[k], modes[axis], atol=ATOL)


def test_flipped_world_axis_flips_the_sign():
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # world x decreases along array axis 0
    shape = (30, 24, 20)
    c = spectral_coordinates(np.ones(shape, bool), affine, grid_mm=None)
    modes = _box_modes(shape)
    np.testing.assert_allclose(c[0], -modes[0], atol=ATOL)
    np.testing.assert_allclose(c[1:], np.stack(modes[1:]), atol=ATOL)


# --- invariance of the order and sign rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("grid_mm", [None, 2.0])
def test_flipping_the_array_with_its_affine_changes_nothing(brain_like, oblique_affine, grid_mm):
    # Flip axis 0 and compose the affine with i -> D - 1 - i: every voxel keeps its world position.
    d = brain_like.shape[0]
    flip = np.array([[-1.0, 0, 0, d - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    c = spectral_coordinates(brain_like, oblique_affine, grid_mm=grid_mm)
    flipped = spectral_coordinates(brain_like[::-1], oblique_affine @ flip, grid_mm=grid_mm)
    np.testing.assert_allclose(flipped[:, ::-1], c, atol=0.02)
    for k in range(3):
        assert _corr(flipped[k, ::-1][brain_like], c[k][brain_like]) > 0.999


@pytest.mark.parametrize("grid_mm", [None, 2.0])
def test_permuting_axes_with_the_affine_changes_nothing(brain_like, oblique_affine, grid_mm):
    perm = (2, 0, 1)
    permuted_affine = oblique_affine.copy()
    permuted_affine[:, :3] = oblique_affine[:, list(perm)]
    c = spectral_coordinates(brain_like, oblique_affine, grid_mm=grid_mm)
    permuted = spectral_coordinates(brain_like.transpose(perm), permuted_affine, grid_mm=grid_mm)
    np.testing.assert_allclose(permuted, c.transpose(0, *(1 + np.array(perm))), atol=0.02)


def test_coordinates_increase_along_their_world_axis(brain_like, oblique_affine):
    c = spectral_coordinates(brain_like, oblique_affine)
    world = cartesian_coordinates(brain_like, oblique_affine)
    for k in range(3):
        assert _corr(c[k][brain_like], world[k][brain_like]) > 0.8
        assert _corr(c[k][brain_like], world[(k + 1) % 3][brain_like]) < 0.5


# --- scaling, coarse grid, components, seeds ------------------------------------------------------------------------


def test_scaled_to_unit_max_and_zero_outside(brain_like, oblique_affine):
    c = spectral_coordinates(brain_like, oblique_affine, grid_mm=None)
    assert c.dtype == np.float32 and c.shape == (3, *brain_like.shape)
    np.testing.assert_allclose(np.abs(c[:, brain_like]).max(axis=1), 1.0, rtol=1e-6)
    assert (c[:, ~brain_like] == 0).all()
    # eigenvectors of a connected graph's Laplacian are orthogonal to the constant: zero mean over the mask
    np.testing.assert_allclose(c[:, brain_like].mean(axis=1), 0.0, atol=1e-3)


def test_coarse_grid_agrees_with_native_grid(brain_like):
    affine = np.eye(4)
    fine = spectral_coordinates(brain_like, affine, grid_mm=None)
    coarse = spectral_coordinates(brain_like, affine, grid_mm=2.0)
    for k in range(3):
        assert _corr(fine[k][brain_like], coarse[k][brain_like]) > 0.95


def test_coarse_grid_makes_the_result_nearly_independent_of_the_voxel_size():
    # One physical ellipsoid (semi-axes 16, 13, 11 mm) on 0.5 x 1 x 2 mm voxels and on 1 mm voxels. With grid_mm=2 the
    # anisotropic grid is grouped in 4 x 2 x 1 blocks and the isotropic one in 2 x 2 x 2 blocks: both solve on 2 mm.
    centre, radii = np.array([18.0, 15.0, 13.0]), np.array([16.0, 13.0, 11.0])
    aniso_affine, iso_affine = np.diag([0.5, 1.0, 2.0, 1.0]), np.eye(4)
    aniso = _ellipsoid((72, 30, 13), centre / [0.5, 1.0, 2.0], radii / [0.5, 1.0, 2.0])
    iso = _ellipsoid((36, 30, 26), centre, radii)
    assert block_mask(aniso, (4, 2, 1)).shape == (18, 15, 13)
    c_aniso = spectral_coordinates(aniso, aniso_affine, grid_mm=2.0)
    c_iso = spectral_coordinates(iso, iso_affine, grid_mm=2.0)
    sampled, inside = _sample(c_aniso, aniso_affine, np.argwhere(iso).astype(float))
    inside &= np.abs(sampled).sum(axis=0) > 0
    assert inside.mean() > 0.9
    for k in range(3):
        assert _corr(c_iso[k][iso][inside], sampled[k][inside]) > 0.95


@pytest.mark.parametrize("grid_mm", [None, 2.0])
def test_disconnected_blob_does_not_hijack_the_eigenvectors(brain_like, grid_mm):
    affine = np.eye(4)
    with_blob = np.pad(brain_like, ((0, 0), (0, 0), (0, 12)))
    with_blob[16:20, 20:24, 36:40] = True  # a 4 x 4 x 4 island 10 voxels beyond the ellipsoid
    plain = np.pad(spectral_coordinates(brain_like, affine, grid_mm=grid_mm), ((0, 0), (0, 0), (0, 0), (0, 12)))
    c = spectral_coordinates(with_blob, affine, grid_mm=grid_mm)
    inside = np.pad(brain_like, ((0, 0), (0, 0), (0, 12)))
    for k in range(3):
        assert _corr(c[k][inside], plain[k][inside]) > 0.999
        assert np.ptp(c[k][inside]) > 1.5  # not an indicator of the component
    # the island takes the value of the nearest ellipsoid voxel
    blob = with_blob & ~inside
    _, nearest = ndimage.distance_transform_edt(~inside, return_indices=True)
    np.testing.assert_allclose(c[:, blob], c[(slice(None), *nearest)][:, blob], atol=0.05)


def test_seed_changes_nothing_beyond_the_solver_tolerance(brain_like, oblique_affine):
    a = spectral_coordinates(brain_like, oblique_affine, grid_mm=None, seed=0)
    b = spectral_coordinates(brain_like, oblique_affine, grid_mm=None, seed=7)
    np.testing.assert_allclose(a, b, atol=0.02)


def test_cascade_start_gives_the_same_solution(brain_like, monkeypatch):
    # Solves above _CASCADE_MIN_NODES start from the solution on a grid twice as coarse.
    direct = spectral_coordinates(brain_like, np.eye(4), grid_mm=None)
    monkeypatch.setattr(laplacian_module, "_CASCADE_MIN_NODES", 5_000)
    cascaded = spectral_coordinates(brain_like, np.eye(4), grid_mm=None)
    np.testing.assert_allclose(cascaded, direct, atol=0.02)


def test_smallest_mask_with_three_modes():
    mask = np.zeros((4, 1, 1), bool)
    mask[:, 0, 0] = True  # a path of 4 voxels: eigenvalues 0, 2-sqrt2, 2, 2+sqrt2
    c = spectral_coordinates(mask, np.eye(4), grid_mm=None)
    np.testing.assert_allclose(np.abs(c[0, :, 0, 0]), np.abs(_cosine(4)), atol=1e-6)
    assert np.isfinite(c).all()


@pytest.mark.parametrize(
    ("mask", "grid_mm", "match"),
    [
        (np.zeros((5, 5, 5), bool), None, "empty"),
        (np.pad(np.ones((3, 1, 1), bool), 1), None, "at least 4"),
        (np.pad(np.ones((4, 4, 4), bool), 1), 8.0, "grid_mm=None"),
        (np.ones((5, 5, 5), bool), 0.0, "grid_mm must be positive"),
        (np.ones((5, 5), bool), None, "3-D"),
    ],
)
def test_errors(mask, grid_mm, match):
    with pytest.raises(ValueError, match=match):
        spectral_coordinates(mask, np.eye(4), grid_mm=grid_mm)


def test_bad_affine():
    with pytest.raises(ValueError, match="invertible 4 x 4"):
        cartesian_coordinates(np.ones((2, 2, 2), bool), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="invertible 4 x 4"):
        spectral_coordinates(np.ones((2, 2, 2), bool), np.eye(3))


# --- Cartesian coordinates --------------------------------------------------------------------------------------------


def test_cartesian_by_hand_on_an_anisotropic_permuted_affine():
    # array axis 0 runs along -y in 1.5 mm steps, axis 1 along z (1 mm), axis 2 along x (2 mm)
    affine = np.array([[0.0, 0, 2, 5], [-1.5, 0, 0, 7], [0, 1, 0, -3], [0, 0, 0, 1]])
    mask = np.zeros((21, 9, 3), bool)
    mask[:, 2:7, 1] = True  # centre of mass at voxel (10, 4, 1)
    c = cartesian_coordinates(mask, affine)
    assert c.shape == (3, 21, 9, 3) and c.dtype == np.float32
    np.testing.assert_allclose(c[:, 10, 4, 1], 0.0, atol=1e-7)
    # voxel (0, 4, 1) is 10 voxels back along axis 0: +15 mm in y, i.e. 0.15 after dividing by 100 mm
    np.testing.assert_allclose(c[:, 0, 4, 1], [0.0, 0.15, 0.0], atol=1e-7)
    np.testing.assert_allclose(c[:, 10, 6, 1], [0.0, 0.0, 0.02], atol=1e-7)
    assert (c[:, ~mask] == 0).all()


def test_cartesian_follows_an_oblique_affine(brain_like, oblique_affine):
    c = cartesian_coordinates(brain_like, oblique_affine)
    ijk = np.argwhere(brain_like)
    world = ijk @ oblique_affine[:3, :3].T + oblique_affine[:3, 3]
    expected = (world - world.mean(axis=0)) / coordinates.COORDINATE_SCALE_MM
    np.testing.assert_allclose(c[:, brain_like].T, expected, atol=1e-6)
    np.testing.assert_allclose(c[:, brain_like].mean(axis=1), 0.0, atol=1e-6)
    # a translation of the affine moves the world but not the coordinates
    moved = oblique_affine.copy()
    moved[:3, 3] += [100.0, -50.0, 7.0]
    np.testing.assert_allclose(cartesian_coordinates(brain_like, moved), c, atol=1e-6)


# --- deepnat_coordinates ------------------------------------------------------------------------------------------


def test_deepnat_coordinates_stacks_cartesian_then_spectral(brain_like, oblique_affine):
    both = deepnat_coordinates(brain_like, oblique_affine, "both")
    assert both.shape == (6, *brain_like.shape) and both.dtype == np.float32
    np.testing.assert_array_equal(both[:3], cartesian_coordinates(brain_like, oblique_affine))
    np.testing.assert_array_equal(both[3:], spectral_coordinates(brain_like, oblique_affine))
    assert deepnat_coordinates(brain_like, oblique_affine, "cartesian").shape == (3, *brain_like.shape)
    assert deepnat_coordinates(brain_like, oblique_affine, "none").shape == (0, *brain_like.shape)
    with pytest.raises(ValueError, match="kind must be"):
        deepnat_coordinates(brain_like, oblique_affine, "polar")  # type: ignore[arg-type]


# --- real brains (slow) --------------------------------------------------------------------------------------------


def _load_mask(case: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    path = MICCAI / f"{case}_mask.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found (real MICCAI 2012 masks live in ../shared/data; see its README.md)")
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj) > 0, image.affine


def _sample(images: np.ndarray, affine: np.ndarray, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-voxel values ``(K, N)`` of images at world points ``(N, 3)``, and which points fall inside."""
    ijk = np.rint((world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    inside = ((ijk >= 0) & (ijk < images.shape[1:])).all(axis=1)
    values = np.zeros((images.shape[0], len(world)), images.dtype)
    values[:, inside] = images[(slice(None), *ijk[inside].T)]
    return values, inside


@pytest.mark.slow
def test_real_subjects_get_the_same_anatomical_meaning():
    mask_a, affine_a = _load_mask("1000")
    mask_b, affine_b = _load_mask("1001")
    # 1001 pitched by 20 degrees about the left-right axis: the array is rotated, the affine kept, so the head
    # sits differently in the scanner. Rotated voxel o holds original voxel R^-1 (o - centre_out) + centre_in.
    t = np.deg2rad(20.0)
    rotation = np.array([[1.0, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    shape_r = (mask_b.shape[0], 240, 240)
    centre_in, centre_out = (np.array(mask_b.shape) - 1) / 2, (np.array(shape_r) - 1) / 2
    offset = centre_in - rotation.T @ centre_out
    mask_r = ndimage.affine_transform(mask_b.astype(np.uint8), rotation.T, offset, shape_r, order=0) > 0

    c_a = spectral_coordinates(mask_a, affine_a)
    c_b = spectral_coordinates(mask_b, affine_b)
    c_r = spectral_coordinates(mask_r, affine_b)

    # 1001 against its rotated self, at corresponding voxels (the same anatomy)
    ijk_b = np.argwhere(mask_b)
    ijk_r = (ijk_b - centre_in) @ rotation.T + centre_out
    values_r, inside = _sample(c_r, np.eye(4), ijk_r)
    inside &= mask_r[tuple(np.rint(ijk_r).astype(int).clip(0, np.array(shape_r) - 1).T)]
    for k in range(3):
        assert _corr(c_b[k][mask_b][inside], values_r[k][inside]) > 0.99, k  # measured 0.9999-1.0

    # 1000 against 1001 after matching their centres of mass (different heads, different positions); a positive
    # correlation also means the same sign
    world_a = np.argwhere(mask_a) @ affine_a[:3, :3].T + affine_a[:3, 3]
    com_b = (np.argwhere(mask_b) @ affine_b[:3, :3].T + affine_b[:3, 3]).mean(axis=0)
    values_b, inside = _sample(c_b, affine_b, world_a - world_a.mean(axis=0) + com_b)
    inside &= np.abs(values_b).sum(axis=0) > 0
    for k in range(3):
        assert _corr(c_a[k][mask_a][inside], values_b[k][inside]) > 0.9, k  # measured 0.981-0.997
