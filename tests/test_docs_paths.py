"""The files the documentation, configs, benchmarks and docstrings name exist (a renamed benchmark left a stale name once)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Repository paths as the text names them: a benchmark script, a config or table, a docs page or figure.
NAMED_PATH = re.compile(
    r"(?<![\w/.-])((?:benchmarks/[\w-]+\.py)|(?:configs/[\w/-]+\.(?:yaml|csv|tsv))|(?:docs/[\w/.-]+\.(?:md|png|csv|json)))"
)
#: Markdown links to a relative target: ``[text](target)`` or ``[text](target#anchor)``.
MARKDOWN_LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")


def _texts() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder, pattern in (("src", "*.py"), ("benchmarks", "*.py"), ("configs", "*.yaml"), ("tests", "*.py")):
        files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]  # not the stale name below


def test_named_repository_paths_exist():
    if not (ROOT / "docs").is_dir():
        pytest.skip("not a source checkout: docs/ is absent")
    missing = []
    for path in _texts():
        for name in NAMED_PATH.findall(path.read_text(encoding="utf-8")):
            if not (ROOT / name.rstrip(".")).exists():
                missing.append(f"{path.relative_to(ROOT)} names {name}")
    assert not missing, "\n".join(missing)


def test_markdown_links_resolve():
    if not (ROOT / "docs").is_dir():
        pytest.skip("not a source checkout: docs/ is absent")
    missing = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
            if not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)} links to {target}")
    assert not missing, "\n".join(missing)


def test_the_pattern_finds_a_stale_name(tmp_path):
    # the check above would pass vacuously if the pattern matched nothing
    text = "see ``benchmarks/deepnat_segment.py`` and [speed](docs/speed.md), configs/mixnet_brats/v1.yaml"
    assert NAMED_PATH.findall(text) == [
        "benchmarks/deepnat_segment.py",
        "docs/speed.md",
        "configs/mixnet_brats/v1.yaml",
    ]
    assert not (ROOT / "benchmarks/deepnat_segment.py").exists()
