"""Tests of brainseg.labels.LabelTable."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.labels import LabelTable

IGNORED = (15, 42, 43, 63, 64, 65, 66, 74, 126, 127)


@pytest.fixture(scope="module")
def miccai() -> LabelTable:
    return LabelTable.miccai2012()


def test_miccai2012_has_135_classes(miccai):
    assert miccai.num_classes == 135
    assert len(miccai.labels) == len(miccai.names) == 135
    assert miccai.labels[0] == 0
    assert len(set(miccai.labels)) == 135


def test_miccai2012_first_structures(miccai):
    assert miccai.labels[1:3] == (4, 11)
    assert miccai.names[1] == "3rd Ventricle"


@pytest.mark.parametrize("label", IGNORED)
def test_ignored_labels_map_to_background(miccai, label):
    assert label not in miccai.labels
    out = miccai.to_classes(np.array([label, 4, label]))
    np.testing.assert_array_equal(out, [0, 1, 0])


def test_unknown_label_above_max_maps_to_background(miccai):
    np.testing.assert_array_equal(miccai.to_classes(np.array([1000, 11])), [0, 2])


def test_to_classes_dtype_and_shape(miccai, label_volume):
    out = miccai.to_classes(label_volume)
    assert out.dtype == np.uint8
    assert out.shape == label_volume.shape


def test_round_trip_valid_labels(miccai, rng):
    labels = rng.choice(np.array(miccai.labels), size=(4, 5, 6))
    classes = miccai.to_classes(labels)
    back = miccai.to_labels(classes)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)


def test_to_classes_rejects_negative(miccai):
    with pytest.raises(ValueError, match="negative"):
        miccai.to_classes(np.array([0, -1]))


def test_tsv_round_trip(tmp_path):
    table = LabelTable(labels=(0, 4, 11), names=("bg", "a b", "c"))
    path = tmp_path / "labels.tsv"
    table.to_tsv(path)
    assert LabelTable.from_tsv(path) == table


def test_miccai_tsv_round_trip(miccai, tmp_path):
    path = tmp_path / "miccai.tsv"
    miccai.to_tsv(path)
    assert LabelTable.from_tsv(path) == miccai


def test_duplicate_labels_rejected():
    with pytest.raises(ValueError, match="unique"):
        LabelTable(labels=(0, 4, 4), names=("bg", "a", "b"))


@pytest.mark.parametrize(
    ("labels", "names"),
    [((4, 0), ("a", "bg")), ((0, 4), ("bg",)), ((), ()), ((0, -3), ("bg", "a"))],
)
def test_bad_tables_rejected(labels, names):
    with pytest.raises(ValueError):
        LabelTable(labels=labels, names=names)


def test_bad_class_index_order_rejected(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("class_index\tlabel\tname\n0\t0\tbg\n2\t4\ta\n1\t11\tb\n")
    with pytest.raises(ValueError, match="class_index"):
        LabelTable.from_tsv(path)


def test_duplicate_labels_in_tsv_rejected(tmp_path):
    path = tmp_path / "dup.tsv"
    path.write_text("class_index\tlabel\tname\n0\t0\tbg\n1\t4\ta\n2\t4\tb\n")
    with pytest.raises(ValueError, match="unique"):
        LabelTable.from_tsv(path)


def test_missing_columns_rejected(tmp_path):
    path = tmp_path / "cols.tsv"
    path.write_text("index\tlabel\n0\t0\n")
    with pytest.raises(ValueError, match="columns"):
        LabelTable.from_tsv(path)


def test_a_table_file_named_like_a_shipped_table_is_found_under_base(tmp_path):
    # the file check used to look in the working directory, not under ``base``
    from brainseg.labels import resolve_label_table

    LabelTable(labels=(0, 4), names=("background", "CSF")).to_tsv(tmp_path / "miccai2012")
    assert resolve_label_table("miccai2012", base=tmp_path).num_classes == 2
    assert resolve_label_table("miccai2012", base=tmp_path / "elsewhere").num_classes == 135
