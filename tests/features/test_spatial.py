"""Per-voxel inputs of the spatial priors (Ganaye et al. 2018, sections 2.2-2.4)."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.spatial import make_spatial_inputs


def test_3d_patch_centre_and_padding(volume, affine):
    data = volume.astype(np.float32)
    spatial = make_spatial_inputs(data, affine, background=-5.0, patches_3d=True)
    voxels = np.array([[4, 7, 12], [0, 0, 0], [9, 19, 29]])
    patches = spatial.patches_3d(voxels)
    assert patches.shape == (3, 1, 15, 15, 15) and patches.dtype == np.float32
    for patch, v in zip(patches[:, 0], voxels):
        assert patch[7, 7, 7] == data[tuple(v)]
        assert patch[7 + 1, 7 - 2, 7 + 3] == (
            data[v[0] + 1, v[1] - 2, v[2] + 3]
            if (v + [1, -2, 3] >= 0).all() and (v + [1, -2, 3] < data.shape).all()
            else -5.0
        )
    assert (patches[1, 0, :7] == -5.0).all()  # before the first slice: padding


def test_distances_in_mm_on_anisotropic_grid(shape, affine):
    # With n = 1 the single landmark is the volume centre; the distance from voxel (0, 0, 0)
    # is |affine[:3, :3] @ (centre - 0)| in mm (spacing 1, 1, 2 and a flipped axis).
    spatial = make_spatial_inputs(np.zeros(shape, np.float32), affine, 0.0, landmarks=1)
    d = spatial.at(np.array([[0, 0, 0]]))["distances"]
    centre = (np.array(shape) - 1) / 2
    assert d.shape == (1, 1)
    assert d[0, 0] == pytest.approx(np.linalg.norm(affine[:3, :3] @ centre), rel=1e-6)


def test_at_returns_what_is_configured(rng, shape, affine):
    maps = [rng.integers(0, 4, shape)]
    atlas = ProbabilisticAtlas.build(maps, 4)
    spatial = make_spatial_inputs(np.zeros(shape, np.float32), affine, 0.0, landmarks=2, atlas=atlas, patches_3d=True)
    out = spatial.at(np.array([[1, 2, 3], [4, 5, 6]]))
    assert set(out) == {"distances", "atlas", "patches_3d"}
    assert out["distances"].shape == (2, 8) and out["atlas"].shape == (2, 4)
    assert set(spatial.at(np.array([[1, 2, 3]]), with_patches_3d=False)) == {"distances", "atlas"}
    assert make_spatial_inputs(np.zeros(shape, np.float32), affine, 0.0).at(np.array([[1, 2, 3]])) == {}
    with pytest.raises(ValueError, match="atlas grid"):
        make_spatial_inputs(np.zeros((3, 3, 3), np.float32), affine, 0.0, atlas=atlas)
