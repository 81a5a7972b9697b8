"""Installing brainseg (deepbet included) keeps the pinned CPU torch and pulls no CUDA packages."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_installed_torch_is_the_pinned_one_and_no_cuda_was_pulled():
    pinned = re.search(r'"torch==([^"]+)"', PYPROJECT.read_text()).group(1)
    assert metadata.version("torch").split("+")[0] == pinned
    cuda = sorted(
        d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].lower().startswith("nvidia-")
    )
    assert not cuda, f"CUDA packages were installed: {cuda}"


def test_deepbet_asks_for_no_other_torch():
    requires = metadata.requires("deepbet") or []
    torch_req = [r for r in requires if r.split()[0].split(">")[0].split("=")[0].strip().lower() == "torch"]
    assert torch_req and all("==" not in r and "<" not in r for r in torch_req), torch_req  # a lower bound only
