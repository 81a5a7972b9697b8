"""Structure volumes: voxel counts times the voxel's true volume, |det| of the affine."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.labels import LabelTable
from brainseg.reporting.volumes import structure_volumes, voxel_volume_mm3


def test_sheared_affine_uses_the_determinant():
    # Columns (1, 0, 0), (0.5, 1, 0), (0, 0, 2): column norms multiply to 1 * 1.118 * 2 = 2.236 mm^3, but the
    # parallelepiped spanned by the columns has volume |det| = 1 * 1 * 2 = 2 mm^3 (shear keeps volume).
    affine = np.eye(4)
    affine[0, 1] = 0.5
    affine[2, 2] = 2.0
    assert voxel_volume_mm3(affine) == pytest.approx(2.0)
    assert np.prod(np.linalg.norm(affine[:3, :3], axis=0)) == pytest.approx(2.2360680)
    table = LabelTable((0, 4, 11), ("Background", "3rd Ventricle", "4th Ventricle"))
    label_map = np.zeros((3, 4, 5), np.int32)
    label_map[0, :2, :3] = 4  # 6 voxels
    label_map[2, 3, 4] = 11  # 1 voxel
    rows = structure_volumes(label_map, table, affine)
    assert rows == [(4, "3rd Ventricle", 6, 12.0), (11, "4th Ventricle", 1, 2.0)]


def test_rotation_and_flip_keep_the_volume():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # det +1 after the flip
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.2, 1.5])
    affine[:3, 3] = (10, -20, 5)
    assert voxel_volume_mm3(affine) == pytest.approx(0.9 * 1.2 * 1.5)
    flipped = affine.copy()
    flipped[:, 0] *= -1  # det < 0: a volume is never negative
    assert voxel_volume_mm3(flipped) == pytest.approx(0.9 * 1.2 * 1.5)
