"""Dense DeepNAT inference must equal patch-by-patch classification; Eq. 3 combination by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from network_helpers import randomise_batch_norm

from brainseg.inference.dense3d import (
    combine_task_probabilities,
    extract_patches3d,
    predict_dense3d,
    predict_patches3d,
    predict_task_probabilities3d,
)
from brainseg.inference.dense3d_network import choose_tile_size, conv_stage_bytes
from brainseg.models.wachinger2018 import DeepNAT, average_task_probabilities, task_offsets

SMALL = dict(widths=(4, 8, 8), fc_widths=(16, 16))  # the paper's layer layout, narrow enough for CPU tests
SHAPE = (30, 27, 33)  # non-cubic
TILE = 7  # several tiles along the first two axes, and short last ones (30 = 4 x 7 + 2, 27 = 3 x 7 + 6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(num_classes: int = 5, tasks: int = 7, coordinates: int = 0, **widths) -> DeepNAT:
    """A random network in eval mode with non-trivial batch-norm statistics and spread-out logits."""
    torch.manual_seed(0)
    model = DeepNAT(num_classes, tasks=tasks, coordinates=coordinates, **(widths or SMALL))
    randomise_batch_norm(model, torch.Generator().manual_seed(1), affine=True)
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(5.0)  # probabilities far from uniform
    return model.eval()


@pytest.fixture
def image(rng) -> np.ndarray:
    return rng.standard_normal(SHAPE).astype(np.float32)


@pytest.fixture
def brain(rng) -> np.ndarray:
    """A mask with holes that touches all six faces of the volume and its corners."""
    mask = rng.random(SHAPE) > 0.25
    for corner in np.ndindex(2, 2, 2):
        mask[tuple(c * (n - 1) for c, n in zip(corner, SHAPE))] = True
    return mask


def _sample(mask: np.ndarray, rng: np.random.Generator, n: int = 150) -> np.ndarray:
    """Mask voxels: the 8 corners, voxels on tile boundaries and on the volume's faces, and random ones."""
    voxels = np.argwhere(mask)
    on_face = ((voxels == 0) | (voxels == np.array(mask.shape) - 1)).any(axis=1)
    near_tile_edge = (np.isin(voxels[:, 0] % TILE, (0, TILE - 1))) & (np.isin(voxels[:, 1] % TILE, (0, TILE - 1)))
    corners = np.all((voxels == 0) | (voxels == np.array(mask.shape) - 1), axis=1)
    pick = [
        np.flatnonzero(corners),
        rng.choice(np.flatnonzero(on_face), n // 3, replace=False),
        rng.choice(np.flatnonzero(near_tile_edge & ~on_face), n // 3, replace=False),
        rng.choice(len(voxels), n // 3, replace=False),
    ]
    return voxels[np.unique(np.concatenate(pick))]


def _rows(mask: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    rows = np.full(mask.shape, -1)
    rows[mask] = np.arange(mask.sum())
    return rows[tuple(voxels.T)]


@pytest.mark.parametrize("tasks", [1, 7, 27])
@pytest.mark.parametrize("coordinates", [0, 3])
def test_dense_equals_patches(tasks, coordinates, image, brain, rng):
    model = _model(tasks=tasks, coordinates=coordinates)
    coords = rng.standard_normal((coordinates,) + SHAPE).astype(np.float32) if coordinates else None
    dense = predict_task_probabilities3d(model, image, brain, coords, tile_size=TILE)
    assert dense.shape == (brain.sum(), tasks, 5) and dense.dtype == np.float32
    voxels = _sample(brain, rng)
    assert len(voxels) > 100
    reference = predict_patches3d(model, image, voxels, coords)
    assert reference.shape == (len(voxels), tasks, 5)
    assert reference.std() > 0.1  # the probabilities vary, so agreement means something
    np.testing.assert_allclose(dense[_rows(brain, voxels)], reference, atol=1e-5, rtol=0)


def test_dense_equals_patches_paper_widths(rng):
    # The full-size network (32-64-64 filters, 1024-512 units, 7 tasks, 6 coordinates) on a small box
    # of voxels in a corner of the volume, one- and two-voxel tiles apart.
    shape = (14, 12, 13)
    model = _model(num_classes=25, tasks=7, coordinates=6, widths=(32, 64, 64), fc_widths=(1024, 512))
    image = rng.standard_normal(shape).astype(np.float32)
    coords = rng.standard_normal((6,) + shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[9:, :4, 8:] = rng.random((5, 4, 5)) > 0.2
    mask[13, 0, 12] = True
    voxels = np.argwhere(mask)
    reference = predict_patches3d(model, image, voxels, coords)
    dense = predict_task_probabilities3d(model, image, mask, coords, tile_size=3)
    np.testing.assert_allclose(dense, reference, atol=1e-5, rtol=0)


def test_tile_size_does_not_change_the_result(image, brain):
    model = _model(tasks=7)
    one = predict_task_probabilities3d(model, image, brain, tile_size=None)  # the memory rule: one tile here
    np.testing.assert_allclose(predict_task_probabilities3d(model, image, brain, tile_size=3), one, atol=1e-6)


def test_background_is_the_padding_value(rng):
    # With background b the dense pass must match patches padded with b (here: a constant image of b gives
    # the same output everywhere, inside and at the border).
    model = _model(tasks=1)
    image = np.full((12, 11, 10), -0.7, np.float32)
    mask = np.ones(image.shape, bool)
    probs = predict_task_probabilities3d(model, image, mask, background=-0.7, tile_size=5)
    np.testing.assert_allclose(probs, np.broadcast_to(probs[:1], probs.shape), atol=1e-6)
    voxels = np.array([[0, 0, 0], [11, 10, 9], [5, 5, 5]])
    np.testing.assert_allclose(
        probs[_rows(mask, voxels)], predict_patches3d(model, image, voxels, background=-0.7), atol=1e-5
    )


# --- Eq. 3 combination ------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [1, 7, 27])
def test_predict_dense3d_combines_by_eq3(tasks, image, brain):
    model = _model(tasks=tasks)
    per_task = predict_task_probabilities3d(model, image, brain, tile_size=TILE)
    combined = combine_task_probabilities(per_task, brain, model.offsets)
    streamed = predict_dense3d(model, image, brain, tile_size=TILE)
    assert streamed.shape == (5,) + SHAPE and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, combined, atol=1e-6)
    # The same as the bulk function on maps, restricted to the mask.
    maps = np.zeros((tasks, 5) + SHAPE, np.float32)
    maps[:, :, brain] = per_task.transpose(1, 2, 0)
    bulk = average_task_probabilities(maps, model.offsets, brain)
    np.testing.assert_allclose(streamed[:, brain], bulk[:, brain], atol=1e-6)
    assert (streamed[0, ~brain] == 1).all() and (streamed[1:, ~brain] == 0).all()
    np.testing.assert_allclose(streamed.sum(axis=0), 1, atol=1e-5)
    if tasks == 1:
        np.testing.assert_allclose(streamed[:, brain], per_task[:, 0].T, atol=1e-7)
    if tasks == 7:
        half = predict_dense3d(model, image, brain, tile_size=TILE, probability_dtype=np.float16)
        assert half.dtype == np.float16
        np.testing.assert_allclose(half, streamed, atol=1e-3)


def test_combine_task_probabilities_by_hand():
    # 1 x 1 x 5 volume, voxel x = 2 outside the mask, 7 heads, 2 classes. Head values (class 1) at every
    # source voxel: centre 0.1, -W 0.4, +W 1.0; the +-D and +-H heads point outside the volume.
    mask = np.ones((1, 1, 5), bool)
    mask[0, 0, 2] = False
    values = np.array([0.1, 0.9, 0.9, 0.9, 0.9, 0.4, 1.0], np.float32)
    probabilities = np.stack([1 - values, values], axis=1)[None].repeat(4, axis=0)  # (4 voxels, 7, 2)
    out = combine_task_probabilities(probabilities, mask, task_offsets(7))
    # x = 0: centre, -W from x = 1; x = 1: centre, +W from x = 0 (-W from x = 2 is missing: 2 is not in the
    # mask); x = 2: outside the mask -> background; x = 3: centre, -W from 4; x = 4: centre, +W from 3.
    np.testing.assert_allclose(out[1].ravel(), [0.25, 0.55, 0.0, 0.25, 0.55], rtol=1e-6)
    np.testing.assert_allclose(out[0].ravel(), [0.75, 0.45, 1.0, 0.75, 0.45], rtol=1e-6)


def test_combine_task_probabilities_shape_error():
    with pytest.raises(ValueError, match="expected probabilities"):
        combine_task_probabilities(np.zeros((3, 7, 2)), np.ones((1, 1, 4), bool), task_offsets(7))


# --- patches, tiles, options, errors ----------------------------------------------------------------


def test_extract_patches3d_by_hand():
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    patches = extract_patches3d(image, np.array([[0, 0, 0], [3, 4, 5], [2, 1, 3]]), background=-1)
    assert patches.shape == (3, 1, 24, 24, 24) and patches.dtype == np.float32
    assert patches[0, 0, 11, 11, 11] == image[0, 0, 0]
    assert patches[1, 0, 11, 11, 11] == image[3, 4, 5]
    assert patches[2, 0, 11 + 1, 11 - 1, 11 + 2] == image[3, 0, 5]  # offset (+1, -1, +2) from the centre
    assert patches[0, 0, 10, 11, 11] == -1  # before the first slice
    assert (patches[0, 0, :11] == -1).all() and (patches[0, 0, 11:15, 11:16, 11:17] == image).all()
    assert patches[1, 0, 12, 12, 12] == -1  # one voxel past the last, on the patch's far side (index 23 = +12)
    assert (patches[1, 0, 8:12, 7:12, 6:12] == image).all() and (patches[1, 0, 12:] == -1).all()
    with pytest.raises(ValueError, match="outside the volume"):
        extract_patches3d(image, np.array([[4, 0, 0]]))


def test_choose_tile_size():
    budget = 512 * 2**20
    t = choose_tile_size(180, memory_bytes=budget)
    assert conv_stage_bytes((t, t, 180)) <= budget < conv_stage_bytes((t + 1, t + 1, 180))
    assert choose_tile_size(60) > choose_tile_size(180) > choose_tile_size(400)
    assert choose_tile_size(180, memory_bytes=1) == 1
    assert choose_tile_size(10, memory_bytes=10**12, max_size=32) == 32


def test_empty_mask(image):
    model = _model(tasks=7)
    mask = np.zeros(SHAPE, bool)
    out = predict_dense3d(model, image, mask)
    assert (out[0] == 1).all() and (out[1:] == 0).all()
    assert predict_task_probabilities3d(model, image, mask).shape == (0, 7, 5)


def test_input_errors(image, brain):
    model = _model(tasks=7, coordinates=3)
    coords = np.zeros((3,) + SHAPE, np.float32)
    with pytest.raises(ValueError, match="needs coordinates"):
        predict_dense3d(model, image, brain)
    with pytest.raises(ValueError, match="needs coordinates"):
        predict_patches3d(model, image, np.zeros((1, 3), int), coords[:2])
    with pytest.raises(ValueError, match="mask shape"):
        predict_dense3d(model, image, brain[:-1], coords)
    with pytest.raises(ValueError, match="tile_size"):
        predict_dense3d(model, image, brain, coords, tile_size=0)
    with pytest.raises(ValueError, match="takes no coordinates"):
        predict_dense3d(_model(tasks=7), image, brain, coords)
    empty = np.zeros((0,) + SHAPE, np.float32)  # K = 0 channels: the same as no coordinates
    plain = _model(tasks=1)
    np.testing.assert_array_equal(
        predict_patches3d(plain, image, np.array([[1, 2, 3]]), empty),
        predict_patches3d(plain, image, np.array([[1, 2, 3]])),
    )
    model.train()
    with pytest.raises(ValueError, match="eval"):
        predict_task_probabilities3d(model, image, brain, coords)
