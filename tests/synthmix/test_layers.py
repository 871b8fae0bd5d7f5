"""The layers of pyproject.toml's import-linter contract hold: every import points down (imports inside functions
count), checked on the layout the wheel installs (scripts/check_layers.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_import_points_down() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_layers.py")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "every import points down KEPT" in done.stdout
    analyzed = int(re.search(r"Analyzed (\d+) files", done.stdout)[1])  # the mapped folders were read too
    modules = sum(
        1 for folder in ("synthmix", "trainer", "data_mixers", "configs") for _ in (REPO / folder).rglob("*.py")
    )
    assert analyzed == modules
