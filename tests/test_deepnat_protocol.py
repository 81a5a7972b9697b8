"""DeepNAT's 25-structure protocol (configs/deepnat25_labels.tsv): every MICCAI 2012 label lands where docs/deepnat.md says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brainseg.labels import LabelTable

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "configs" / "deepnat25_labels.tsv"
SUBJECT = REPO.parent / "shared" / "data" / "miccai2012" / "1000_glm.nii.gz"

# FreeSurfer aseg number, FreeSurferColorLUT colour and the MICCAI 2012 structures of each class
# (cortex: every cortical parcel of the side, odd MICCAI numbers >= 100 on the left, even on the right).
IGNORED_PARCELS = (110, 111, 126, 127, 130, 131, 158, 159, 188, 189)  # numbers the challenge left out
LEFT_CORTEX = tuple(n for n in range(100, 208) if n % 2 == 1 and n not in IGNORED_PARCELS)
RIGHT_CORTEX = tuple(n for n in range(100, 208) if n % 2 == 0 and n not in IGNORED_PARCELS)
EXPECTED = {
    "Left-Cerebral-White-Matter": (2, (245, 245, 245), (45,)),
    "Left-Cerebral-Cortex": (3, (205, 62, 78), LEFT_CORTEX),
    "Left-Lateral-Ventricle": (4, (120, 18, 134), (52, 50)),
    "Left-Cerebellum-White-Matter": (7, (220, 248, 164), (41,)),
    "Left-Cerebellum-Cortex": (8, (230, 148, 34), (39,)),
    "Left-Thalamus": (10, (0, 118, 14), (60,)),
    "Left-Caudate": (11, (122, 186, 220), (37,)),
    "Left-Putamen": (12, (236, 13, 176), (58,)),
    "Left-Pallidum": (13, (12, 48, 255), (56,)),
    "3rd-Ventricle": (14, (204, 182, 142), (4,)),
    "4th-Ventricle": (15, (42, 204, 164), (11,)),
    "Brain-Stem": (16, (119, 159, 176), (35,)),
    "Left-Hippocampus": (17, (220, 216, 20), (48,)),
    "Left-Amygdala": (18, (103, 255, 255), (32,)),
    "Right-Cerebral-White-Matter": (41, (245, 245, 245), (44,)),
    "Right-Cerebral-Cortex": (42, (205, 62, 78), RIGHT_CORTEX),
    "Right-Lateral-Ventricle": (43, (120, 18, 134), (51, 49)),
    "Right-Cerebellum-White-Matter": (46, (220, 248, 164), (40,)),
    "Right-Cerebellum-Cortex": (47, (230, 148, 34), (38,)),
    "Right-Thalamus": (49, (0, 118, 14), (59,)),
    "Right-Caudate": (50, (122, 186, 220), (36,)),
    "Right-Putamen": (51, (236, 13, 176), (57,)),
    "Right-Pallidum": (52, (13, 48, 255), (55,)),
    "Right-Hippocampus": (53, (220, 216, 20), (47,)),
    "Right-Amygdala": (54, (103, 255, 255), (31,)),
}
# MICCAI structures outside the 25: accumbens, CSF, ventral DC, optic chiasm, vermis, basal forebrain.
BACKGROUND = (23, 30, 46, 61, 62, 69, 71, 72, 73, 75, 76)
# Label numbers the challenge ignored; 15, 42, 43, 63-66 and 74 do occur in its label maps.
IGNORED = (*range(1, 4), *range(5, 11), *range(12, 23), *range(24, 30), 33, 34, 42, 43, 53, 54, *range(63, 69), 70, 74)
IGNORED += (*range(80, 100), *IGNORED_PARCELS)


@pytest.fixture(scope="module")
def table():
    return LabelTable.from_tsv(TABLE)


def test_table_has_the_25_classes_with_aseg_numbers_and_colours(table):
    with open(TABLE, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert table.num_classes == 26 and table.names[0] == "Background"
    assert list(table.names[1:]) == list(EXPECTED)  # in FreeSurfer's aseg order
    for c, row in enumerate(rows[1:], 1):
        aseg, color, _ = EXPECTED[row["name"]]
        assert int(row["aseg"]) == aseg and table.colors[c] == color, row["name"]


def test_every_miccai_label_lands_where_documented(table):
    fine = LabelTable.miccai2012()
    listed = [(n, name) for name, (_, _, sources) in EXPECTED.items() for n in sources]
    listed += [(n, "Background") for n in (*BACKGROUND, *IGNORED)]
    where = dict(listed)
    assert len(where) == len(listed)  # no MICCAI number is documented twice
    assert set(fine.labels[1:]) <= set(where)  # all 134 structures are accounted for
    numbers = np.array(sorted(where))
    classes = table.to_classes(numbers.reshape(1, 1, -1)).ravel()  # a synthetic MICCAI label map
    for n, c in zip(numbers, classes):
        assert table.names[c] == where[n], (n, table.names[c], where[n])
    # the side in each MICCAI name agrees with the class's side
    for n, name in zip(fine.labels[1:], fine.names[1:]):
        side = table.names[table.to_classes(np.array([n]))[0]].split("-")[0]
        if side in ("Left", "Right"):
            assert name.startswith(side), (n, name)
    # the 25 classes are exact unions of the 134 (no ignored number joins a class), so a 134-class
    # prediction mapped through this table is the merged protocol
    sources = {n for c in range(1, 26) for n in table.sources(c)} - set(table.labels)
    assert sources <= set(fine.labels[1:])


def test_predicted_maps_read_back_as_the_same_classes(table):
    # Class label numbers must not collide with MICCAI numbers of other structures (FreeSurfer's 4, 11,
    # 41, 46, 47, 49-52 would): writing classes as label numbers and reading them back is the identity.
    classes = np.arange(table.num_classes)
    assert np.array_equal(table.to_classes(table.to_labels(classes)), classes)
    own = {table.labels[c] for c in range(1, 26)}
    assert own - {n for c in range(1, 26) for n in table.sources(c)[1:]} == own  # no label is another's source
    assert {table.labels[c] for c in range(1, 26)} & set(BACKGROUND + IGNORED) == set()


def test_subject_1000_has_every_class_with_plausible_volumes(table):
    if not SUBJECT.is_file():
        pytest.skip(f"{SUBJECT} not found: the MICCAI 2012 label maps live in ../shared/data (present in CI)")
    import nibabel as nib

    image = nib.load(SUBJECT)
    label_map = np.asarray(image.dataobj).astype(np.int64)
    ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
    volumes = np.bincount(table.to_classes(label_map).ravel(), minlength=26) * ml
    volume = dict(zip(table.names, volumes))
    assert all(volumes[1:] > 0)
    for side in ("Left", "Right"):
        assert 200 < volume[f"{side}-Cerebral-Cortex"] < 400
        assert 150 < volume[f"{side}-Cerebral-White-Matter"] < 350
        assert 40 < volume[f"{side}-Cerebellum-Cortex"] < 80  # vermis (~11 ml) is background
        assert 5 < volume[f"{side}-Cerebellum-White-Matter"] < 30
        assert 5 < volume[f"{side}-Thalamus"] < 12
        assert 2 < volume[f"{side}-Hippocampus"] < 6 and 0.5 < volume[f"{side}-Amygdala"] < 2.5
        assert 1 < volume[f"{side}-Caudate"] < 7 and 2 < volume[f"{side}-Putamen"] < 8
        assert 0.5 < volume[f"{side}-Pallidum"] < 3 and 1 < volume[f"{side}-Lateral-Ventricle"] < 40
    assert 10 < volume["Brain-Stem"] < 35 and 0.1 < volume["3rd-Ventricle"] < 3 and 0.5 < volume["4th-Ventricle"] < 5
    # the inferior lateral ventricles joined the lateral ventricles; the vermis went to background
    inf_lat = np.isin(label_map, (49, 50)).sum() * ml
    lateral = np.isin(label_map, (51, 52)).sum() * ml
    assert volume["Left-Lateral-Ventricle"] + volume["Right-Lateral-Ventricle"] == pytest.approx(lateral + inf_lat)
    vermis = table.to_classes(label_map)[np.isin(label_map, (71, 72, 73))]
    assert vermis.size and not vermis.any()
