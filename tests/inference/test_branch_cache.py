"""The DistBranch and ProbBranch tables of the reference grid: exact rows, exact fallback, the cache file, dense inference."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.spatial import make_spatial_inputs
from brainseg.inference import position_table
from brainseg.inference.branch_cache import AtlasFeatureTable, DistanceFeatureTable, table_key
from brainseg.inference.dense import predict_dense
from brainseg.inference.position_table import RowFile, cache_dir, support_voxels
from brainseg.models.ganaye2018 import DistBranch, GanayeNet
from brainseg.sampling.patches import build_stack


def _full_model() -> GanayeNet:
    # Every branch, narrow; weights scaled so that the probabilities vary across the volume.
    torch.manual_seed(0)
    model = GanayeNet(
        num_classes=7,
        branch_widths=(4, 8),
        mix_channels=8,
        fc_widths=(16, 16),
        dist_branch=DistBranch(3, "images", conv=True, rbf=False, filters=2, width=8),
        prob_branch=True,
        branch_3d_widths=(2, 4),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
                m.weight.mul_(2.0)
        model.out.weight.mul_(30.0)
        model.fc[1].weight[:, -8:].mul_(20.0)  # let the DistBranch move the logits
    return model.eval()


@pytest.fixture
def grid(rng):
    """A full model and its spatial inputs on a non-cubic grid with an oblique, anisotropic affine.

    The atlas is built from label maps that leave the first two slices (and a corner) background,
    so the support is a strict part of the grid and the conftest mask reaches outside it.
    """
    from scipy.spatial.transform import Rotation

    image = rng.standard_normal((10, 20, 30)).astype(np.float32)
    oblique_affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    oblique_affine[:3, :3] = Rotation.from_euler("zx", (20, 10), degrees=True).as_matrix() @ oblique_affine[:3, :3]
    oblique_affine[:3, 3] = (40.0, -12.5, 7.0)
    maps = [rng.integers(1, 7, image.shape) for _ in range(3)]
    for m in maps:
        m[:2] = 0
        m[:, :5, :7] = 0
    atlas = ProbabilisticAtlas.build(maps, 7, sigma_mm=0.0)
    support = atlas.support()
    spatial = make_spatial_inputs(
        image, oblique_affine, -0.7, landmarks=3, atlas=atlas, patches_3d=True, support=support
    )
    return _full_model(), spatial


def _exact(model, spatial, voxels):
    # The per-voxel computation the network does in training and patch-by-patch inference.
    distances = torch.from_numpy(spatial.at(voxels, with_patches_3d=False, with_atlas=False)["distances"])
    with torch.no_grad():
        return model.dist_branch(distances).numpy()


def test_support_leaves_out_background_only_voxels(grid):
    _, spatial = grid
    assert not spatial.support[:2].any() and not spatial.support[:, :5, :7].any()
    assert spatial.support[2:, 5:].all() and spatial.support[2:, :, 7:].all()


def test_float32_rows_equal_the_branch_and_outside_is_exact(grid, rng):
    model, spatial = grid
    table = DistanceFeatureTable.build(
        model.dist_branch, spatial.affine, spatial.landmarks, spatial.support, np.float32
    )
    inside = np.argwhere(spatial.support)[rng.choice(int(spatial.support.sum()), 200, replace=False)]
    outside = np.argwhere(~spatial.support)[:50]
    for voxels in (inside, outside, np.concatenate([outside[:7], inside[:9]])):
        exact = _exact(model, spatial, voxels)
        assert np.abs(table.at(voxels).numpy() - exact).max() <= 1e-5
        assert exact.std() > 0.01  # features vary with position: the check is not vacuous


def test_float16_rows_are_within_half_precision(grid):
    model, spatial = grid
    table = DistanceFeatureTable.build(
        model.dist_branch, spatial.affine, spatial.landmarks, spatial.support, np.float16
    )
    voxels = np.argwhere(spatial.support)
    exact = _exact(model, spatial, voxels)
    assert table.rows.dtype == np.float16
    np.testing.assert_allclose(table.at(voxels).numpy(), exact, rtol=2**-10, atol=1e-7)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_rows_are_grouped_by_slice_of_the_plane(grid, plane):
    model, spatial = grid
    voxels = support_voxels(spatial.support, plane)
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    assert len(voxels) == spatial.support.sum() and spatial.support[tuple(voxels.T)].all()
    assert (np.diff(voxels[:, axis]) >= 0).all()  # one slice after the other: a slice's rows are one block
    assert len({tuple(v) for v in voxels.tolist()}) == len(voxels)
    table = DistanceFeatureTable.build(
        model.dist_branch, spatial.affine, spatial.landmarks, spatial.support, plane=plane
    )
    some = voxels[::7]
    np.testing.assert_allclose(table.at(some).numpy(), _exact(model, spatial, some), atol=1e-5)
    assert table_key(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support, plane) != table_key(
        model.dist_branch, spatial.affine, spatial.landmarks, spatial.support, "other"
    )


def test_row_file_reads_blocks_of_the_npy(tmp_path, rng):
    rows = rng.standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    f = RowFile(tmp_path / "rows.npy")
    assert f.shape == (50, 6) and f.dtype == np.float32
    np.testing.assert_array_equal(f.block(7, 19), rows[7:19])
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        RowFile(tmp_path / "cube.npy")


def test_rows_must_match_the_support(grid):
    model, spatial = grid
    with pytest.raises(ValueError, match="expected rows of shape"):
        DistanceFeatureTable(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support, np.zeros((3, 8)))


def test_cache_is_written_once_and_read_back(grid, tmp_path, monkeypatch):
    model, spatial = grid
    monkeypatch.setenv(position_table.CACHE_ENV, str(tmp_path / "cache"))
    first = DistanceFeatureTable.cached(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support)
    files = list((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".npy"]  # no temporary left behind

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached table")

    monkeypatch.setattr(DistanceFeatureTable, "fill", no_rebuild)
    second = DistanceFeatureTable.cached(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support)
    assert isinstance(second.rows, RowFile)  # read block by block, not memory-mapped
    voxels = np.argwhere(spatial.support)
    np.testing.assert_array_equal(second.at(voxels).numpy(), first.at(voxels).numpy())


def test_key_follows_weights_landmarks_and_support(grid):
    model, spatial = grid
    branch, key = model.dist_branch, table_key(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support)
    assert table_key(branch, spatial.affine, spatial.landmarks + 1.0, spatial.support) != key
    other = spatial.support.copy()
    other[5, 5, 5] = not other[5, 5, 5]
    assert table_key(branch, spatial.affine, spatial.landmarks, other) != key
    changed = DistBranch(3, "images", conv=True, rbf=False, filters=2, width=8)
    changed.load_state_dict(branch.state_dict())
    with torch.no_grad():
        changed.fc.bias.add_(1e-3)
    assert table_key(changed, spatial.affine, spatial.landmarks, spatial.support) != key
    assert table_key(branch, spatial.affine.copy(), spatial.landmarks.copy(), spatial.support.copy()) == key


def test_a_corrupt_cache_file_is_rebuilt(grid, tmp_path, monkeypatch, caplog):
    model, spatial = grid
    monkeypatch.setenv(position_table.CACHE_ENV, str(tmp_path))
    DistanceFeatureTable.cached(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING):
        table = DistanceFeatureTable.cached(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support)
    assert "unreadable cache file" in caplog.text
    assert np.load(path).shape == table.rows.shape


def test_cache_off_and_unwritable(grid, tmp_path, monkeypatch, caplog):
    model, spatial = grid
    monkeypatch.setenv(position_table.CACHE_ENV, "off")
    assert cache_dir() is None
    assert DistanceFeatureTable.cached(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support) is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(position_table.CACHE_ENV, str(blocker / "cache"))  # a folder under a file: cannot be made
    with caplog.at_level(logging.WARNING):
        table = DistanceFeatureTable.cached(model.dist_branch, spatial.affine, spatial.landmarks, spatial.support)
    assert table is not None and "could not write" in caplog.text


def test_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(position_table.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "brainseg"


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_dense_inference_with_the_table_equals_without(grid, mask, tmp_path, monkeypatch, plane):
    # The cached table (the path `brainseg segment` takes) gives the probabilities of computing the branch per
    # voxel, on rows read from the table and on voxels outside the support computed on the spot.
    model, spatial = grid
    stack = build_stack(spatial.padded_image[7:-7, 7:-7, 7:-7], plane, (1, 2, 3), background=-0.7)
    kwargs = dict(probabilities=True, probability_dtype=np.float32)
    labels, exact = predict_dense(model, stack, mask, spatial=replace(spatial, support=None), **kwargs)
    monkeypatch.setenv(position_table.CACHE_ENV, str(tmp_path))
    for _ in range(2):  # builds the cache file, then reads it
        cached_labels, cached = predict_dense(model, stack, mask, spatial=spatial, **kwargs)
        assert np.abs(cached - exact).max() <= 1e-5
        np.testing.assert_array_equal(cached_labels, labels)
    assert len(list(tmp_path.glob("distbranch-*.npy"))) == 1 and len(list(tmp_path.glob("probbranch-*.npy"))) == 1
    assert (mask & ~spatial.support).any() and (mask & spatial.support).any()  # rows read and rows computed
    # and the DistBranch matters here: shifting its features changes the probabilities
    shifted = replace(spatial, support=None, landmarks=spatial.landmarks + 10.0)
    assert np.abs(predict_dense(model, stack, mask, spatial=shifted, **kwargs)[1] - exact).max() > 1e-2


def _exact_atlas(model, spatial, voxels):
    # The ProbBranch on the atlas vector, as in training and patch-by-patch inference.
    atlas = torch.from_numpy(spatial.at(voxels, with_patches_3d=False, with_distances=False)["atlas"])
    with torch.no_grad():
        return model.prob_branch(atlas).numpy()


def test_probbranch_rows_equal_the_branch_on_the_atlas_and_outside_is_exact(grid, rng):
    model, spatial = grid
    table = AtlasFeatureTable.build(model.prob_branch, spatial.atlas, spatial.support, "coronal")
    assert table.rows.shape == (int(spatial.support.sum()), 7) and table.rows.dtype == np.float32
    inside = np.argwhere(spatial.support)[rng.choice(int(spatial.support.sum()), 200, replace=False)]
    outside = np.argwhere(~spatial.support)[:50]
    for voxels in (inside, outside, np.concatenate([outside[:5], inside[:11]])):
        exact = _exact_atlas(model, spatial, voxels)
        assert np.abs(table.at(voxels).numpy() - exact).max() <= 1e-5
    assert _exact_atlas(model, spatial, inside).std(axis=0).max() > 0.01  # varies with position: not vacuous


def test_probbranch_cache_key_follows_weights_atlas_support_and_plane(grid, tmp_path, monkeypatch):
    model, spatial = grid
    monkeypatch.setenv(position_table.CACHE_ENV, str(tmp_path))
    first = AtlasFeatureTable.cached(model.prob_branch, spatial.atlas, spatial.support)
    key = first.key()
    assert [p.name for p in tmp_path.iterdir()] == [f"probbranch-{key}.npy"]
    again = AtlasFeatureTable.cached(model.prob_branch, spatial.atlas, spatial.support)
    assert isinstance(again.rows, RowFile) and again.key() == key
    voxels = np.argwhere(spatial.support)
    np.testing.assert_array_equal(again.at(voxels).numpy(), first.at(voxels).numpy())
    assert AtlasFeatureTable.cached(model.prob_branch, spatial.atlas, spatial.support, "sagittal").key() != key
    values = list(spatial.atlas.values)
    values[1] = values[1].copy()
    values[1].flat[0] ^= 1
    assert (
        AtlasFeatureTable(
            model.prob_branch, replace(spatial.atlas, values=tuple(values)), spatial.support, first.rows
        ).key()
        != key
    )
    changed = type(model.prob_branch)(7)
    changed.load_state_dict(model.prob_branch.state_dict())
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert AtlasFeatureTable(changed, spatial.atlas, spatial.support, first.rows).key() != key
    monkeypatch.setenv(position_table.CACHE_ENV, "off")
    assert AtlasFeatureTable.cached(model.prob_branch, spatial.atlas, spatial.support) is None
