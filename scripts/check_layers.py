"""Check import-linter's contracts (`[tool.importlinter]` in pyproject.toml) on synthmix as it installs.

The source folders trainer/, data_mixers/ and configs/ install as synthmix.trainer, synthmix.data_mixers and
synthmix.configs (setup.py), which an editable install maps with an import hook that import-linter's graph
builder cannot follow. So the installed layout is laid out with links in a temporary folder, and import-linter
reads it there: the same files, the layout a wheel has.

    python scripts/check_layers.py          # exit 0 when every contract is kept (make lint runs it)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"trainer": "trainer", "data_mixers": "data_mixers", "configs": "configs"}  # as setup.py maps them


def installed_layout(root: Path) -> Path:
    """root/synthmix: links to synthmix/'s own files and to the mapped folders."""
    package = root / "synthmix"
    package.mkdir()
    for entry in (REPO / "synthmix").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(REPO / folder)
    return root


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="synthmix-layers-") as tmp:
        root = installed_layout(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(root)}  # found before the editable install's import hook
        lint = (
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(sys.argv[1], no_cache=True, no_logo=True))"
        )
        command = [sys.executable, "-c", lint, str(REPO / "pyproject.toml")]
        return subprocess.run(command, cwd=root, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
