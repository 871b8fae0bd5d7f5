"""The front door: the README stays a front page whose links resolve and whose quickstart runs as written (with
the hub model swapped for a tiny one of the same name, tests/conftest.py's `hub_env`); the documentation site
builds with `mkdocs build --strict` (no broken link or anchor) and its generated reference lists every config
key that `synthmix train --help` lists and every command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthmix.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def section(markdown: str, title: str) -> str:
    """The text of the `## title...` section, up to the next `## ` heading."""
    start = markdown.index(f"\n## {title}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    assert len(README.splitlines()) <= 300
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://", "mailto:"))]
    assert local and [t for t in local if not (REPO / t).exists()] == []


def test_the_quickstart_shows_the_config_it_runs() -> None:
    (shown,) = code_blocks(section(README, "Quickstart"), "yaml")
    config = (REPO / "configs" / "chat-sft.yaml").read_text(encoding="utf-8")
    assert shown == "".join(line for line in config.splitlines(keepends=True) if not line.startswith("#"))


@pytest.mark.slow
def test_the_quickstart_runs_as_written(hub_env: dict[str, str], tmp_path: Path) -> None:
    """Every `synthmix` line of the quickstart, in order, in a fresh copy of configs/ and data/."""
    (commands,) = code_blocks(section(README, "Quickstart"), "bash")
    lines = [line.split("#")[0].strip() for line in commands.splitlines() if line.startswith("synthmix ")]
    assert [line.split()[1] for line in lines] == ["inspect", "train", "report"]
    for folder in ("configs", "data"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    runner = REPO / "tests" / "run_commands.py"
    done = subprocess.run(
        [sys.executable, str(runner), *lines], cwd=tmp_path, env=hub_env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    run = tmp_path / "runs" / "chat-sft"
    assert done.stdout.strip().splitlines()[-1] == "runs/chat-sft/report.html"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 2 and all(abs(e["realized_synthetic_ratio"] - 0.3) < 0.01 for e in epochs)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation site as `make docs` builds it (strict: a warning, a broken link or anchor, fails)."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    return out


def test_the_config_reference_lists_every_key_that_train_help_lists(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    keys = re.findall(r"^  --([\w.\[\]]+)  \(", capsys.readouterr().out, flags=re.M)
    assert len(keys) > 100
    page = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    assert [key for key in keys if f"<code>{key}</code>" not in page] == []


def test_the_command_reference_has_every_command(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert [name for name in COMMANDS if f"usage: synthmix {name}" not in page] == []
