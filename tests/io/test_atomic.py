"""Atomic writes leave either the old file or the complete new one, never a temp file."""

from __future__ import annotations

import pytest

from brainseg.io.atomic import atomic_path, atomic_write_text


def test_success_replaces_and_cleans(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_text_is_utf8_whatever_the_locale(tmp_path, monkeypatch):
    # structure names are not all ASCII; the file must not depend on the locale's encoding
    import locale

    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "latin-1")
    target = tmp_path / "names.tsv"
    atomic_write_text(target, "Hippocampus – Ammon’s horn\n")
    assert target.read_bytes().decode("utf-8") == "Hippocampus – Ammon’s horn\n"


def test_an_os_error_without_errno_keeps_its_message(tmp_path):
    with pytest.raises(OSError, match="quota exceeded"):
        with atomic_path(tmp_path / "out.txt"):
            raise OSError("quota exceeded")
    assert list(tmp_path.iterdir()) == []
