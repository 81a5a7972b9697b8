"""The iterative two-stage inference loop of de Brébisson and Montana (2015, §3.4), with stand-in networks."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.inference.two_stage import iterate_centroids


def _truth(shape=(12, 14, 10)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[1:6, 1:7, 1:9] = 1
    m[6:11, 1:7, 1:9] = 2
    m[1:11, 7:13, 1:9] = 3
    return m


def test_stops_when_the_segmentation_settles(affine):
    truth = _truth()
    mask = truth > 0
    first = truth.copy()
    first[1:6, 1:7, 1:9] = 2  # the first stage confuses region 1 with 2
    calls = []

    def full(centroids):
        # A network that gets better the closer its centroids are to the true ones: passes 1 and 2 fix
        # half the wrong voxels each, then nothing changes.
        calls.append(centroids)
        out = truth.copy()
        wrong = np.argwhere((truth == 1))
        keep_wrong = wrong[: len(wrong) // 2 ** (len(calls) + 1)] if len(calls) < 3 else wrong[:0]
        out[tuple(keep_wrong.T)] = 2
        return out

    result = iterate_centroids(lambda: first, full, mask, affine, 3, max_iterations=10, tolerance=1e-3)
    assert result.converged and result.iterations == len(calls) == 4
    assert result.changed[-1] == 0.0 and all(c > 0 for c in result.changed[:-1])
    np.testing.assert_array_equal(result.classes, truth)
    # the first pass measured from the first stage, where region 1 was missing
    assert result.missing[0] == 1 and result.missing[-1] == 0
    assert not calls[0].present[0] and calls[-1].present.all()


def test_stops_after_max_iterations(affine):
    truth = _truth()
    flip = [truth, np.where(truth == 1, 3, truth).astype(np.uint8)]
    state = {"n": 0}

    def oscillating(centroids):
        state["n"] += 1
        return flip[state["n"] % 2]

    result = iterate_centroids(lambda: truth, oscillating, truth > 0, affine, 3, max_iterations=3, tolerance=0.0)
    assert result.iterations == 3 and not result.converged and len(result.changed) == 3
    assert result.passes == []  # not kept unless asked
    state["n"] = 0
    kept = iterate_centroids(
        lambda: truth, oscillating, truth > 0, affine, 3, max_iterations=3, tolerance=0.0, keep_passes=True
    )
    assert len(kept.passes) == 4  # the first stage, then each pass
    for got, expected in zip(kept.passes, [truth, flip[1], flip[0], flip[1]]):
        np.testing.assert_array_equal(got, expected)
    assert kept.passes[-1] is kept.classes


def test_first_stage_with_one_region_is_kept(affine, caplog):
    truth = _truth()
    one = np.where(truth > 0, 1, 0).astype(np.uint8)
    result = iterate_centroids(lambda: one, lambda c: pytest.fail("ran the full network"), truth > 0, affine, 3)
    assert result.iterations == 0 and np.array_equal(result.classes, one)
    assert "fewer than two regions" in caplog.text


def test_argument_errors(affine):
    truth = _truth()
    with pytest.raises(ValueError, match="max_iterations"):
        iterate_centroids(lambda: truth, lambda c: truth, truth > 0, affine, 3, max_iterations=0)
    with pytest.raises(ValueError, match="tolerance"):
        iterate_centroids(lambda: truth, lambda c: truth, truth > 0, affine, 3, tolerance=-1)
