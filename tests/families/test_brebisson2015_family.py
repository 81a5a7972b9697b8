"""de Brébisson and Montana (2015) as a family: config, patch inputs, sampler, networks and loss.

The dense predictor is tested in ``tests/inference/test_dense_brebisson.py``; training and segmenting through
the CLI at the end of this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.config import BrebissonConfig, Config, TrainingConfig, _build, config_to_dict, load_config
from brainseg.errors import InputError
from brainseg.families import family_of
from brainseg.families.brebisson2015 import BREBISSON2015, BrebissonSampler, pathway_inputs, pathway_label
from brainseg.features.centroids import RegionCentroids
from brainseg.models.brebisson2015 import BrebissonNet, BrebissonTwoStage

TINY = dict(widths_2d=(3, 4), fc_3d=(5,), fc=(6, 5))
SHAPE = (23, 19, 21)  # non-cubic


def _case(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(SHAPE).astype(np.float32)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    mask = sum(g**2 for g in grids) < 0.6
    classes = np.where(mask, np.where(grids[0] < 0, 1, 2), 0).astype(np.uint8)
    classes[mask & (grids[1] > 0.3)] = 3
    affine = np.array([[0.0, 1.2, 0, -5], [0.9, 0, 0, 3], [0, 0, 2.0, 7], [0, 0, 0, 1]])  # permuted, anisotropic
    return image, mask, classes, affine


def _inputs(cfg, image, mask, affine, background=-3.0):
    return BREBISSON2015.case_inputs(cfg, image, mask, affine, background, None)


# -- configuration ------------------------------------------------------------------------------


def test_config_parses_by_model_name_and_round_trips(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(
        "model:\n  name: brebisson2015\n  pathways: [orthogonal, centroids]\n  fc: [8]\ntraining:\n  epochs: 1\n"
    )
    config = load_config(path)
    assert isinstance(config.model, BrebissonConfig)
    assert config.model.pathways == ("orthogonal", "centroids") and config.model.fc == (8,)
    assert config.model.widths_2d == (20, 50) and config.model.noise_sigma == 0.2
    assert not config.model.needs_reference and config.model.dropout == 0.0 and not config.model.batch_norm
    assert family_of(config.model) is BREBISSON2015
    again = config_to_dict(config)["model"]
    assert again["pathways"] == ["orthogonal", "centroids"] and "dropout" not in again


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pathways": ["orthogonal", "nosuch"]}, "pathways must be distinct names"),
        ({"pathways": []}, "pathways must be distinct names"),
        ({"pathways": ["orthogonal", "orthogonal"]}, "pathways must be distinct names"),
        ({"widths_2d": [20]}, "widths_2d needs 2 positive integers"),
        ({"fc": []}, "fc needs at least one positive integer"),
        ({"noise_sigma": -0.1}, "noise_sigma must be a number >= 0"),
        ({"max_iterations": 0}, "max_iterations must be a positive integer"),
        ({"tolerance": 1.0}, "tolerance must be a fraction"),
        ({"first_stage": ["centroids"]}, "first_stage must be distinct names"),
        ({"pathways": ["orthogonal"], "first_stage": ["coordinates"]}, "first_stage is only read with the centroids"),
    ],
)
def test_config_refuses_bad_values_naming_the_setting(values, message):
    with pytest.raises(InputError, match=message):
        _build(BrebissonConfig, {"name": "brebisson2015", **values}, "x.yaml: model")


# -- inputs, patch by patch -----------------------------------------------------------------------


def test_patches_read_the_image_where_the_conventions_say():
    image, mask, _, affine = _case()
    cfg = BrebissonConfig(num_classes=4, pathways=("orthogonal", "compressed", "patch_3d", "coordinates"), **TINY)
    inputs = _inputs(cfg, image, mask, affine)
    v = np.array([[11, 9, 10]])
    got = pathway_inputs(inputs, v, cfg.pathways, None)
    x, y, z = v[0]
    sag, cor, axi = got["orthogonal"][0]
    assert sag[14, 14] == cor[14, 14] == axi[14, 14] == image[x, y, z]
    assert sag[16, 11] == image[x, y + 2, z - 3]  # sagittal: (y, z)
    assert cor[16, 11] == image[x + 2, y, z - 3]  # coronal: (x, z)
    assert axi[16, 11] == image[x + 2, y - 3, z]  # axial: (x, y)
    assert sag[0, 0] == -3.0  # 14 voxels away: outside the image, background
    comp = got["compressed"][0]
    assert comp[1, 14, 14] == pytest.approx(image[x - 1 : x + 2, y, z - 1 : z + 2].mean(), abs=1e-6)
    assert comp[2, 15, 13] == pytest.approx(image[x + 2 : x + 5, y - 4 : y - 1, z].mean(), abs=1e-6)
    cube = got["patch_3d"][0, 0]
    assert (
        cube.shape == (13, 13, 13) and cube[6, 6, 6] == image[x, y, z] and cube[0, 12, 7] == image[x - 6, y + 6, z + 1]
    )
    # coordinates: mm from the brain's centre of mass / 100 mm
    centre = np.argwhere(mask).mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
    expected = ((v[0] @ affine[:3, :3].T + affine[:3, 3]) - centre) / 100
    np.testing.assert_allclose(got["coordinates"][0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="outside the brain's bounding box"):
        pathway_inputs(inputs, np.array([[0, 0, 0]]), ("patch_3d",), None)


def test_patch_2d_is_the_axial_orthogonal_patch():
    image, mask, _, affine = _case()
    cfg = BrebissonConfig(num_classes=4, pathways=("patch_2d", "orthogonal"), **TINY)
    got = pathway_inputs(_inputs(cfg, image, mask, affine), np.argwhere(mask)[::50], cfg.pathways, None)
    np.testing.assert_array_equal(got["patch_2d"][:, 0], got["orthogonal"][:, 2])


def test_centroid_distances_are_to_the_reference_centroids_over_the_brain_scale():
    image, mask, classes, affine = _case()
    cfg = BrebissonConfig(num_classes=4, pathways=("orthogonal", "centroids"), **TINY)
    inputs = _inputs(cfg, image, mask, affine)
    sampler = BrebissonSampler(inputs, classes, mask, cfg.pathways)
    tc = TrainingConfig(sampling="uniform", augment=False)
    batch, targets = sampler.draw(40, np.random.default_rng(1), tc)
    assert batch["orthogonal"].shape == (40, 3, 29, 29) and batch["centroids"].shape == (40, 3)
    assert set(batch) == {"orthogonal", "centroids"} and targets.dtype == np.uint8
    # the targets and the distances belong to the same voxels: recompute from the patches' centres
    centroids = RegionCentroids.of(classes, affine, 3)
    voxels = np.argwhere(mask)
    values = image[tuple(voxels.T)]
    for row in range(5):
        (hit,) = np.nonzero(values == batch["orthogonal"][row, 0, 14, 14])
        voxel = voxels[hit[0]]
        assert targets[row] == classes[tuple(voxel)]
        mm = voxel @ affine[:3, :3].T + affine[:3, 3]
        expected = np.linalg.norm(centroids.centroids - mm, axis=1) / centroids.scale_mm
        np.testing.assert_allclose(batch["centroids"][row], expected, rtol=1e-5)
    with pytest.raises(InputError, match="no augmentation"):
        sampler.draw(4, np.random.default_rng(0), TrainingConfig(augment=True))


def test_sampler_refuses_a_label_map_without_two_regions():
    image, mask, _, affine = _case()
    cfg = BrebissonConfig(num_classes=4, pathways=("orthogonal", "centroids"), **TINY)
    classes = mask.astype(np.uint8)  # one region
    with pytest.raises(InputError, match="at least two present regions"):
        BrebissonSampler(_inputs(cfg, image, mask, affine), classes, mask, cfg.pathways)


# -- networks and loss ----------------------------------------------------------------------------


def test_networks_built_for_the_pathways():
    cfg = BrebissonConfig(num_classes=4, pathways=("orthogonal", "compressed"), **TINY)
    assert isinstance(BREBISSON2015.build_network(cfg), BrebissonNet)
    cfg = BrebissonConfig(num_classes=4, pathways=("compressed", "coordinates", "centroids"), **TINY)
    model = BREBISSON2015.build_network(cfg)
    assert isinstance(model, BrebissonTwoStage)
    assert model.full.pathways == ("compressed", "coordinates", "centroids")
    assert model.first.pathways == ("compressed", "coordinates") and model.full.num_centroids == 3
    with pytest.raises(InputError, match="centroid distances alone"):
        BREBISSON2015.build_network(BrebissonConfig(num_classes=4, pathways=("centroids",), **TINY))
    # Table 1's centroid-only row: its first stage reads the coordinates
    cfg = BrebissonConfig(num_classes=4, pathways=("centroids",), first_stage=("coordinates",), **TINY)
    model = BREBISSON2015.build_network(cfg)
    assert model.full.pathways == ("centroids",) and model.first.pathways == ("coordinates",)
    with pytest.raises(ValueError, match="the first-stage network not"):
        BrebissonTwoStage(model.full, model.full)


def test_two_stage_loss_is_the_sum_of_both_networks_cross_entropies():
    torch.manual_seed(0)
    cfg = BrebissonConfig(num_classes=4, pathways=("coordinates", "centroids"), **TINY)
    model = BREBISSON2015.build_network(cfg).eval()
    batch = {"coordinates": torch.randn(6, 3), "centroids": torch.rand(6, 3)}
    targets = torch.tensor([0, 1, 2, 3, 1, 2])
    loss = BREBISSON2015.loss(model, batch, targets, TrainingConfig())
    ce = torch.nn.functional.cross_entropy
    expected = ce(model.full(**batch), targets) + ce(model.first(coordinates=batch["coordinates"]), targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(model(**batch), model.full(**batch))


def test_row_labels_are_the_papers_table_1_rows():
    def label(pathways, **widths):
        model = BrebissonConfig(num_classes=4, pathways=pathways, **widths)
        return BREBISSON2015.row_label(Config(model, TrainingConfig()))

    assert label(("patch_2d",)) == "2D patch"
    assert label(("compressed", "orthogonal")) == "orthogonal + compressed"
    assert label(("orthogonal", "compressed", "patch_3d", "centroids")) == "full"
    assert label(("orthogonal", "coordinates")) == "orthogonal + coordinates"
    assert label(("orthogonal",), **TINY) == "3 orthogonal patches"  # narrowed rows keep the paper's row
    assert pathway_label(("centroids",)) == "centroid distances"
    text = BREBISSON2015.describe(Config(BrebissonConfig(num_classes=4), TrainingConfig()))
    assert "full" in text and "two-stage inference (at most 5 passes" in text


# -- through the command line ---------------------------------------------------------------------


def test_brebisson_trains_segments_evaluates_and_is_described(tmp_path, tiny_manifest, capsys):
    import csv

    import nibabel as nib
    import yaml

    from brainseg.cli.main import main
    from brainseg.model_folder import load_model_folder

    config = {
        "model": {"name": "brebisson2015", "widths_2d": [4, 4], "fc_3d": [8], "fc": [16], "max_iterations": 3},
        "training": {
            "manifest": "cases.csv",
            "train_cases": ["a", "b"],
            "validation_cases": ["c"],
            "epochs": 2,
            "samples_per_epoch": 1024,
            "batch_size": 64,
            "learning_rate": 0.05,
            "momentum": 0.5,
            "poly_power": 0.0,
            "sampling": "uniform",
            "augment": False,
            "num_threads": 1,
        },
    }
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    model_dir = tmp_path / "model"
    assert main(["train", str(tmp_path / "b.yaml"), "-o", str(model_dir), "--no-progress"]) == 0
    model = load_model_folder(model_dir)
    assert isinstance(model.config.model, BrebissonConfig) and model.config.model.num_classes == 3
    assert isinstance(model.network, BrebissonTwoStage) and model.network.full.num_centroids == 2
    card = (model_dir / "model_card.md").read_text()
    assert "de Brébisson and Montana (2015) de Brébisson & Montana network (full:" in card

    image = tmp_path / "data" / "c_SS.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(model_dir), "--no-progress"]) == 0
    written = nib.load(tmp_path / "seg" / "c_SS_seg.nii.gz")
    assert written.shape == nib.load(image).shape and set(np.unique(np.asarray(written.dataobj))) <= {0, 4, 11}
    scores = tmp_path / "scores.csv"
    argv = ["evaluate", str(tmp_path / "seg" / "c_SS_seg.nii.gz"), str(tmp_path / "data" / "c_glm.nii.gz")]
    assert main([*argv, "--model", str(model_dir), "--no-distances", "-o", str(scores)]) == 0
    with open(scores) as f:
        mean = next(r for r in csv.DictReader(f) if r["case_id"] == "mean")
    assert float(mean["dice"]) > 0.75  # the two structures differ in intensity and position
    capsys.readouterr()
    assert main(["info", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "network: brebisson2015: de Brébisson & Montana network" in out and "30,565,555" in out

    # every pass of the iterative inference, scored (section 3.4: "the effect of each refinement iteration")
    from brainseg.training.refinement import main as refinement_main
    from brainseg.training.refinement import score_passes

    passes = score_passes(model, max_iterations=2)
    assert [p.case_id for p in passes] == ["c"] * len(passes) and 2 <= len(passes) <= 3
    assert [p.step for p in passes] == list(range(len(passes)))
    assert passes[0].missing == -1 and np.isnan(passes[0].changed) and 0 <= passes[1].changed <= 1
    assert passes[-1].mean_dice > 0.75 and 0 <= passes[-1].error_rate < 0.25
    assert refinement_main([str(model_dir), "--max-iterations", "1", "--no-progress"]) == 0
    table = (model_dir / "refinement.md").read_text()
    assert "| first stage | 1 |" in table and "| pass 1 | 1 |" in table and "| pass 2 " not in table
    # given the reference's centroids (the paper's Table 1 scoring): one pass, no first stage
    (truth,) = score_passes(model, true_centroids=True)
    assert truth.step == -1 and truth.missing == 0 and np.isnan(truth.changed) and truth.mean_dice > 0.75
    assert refinement_main([str(model_dir), "--true-centroids", "--no-progress"]) == 0
    told = (model_dir / "true_centroids.md").read_text()
    assert "| true centroids | 1 |" in told and "first stage" not in told.split("\n\n")[-1]
    # the card shows the error rate per case and, once refinement.md exists, the passes
    from brainseg.training.model_card import write_model_card

    card = write_model_card(model_dir).read_text()
    assert "| case | mean Dice | mean HD (mm) | mean MSD (mm) | error rate |" in card
    assert "| error rate (structure voxels misclassified, mean over cases) |" in card
    assert "## Iterative inference, pass by pass" in card and "| pass 1 | 1 |" in card


def test_even_scale_compressed_patches_need_scale_over_2_more_padding():
    # an even s x s block reaches s // 2 voxels past its centre on the far side; the padding check used to
    # count (s - 1) // 2, so a patch at the brain's edge could read past the padded array
    from brainseg.sampling.orthogonal import OrthogonalPatches

    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 11, 7)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[2:7, 3:9, 1:6] = True
    patches = OrthogonalPatches.of(image, mask, background=-3.0, half=5, scale=1, cube=1)
    assert patches.margin == 6
    edges = np.array([[6, 8, 5], [2, 3, 1]])  # the bounding box's far and near corners
    got = patches.planar(edges, half=2, scale=2)  # reaches 2 * 2 + 1 = 5 <= 6 voxels
    x, y, z = edges[0]
    # axial (x, y) sample (k, l) = mean of the 2 x 2 block from (x + 2 (k - 2), y + 2 (l - 2)), both past the box
    assert got[0, 2, 4, 4] == pytest.approx(-3.0)
    # the centre sample's block is x..x+1, y..y+1: only (x, y) is inside the crop, the rest is padding
    assert got[0, 2, 2, 2] == pytest.approx((image[x, y, z] - 3 * 3.0) / 4, abs=1e-6)
    x, y, z = edges[1]
    assert got[1, 2, 2, 2] == pytest.approx(image[x : x + 2, y : y + 2, z].mean(), abs=1e-6)
    with pytest.raises(ValueError, match="needs more padding than 6"):
        patches.planar(edges, half=3, scale=2)  # reaches 2 * 3 + 1 = 7 > 6
