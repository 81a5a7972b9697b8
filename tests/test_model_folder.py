"""Shipped model folders and how --model names them."""

from __future__ import annotations

import pytest

from brainseg.cli.main import main
from brainseg.errors import InputError
from brainseg.model_folder import (
    SHIPPED_MODELS,
    default_model_dir,
    load_model_folder,
    resolve_model_dir,
    shipped_model_dir,
)


def test_every_shipped_model_loads():
    for name in SHIPPED_MODELS:
        model = load_model_folder(name)
        assert model.path == shipped_model_dir(name)
        assert model.labels.num_classes == {"deepnat": 26, "mixnet-tissue": 4}.get(name, 135)
        assert (model.path / "model_card.md").is_file()
    assert load_model_folder(None).path == default_model_dir() == shipped_model_dir("default")


def test_default_is_the_full_model_and_basenet_is_native():
    full, base = load_model_folder("default"), load_model_folder("basenet")
    assert full.reference is not None and set(full.network.inputs) == {"distances", "atlas", "patches_3d"}
    assert base.reference is None and not base.config.model.needs_reference


def test_a_folder_named_like_a_shipped_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("basenet") == shipped_model_dir("basenet")
    (tmp_path / "basenet").mkdir()
    assert resolve_model_dir("basenet").resolve() == (tmp_path / "basenet").resolve()
    with pytest.raises(InputError, match="not a model folder"):
        load_model_folder("basenet")


def test_unknown_model_name_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no shipped model named 'nope'"):
        shipped_model_dir("nope")
    assert main(["info", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "not a model folder" in err and "Traceback" not in err


def test_info_names_the_shipped_models(capsys):
    assert main(["info", "--model", "basenet"]) == 0
    out = capsys.readouterr().out
    assert "reference template" not in out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reference template" in out and "DistBranch" in out


def test_model_option_help_names_every_shipped_model():
    from brainseg.cli import MODEL_HELP

    for name in SHIPPED_MODELS:
        assert f"'{name}'" in MODEL_HELP
