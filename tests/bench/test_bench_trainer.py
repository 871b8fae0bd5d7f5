"""The one-shot GPU benchmark (`make bench-gpu`) runs its whole suite on CPU with the tiny model: every
configuration it would time there, the TRL peers, the correctness run, and the figures files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import subprocess_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_suite_runs_end_to_end_on_cpu_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    command = [sys.executable, "bench/bench_trainer.py", "--suite", "--device", "cpu", "--model", "tiny-llama"]
    command += ["--batch", "2", "--seq-len", "64", "--warmup", "1", "--steps", "1", "--out", str(out)]
    env = subprocess_env()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    runs = {(r["trainer"], r["attention"], r["loss"]): r for r in figures["runs"]}
    assert set(runs) == {("ours", "sdpa", "chunked"), ("ours", "sdpa", "full"), ("trl-wrapped", "sdpa", "full"),
                         ("trl-bfd", "sdpa", "full")}  # fmt: skip
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in runs.values())
    checked = figures["correctness"]
    assert checked["ok"] and checked["steps"] == 60 and checked["resume_bit_identical"], checked
    table = out.with_suffix(".md").read_text()
    assert "| ours | sdpa | chunked |" in table and "fastest ours" in table and "correctness run" in table
