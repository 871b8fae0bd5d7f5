"""examples/sft_with_synthmix.py runs as its docstring says, on the example chats, with the hub model swapped for
a tiny one of the same name (tests/conftest.py's `hub_env`): the stream's epoch and the collapse evals land in
the run folder next to TRL's own checkpoints."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sft_with_synthmix.py"


def documented_command() -> str:
    """The first command of the example's docstring, its continuation lines joined."""
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("python examples/"))
    command = []
    for line in lines[start:]:
        command.append(line.strip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            return " ".join(command)
    raise AssertionError("the command never ends")


def test_the_example_adds_the_exact_mix_and_the_collapse_hook_to_a_users_sft_trainer(
    hub_env: dict[str, str], tmp_path: Path
) -> None:
    shutil.copytree(REPO / "data", tmp_path / "data")
    command = shlex.split(documented_command())
    assert command[:2] == ["python", "examples/sft_with_synthmix.py"]
    # One epoch of shorter rows: the documented run's four micro-batches of 4 x 2048 tokens take 3.5 s each here.
    command = [sys.executable, str(EXAMPLE), *command[2:], "--epochs", "1", "--seq_len", "256"]
    done = subprocess.run(command, cwd=tmp_path, env=hub_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    run = tmp_path / "runs" / "my-sft"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (epoch,) = [e for e in events if e["event"] == "epoch"]
    assert abs(epoch["realized_synthetic_ratio"] - 0.3) < 0.01
    assert [e["step"] for e in events if e["event"] == "eval"] == [0, epoch["step"]]
    assert (run / "report.html").is_file() and (run / "adapter" / "adapter_config.json").is_file()
