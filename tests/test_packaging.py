"""The package installs into an environment that already has torch: pyproject.toml declares
ranges (the exact CPU pin lives in the Makefile's set-up), and its extras exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_torch_is_a_range_in_pyproject_and_pinned_only_by_the_makefile():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = next(d for d in project["dependencies"] if re.match(r"torch\b", d))
    assert "==" not in torch and ">=" in torch
    assert "torch==2.13.0" in (REPO / "Makefile").read_text()
    assert {"test", "plots", "bench"} <= set(project["optional-dependencies"])
