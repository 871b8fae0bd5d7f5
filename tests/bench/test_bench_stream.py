"""The stream benchmark runs end to end at a tiny size and reports what it measured for both peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testkit import subprocess_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_the_stream_benchmark_reports_both_peers(tmp_path: Path) -> None:
    command = [sys.executable, "bench/bench_stream.py", "--sizes", "3000", "--rows", "20"]
    env = subprocess_env()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[2]: line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 3,000")}
    assert set(rows) == {"synthmix MixedStream", "interleave_datasets + TRL pack_dataset"}
    assert rows["synthmix MixedStream"][6] == "0.3000"  # the token ratio, exact
    for row in rows.values():  # first batch (s), rows/s, rows, padding efficiency: measured, not left blank
        assert float(row[3]) > 0 and float(row[4].replace(",", "")) > 0 and 0 < float(row[7]) <= 1
