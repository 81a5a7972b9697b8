"""MixNet on several co-registered modalities (Chen and Merhof 2018, section 2.1's ``M`` streams).

From the manifest's ``image_NAME`` columns through preparation (each modality resampled and z-scored on
its own), the cropped inputs, the slice sampler and its augmentation, multi-view inference, to
``brainseg train`` and ``brainseg segment --modality`` on a tiny case whose structures only the second
modality tells apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.config import MixNetConfig, TrainingConfig, _build
from brainseg.errors import InputError
from brainseg.families.chen2018 import CHEN2018, MARGIN, PLANE_AXIS, MixNetInputs, MixNetViews
from brainseg.io.manifest import Case, read_manifest, write_manifest
from brainseg.io.nifti import Grid, Volume
from brainseg.preprocessing.pipeline import prepare_image
from brainseg.sampling.slices import SliceSampler

SHAPE = (19, 23, 17)
BACKGROUNDS = np.array([-1.0, 3.0], np.float32)


def _two_modalities():
    """Modality 1 an arbitrary field, modality 2 = 2 x modality 1 + 5 (backgrounds too), an ellipsoid mask."""
    rng = np.random.default_rng(0)
    first = rng.standard_normal(SHAPE).astype(np.float32)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    mask = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, (8, 12, 9), (6, 8, 5))) < 1
    first[~mask] = BACKGROUNDS[0]
    image = np.stack([first, 2 * first + 5])
    classes = np.where(mask, np.where(grids[0] < 8, 1, 2), 0).astype(np.uint8)
    return image, mask, classes


@pytest.mark.parametrize(
    ("modalities", "message"),
    [
        ([], "modalities must be distinct names"),
        (["t1", "t1"], "modalities must be distinct names"),
        (["t1 c"], "modalities must be distinct names"),
        ([3], "modalities must be distinct names"),
    ],
)
def test_config_refuses_bad_modality_names(modalities, message):
    with pytest.raises(InputError, match=message):
        _build(MixNetConfig, {"name": "mixnet", "modalities": modalities}, "x.yaml: model")
    with pytest.raises(InputError, match="multi-modal mixnet works on the scan's own grid"):
        MixNetConfig(modalities=("flair", "t1c"), reference_space=True)


def test_inputs_crop_every_modality_and_pad_each_with_its_own_background():
    image, mask, _ = _two_modalities()
    inputs = MixNetInputs.of(image, mask, BACKGROUNDS)
    low = np.argwhere(mask).min(axis=0) - MARGIN
    assert inputs.modalities == 2 and inputs.image.shape[0] == 2
    np.testing.assert_array_equal(inputs.background, BACKGROUNDS)
    assert tuple(inputs.image[:, 0, 0, 0]) == (-1.0, 3.0)  # low < 0 on axis 0: outside the volume
    v = np.argwhere(mask)[0]
    np.testing.assert_array_equal(
        inputs.image[:, v[0] - low[0], v[1] - low[1], v[2] - low[2]], image[:, v[0], v[1], v[2]]
    )
    np.testing.assert_allclose(inputs.image[1], 2 * inputs.image[0] + 5)
    with pytest.raises(ValueError, match="one background value, or one per modality"):
        MixNetInputs.of(image, mask, np.zeros(3))
    with pytest.raises(InputError, match="reads 1 modalities, got 2"):
        CHEN2018.case_inputs(MixNetConfig(), image, mask, np.eye(4), BACKGROUNDS, None)


@pytest.mark.parametrize("augment", [False, True])
def test_sampler_gives_every_modality_the_same_window_and_transform(augment):
    image, mask, classes = _two_modalities()
    inputs = MixNetInputs.of(image, mask, BACKGROUNDS)
    sampler = SliceSampler(inputs, classes, mask, ("sagittal", "coronal", "axial"), 16, np.array([0, 2, 1]))
    batch, targets = sampler.draw(40, np.random.default_rng(5), TrainingConfig(augment=augment))
    slices = batch["slices"]
    assert slices.shape == (40, 2, 16, 16) and targets.shape == (40, 16, 16)
    # the second modality is an affine function of the first, background included: whatever window,
    # interpolation, flip or deformation a crop went through, both modalities went through it together
    np.testing.assert_allclose(slices[:, 1], 2 * slices[:, 0] + 5, atol=1e-4)
    assert (slices[:, 0] == BACKGROUNDS[0]).any() and (targets >= 0).any()


def _by_hand(views: MixNetViews, inputs: MixNetInputs, plane: str) -> np.ndarray:
    """One plane's softmax on the crop's grid, one slice per pass, padded by hand with each background."""
    axis = PLANE_AXIS[plane]
    volume = np.moveaxis(inputs.image, axis + 1, 0)  # (slices, M, a, b)
    out = []
    for x in volume:
        a, b = x.shape[-2:]
        padded = np.empty((2, a + a % 2, b + b % 2), np.float32)
        padded[:] = inputs.background[:, None, None]
        padded[:, :a, :b] = x
        with torch.no_grad():
            logits = views.for_plane(plane)(torch.from_numpy(padded)[None])[0, :, :a, :b]
        out.append(torch.softmax(logits, 0).numpy())
    return np.moveaxis(np.stack(out, axis=1), 1, 1 + axis)


def test_multi_view_inference_of_two_modalities_equals_slice_by_slice(float32_mixnet):
    image, mask, _ = _two_modalities()
    cfg = MixNetConfig(num_classes=3, filters=4, modalities=("flair", "t1c"), view_weights=(1, 2, 5))
    torch.manual_seed(0)
    views = CHEN2018.build_network(cfg).eval()
    assert views.in_channels == 2 and len(views.for_plane("axial").inits) == 2  # v2: one stream per modality
    inputs = CHEN2018.case_inputs(cfg, image, mask, np.eye(4), BACKGROUNDS, None)
    classes, probs = CHEN2018.predict(views, inputs, mask, probabilities=True, probability_dtype=np.float32)
    inside = inputs.crop(mask, False)
    expected = sum(w * _by_hand(views, inputs, p)[:, inside] for p, w in zip(views.planes, (1 / 8, 2 / 8, 5 / 8)))
    np.testing.assert_allclose(probs[:, mask], expected, atol=1e-5)
    np.testing.assert_array_equal(classes[mask], expected.argmax(axis=0))
    one = MixNetInputs.of(image[0], mask, BACKGROUNDS[0])
    with pytest.raises(ValueError, match="read 2 modalities, the inputs hold 1"):
        CHEN2018.predict(views, one, mask)


def test_prepare_image_resamples_and_normalises_each_modality_on_its_own():
    rng = np.random.default_rng(2)
    shape = (12, 9, 7)
    affine = np.array([[0.0, -1.2, 0.1, 5], [0.9, 0.0, 0.0, -3], [0.0, 0.0, 2.0, 1], [0, 0, 0, 1]])
    mask = np.zeros(shape, bool)
    mask[2:10, 2:8, 1:6] = True
    first = np.where(mask, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)
    second = (3 * first + 7).astype(np.float32)
    grid = Grid(shape, affine)
    prepared = prepare_image(Volume(first, affine, grid), mask, None, [Volume(second, affine, grid)])
    alone = prepare_image(Volume(second, affine, grid), mask)
    assert prepared.resampled and len(prepared.channels) == 1
    np.testing.assert_allclose(prepared.channels[0], alone.image, atol=1e-4)  # its own z-score
    np.testing.assert_allclose(prepared.channel_backgrounds, [alone.background], atol=1e-5)
    inside = prepared.mask
    assert abs(prepared.channels[0][inside].mean()) < 1e-4 and abs(prepared.channels[0][inside].std() - 1) < 1e-3
    assert prepared.network_image.shape == (2, *prepared.mask.shape)
    np.testing.assert_allclose(prepared.network_background, [prepared.background, alone.background], atol=1e-5)
    shifted = affine.copy()
    shifted[0, 3] += 1
    with pytest.raises(InputError, match="not on the voxel grid of the first image"):
        prepare_image(Volume(first, affine, grid), mask, None, [Volume(second, shifted, Grid(shape, shifted))])


def test_manifest_modality_columns_round_trip_and_name_what_is_missing(tmp_path):
    case = Case("s1", tmp_path / "flair.nii.gz", tmp_path / "seg.nii.gz", None, (("t1c", tmp_path / "t1c.nii.gz"),))
    plain = Case("s2", tmp_path / "t1.nii.gz")
    path = write_manifest(tmp_path / "m.csv", [case, plain], relative=True)
    assert path.read_text().splitlines()[0] == "case_id,image,label_map,mask,image_t1c"
    again = read_manifest(path)
    assert [c.case_id for c in again] == ["s1", "s2"]
    assert again[0].images_of(("flair", "t1c")) == [(tmp_path / "t1c.nii.gz")] and again[1].modalities == ()
    assert again[0].images_of(("flair",)) == []
    with pytest.raises(
        InputError, match="case s2: the model reads modalities flair, t1c; the manifest gives no image_t1c"
    ):
        again[1].images_of(("flair", "t1c"))


# -- through the command line ---------------------------------------------------------------------


def _write_two_modality_cases(folder, rng) -> None:
    """Tiny cases whose two structures look alike in 'flair' and differ only in 't1c'."""
    import nibabel as nib

    shape = (18, 20, 16)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = zz**2 + yy**2 + xx**2 < 0.7
    labels = np.where(brain, np.where(zz < 0, 4, 11), 0).astype(np.int16)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    for case_id in ("a", "b", "c"):
        flair = np.where(brain, 100 + 5 * rng.standard_normal(shape), 0).astype(np.float32)
        t1c = np.where(brain, np.where(zz < 0, 80, 140) + 5 * rng.standard_normal(shape), 0).astype(np.float32)
        for suffix, data in (("flair", flair), ("t1c", t1c), ("seg", labels), ("mask", brain.astype(np.uint8))):
            nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id}_{suffix}.nii.gz")
    rows = ["case_id,image,label_map,mask,image_t1c"]
    rows += [f"{c},data/{c}_flair.nii.gz,data/{c}_seg.nii.gz,data/{c}_mask.nii.gz,data/{c}_t1c.nii.gz" for c in "abc"]
    (folder.parent / "cases.csv").write_text("\n".join(rows) + "\n")


def test_two_modality_mixnet_trains_and_segments_from_the_command_line(tmp_path, train_tiny_mixnet, capsys):
    import csv

    import nibabel as nib

    from brainseg.cli.main import main

    (tmp_path / "data").mkdir()
    _write_two_modality_cases(tmp_path / "data", np.random.default_rng(0))
    model_dir = train_tiny_mixnet({"modalities": ["flair", "t1c"], "planes": ["axial"]})
    with open(model_dir / "validation.csv") as f:
        dice = [float(r["dice"]) for r in csv.DictReader(f)]
    assert min(dice) > 0.75  # only t1c tells the structures apart: the second modality is read
    assert "flair, t1c slices" in (model_dir / "model_card.md").read_text()

    data, out = tmp_path / "data", tmp_path / "seg"
    base = ["segment", str(data / "c_flair.nii.gz"), "-o", str(out), "--model", str(model_dir), "--no-progress"]
    assert main([*base, "--modality", f"t1c={data / 'c_t1c.nii.gz'}", "--skull-strip", "never"]) == 0
    written = np.asarray(nib.load(out / "c_flair_seg.nii.gz").dataobj)
    reference = np.asarray(nib.load(data / "c_seg.nii.gz").dataobj)
    assert ((written == 4) & (reference == 4)).sum() > 0.75 * (reference == 4).sum()
    # a manifest gives each case's other modality in its image_t1c column
    batch = ["segment", str(tmp_path / "cases.csv"), "-o", str(tmp_path / "batch"), "--model", str(model_dir)]
    assert main([*batch, "--no-progress", "--skull-strip", "never"]) == 0
    assert sorted(p.name for p in (tmp_path / "batch").glob("*_seg.nii.gz")) == [
        "a_seg.nii.gz",
        "b_seg.nii.gz",
        "c_seg.nii.gz",
    ]

    # refused before anything is written: the missing modality, or one a T1 model cannot read
    capsys.readouterr()
    assert main([*base[:3], str(tmp_path / "none"), *base[4:]]) == 2
    err = capsys.readouterr().err
    assert "the model reads modalities flair, t1c; give --modality t1c=PATH" in err and "Traceback" not in err
    assert not (tmp_path / "none").exists()
    assert main(["segment", str(data / "c_flair.nii.gz"), "-o", str(tmp_path / "x"), "--modality", "t1c"]) == 2
    assert "--modality expects NAME=PATH" in capsys.readouterr().err


def test_a_t1_model_refuses_other_modalities_and_a_multi_modal_one_names_the_missing(tmp_path):
    from brainseg.inference.batch import SegmentInput, output_paths
    from brainseg.inference.segment import check_modalities

    given = output_paths(SegmentInput(tmp_path / "s.nii.gz", "s", (("t1c", tmp_path / "c.nii.gz"),)), tmp_path, False)
    bare = output_paths(SegmentInput(tmp_path / "s.nii.gz", "s"), tmp_path, False)
    check_modalities([given], ("flair", "t1c"))
    check_modalities([bare], ("t1",))
    with pytest.raises(InputError, match="the model reads t1 and no t1c; leave those images out"):
        check_modalities([given], ("t1",))
    with pytest.raises(InputError, match="give --modality t2=PATH .* or a manifest .csv with the column.s. image_t2"):
        check_modalities([given], ("flair", "t1c", "t2"))
