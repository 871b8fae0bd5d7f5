"""The one-shot GPU benchmark (`bench/bench_trainer.py --gpu`) as a lent GPU machine runs it (docs/gpu-bench.md):
the documented one-line command installs synthmix's wheel into a `--target` folder and runs the suite from it, here
with `--device cpu` at the tiny size: every configuration it would time there, the TRL peers, the correctness
run, the figures files, and synthmix imported from the folder, not the repository. `make gpu-wheels-size`, which
`make gpu-wheels` ends with, lists the wheels and refuses more than the limit. The suite's own estimate of its
duration (`Budget`) leaves out what would not fit."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import subprocess_env

REPO = Path(__file__).resolve().parents[2]
GPU_PAGE = REPO / "docs" / "gpu-bench.md"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_trainer", REPO / "bench" / "bench_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_command() -> str:
    """The one line docs/gpu-bench.md gives for the GPU machine (the Makefile's comment repeats it)."""
    (command,) = re.findall(r"```bash\n(python3 -m pip install [^\n]*)\n```", GPU_PAGE.read_text(encoding="utf-8"))
    return command


def test_the_documented_command_is_one_line_that_the_makefile_repeats() -> None:
    command = documented_command()
    assert len(command) < 2000 and "--target /tmp/site .whl/*.whl" in command and "--gpu" in command
    assert f"#   {command}\n" in (REPO / "Makefile").read_text(encoding="utf-8")


def test_gpu_sets_what_the_command_line_leaves_out() -> None:
    bench = load_bench()
    gpu = bench.parse_args(["--gpu"])
    assert (gpu.device, gpu.model, gpu.lora_r, gpu.target_modules, gpu.packing) == (
        "cuda", "qwen2.5-0.5b-arch", 16, "all-linear", "bfd"
    )  # fmt: skip
    assert gpu.suite and (gpu.warmup, gpu.steps, gpu.budget_s) == (3, 20, bench.GPU_BUDGET_S)
    cpu = bench.parse_args(["--gpu", "--device", "cpu", "--steps", "1", "--budget-s", "100"])
    assert (cpu.device, cpu.model, cpu.packing, cpu.steps, cpu.budget_s) == ("cpu", "tiny-llama", "bfd", 1, 100)
    plain = bench.parse_args([])
    assert (plain.device, plain.model, plain.lora_r, plain.packing, plain.budget_s) == (
        "cpu",
        "tiny-llama",
        8,
        "wrap",
        None,
    )


def test_the_budget_keeps_the_correctness_run_and_leaves_out_what_would_not_fit(monkeypatch) -> None:
    bench = load_bench()
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    budget = bench.Budget(100.0)
    assert budget.fits("ours")  # the first configuration always runs
    now[0] = 30.0
    budget.record("ours", 30.0, {"seconds": 10.0, "median_step_s": 0.1})  # set-up 20 s: correctness 2 x 20 + 10
    assert budget.correctness_s == pytest.approx(50.0)
    assert budget.estimate("trl-wrapped") == 30.0 and budget.fits("trl-wrapped") is False  # 30 + 30 + 50 > 100
    assert budget.projected(["ours"]) == pytest.approx(110.0) and budget.timeout(50.0) == 60.0
    budget.record("ours", 20.0, {"seconds": 10.0, "median_step_s": 0.1})  # a quicker set-up: the least estimate
    assert budget.correctness_s == pytest.approx(30.0) and budget.fits("ours")
    assert bench.Budget(None).fits("ours") and bench.Budget(None).timeout() is None


def size_check(folder: Path, max_mib: int) -> subprocess.CompletedProcess:
    command = ["make", "-s", "gpu-wheels-size", f"GPU_WHEELS_DIR={folder}", f"GPU_WHEELS_MAX_MIB={max_mib}"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_wheel_folder_is_listed_and_refused_past_its_limit(tmp_path: Path) -> None:
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"x" * 700_000)
    (tmp_path / "b-1.0-py3-none-any.whl").write_bytes(b"x" * 700_000)
    done = size_check(tmp_path, 2)
    assert done.returncode == 0, done.stderr
    assert (
        "700000  a-1.0-py3-none-any.whl" in done.stdout and "total: 1400000 bytes (1 MiB; at most 2 MiB)" in done.stdout
    )
    done = size_check(tmp_path, 1)
    assert done.returncode != 0 and "over 1 MiB" in done.stderr
    assert size_check(tmp_path / "missing", 60).returncode != 0


def synthmix_wheel(folder: Path) -> Path:
    """synthmix's wheel, built from a copy of its sources (the repository's build/ is left to other builds)."""
    source = folder / "source"
    for name in ("synthmix", "trainer", "data_mixers", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(folder)]
    done = subprocess.run([*command, str(source)], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = folder.glob("synthmix-*.whl")
    return wheel


@pytest.mark.slow
def test_the_gpu_command_installs_synthmix_into_a_folder_and_runs_the_suite_from_it(tmp_path: Path) -> None:
    """The documented command with the wheel folder, the target and the interpreter swapped for this machine's,
    and `--device cpu` at the tiny size; the other libraries come from this environment."""
    wheels, target, out = tmp_path / "wheels", tmp_path / "site", tmp_path / "out"
    wheels.mkdir()
    synthmix_wheel(wheels)
    command = documented_command().replace(".whl/*.whl", f"{wheels}/*.whl").replace("/tmp/site", str(target))
    command = command.replace("python3 ", f"{sys.executable} ")
    command += " --device cpu --model tiny-llama --batch 2 --seq-len 64 --warmup 1 --steps 1 --budget-s 3600"
    env = subprocess_env(OUT=str(out))
    done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads((out / "figures-cpu.json").read_text())
    installed = str(target / "synthmix")
    assert figures["machine"]["synthmix"].startswith(installed), figures["machine"]["synthmix"]
    runs = {(r["trainer"], r["attention"], r["loss"]): r for r in figures["runs"]}
    assert set(runs) == {("ours", "sdpa", "chunked"), ("ours", "sdpa", "full"), ("trl-wrapped", "sdpa", "full"),
                         ("trl-bfd", "sdpa", "full")}  # fmt: skip
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in runs.values())
    assert all(r["synthmix"].startswith(installed) for r in runs.values())  # every worker imported the wheel's
    assert figures["args"]["packing"] == "bfd" and figures["args"]["target_modules"] == "all-linear"
    checked = figures["correctness"]
    assert checked["ok"] and checked["steps"] == 60 and checked["resume_bit_identical"], checked
    assert figures["timing"]["budget_s"] == 3600 and len(figures["timing"]["config_seconds"]) == 4
    table = (out / "figures-cpu.md").read_text()
    assert "| ours | sdpa | chunked |" in table and "fastest ours" in table and "correctness run" in table
    assert "the whole run:" in table and "libraries: torch" in done.stdout
