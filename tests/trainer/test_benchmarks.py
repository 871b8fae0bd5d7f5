"""collapse.benchmarks: an lm-evaluation-harness task, offline (a task YAML over a JSONL written here), scored at
every eval on the model being trained; under two processes, and as a sweep's tolerance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testkit import BENCHMARK_TASK as TASK
from testkit import run_config, subprocess_env, write_benchmark_task

from synthmix.errors import ConfigError
from synthmix.trainer.collapse.benchmarks import benchmark_values
from synthmix.trainer.config import load_config
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.experiments.sweep import Sweep, breaks_tolerance, check_sweep, verdict
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.loop import train

ACC = f"benchmark.{TASK}.acc"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark_task(tmp_path_factory.mktemp("tasks"))


def overrides(task_dir: Path, *more: str) -> list[str]:
    return ["--collapse.benchmarks.tasks", f"[{TASK}]", "--collapse.benchmarks.include_path", str(task_dir),
            "--collapse.benchmarks.limit", "6", "--train.max_steps", "3", "--checkpoint.every_steps", "null",
            *more]  # fmt: skip


@pytest.mark.slow
def test_benchmark_scores_are_in_every_eval_and_leave_training_unchanged(make_config, task_dir, tmp_path) -> None:
    path = make_config()
    out = train(run_config(path, tmp_path / "with", *overrides(task_dir)))
    evals = [e for e in read_events(out / METRICS) if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3]
    for event in evals:
        assert 0.0 <= event[ACC] <= 1.0 and event["benchmark_seconds"] > 0
    # lm-eval seeds every generator and switches the model to eval mode; the run must not notice.
    without = train(run_config(path, tmp_path / "without", *overrides(task_dir)[6:]))
    adapter = "adapter/adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (without / adapter).read_bytes()
    report = (out / "report.html").read_text()
    assert ACC in report and "Falls under collapse: the model does worse on this lm-evaluation-harness task" in report


@pytest.mark.slow
def test_two_processes_score_on_the_main_one_and_end_without_a_hang(make_config, task_dir, tmp_path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "synthmix", "train", "--config", str(make_config()), "--output_dir", str(out),
               *overrides(task_dir)]  # fmt: skip
    done = subprocess.run(command, env=subprocess_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    events = read_events(out / METRICS)
    assert [e["world_size"] for e in events if e["event"] == "config"] == [2]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3] and all(0.0 <= e[ACC] <= 1.0 for e in evals)


def test_lm_eval_results_become_event_keys() -> None:
    results = {
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25},
        "gsm8k": {"exact_match,strict-match": 0.125, "exact_match_stderr,strict-match": "N/A", "samples": 8},
    }
    assert benchmark_values(results) == {
        "benchmark.arc_easy.acc": 0.5,
        "benchmark.arc_easy.acc_norm": 0.25,
        "benchmark.gsm8k.exact_match.strict-match": 0.125,
    }


def test_bad_benchmark_settings_are_one_line_errors(make_config, task_dir: Path, tmp_path: Path) -> None:
    path = make_config()
    with pytest.raises(ConfigError, match=r"collapse.benchmarks.limit: must be at least 1, got 0"):
        load_config(path, ["--collapse.benchmarks.limit", "0"])
    rule = "[{indicator: benchmark.other.acc, direction: down, threshold: 0.1}]"
    with pytest.raises(ConfigError, match=r"names task 'other', which collapse.benchmarks.tasks does not list"):
        load_config(path, [*overrides(task_dir), "--collapse.rules", rule])
    with pytest.raises(TrainerError, match=r"collapse.benchmarks: .* FSDP shards the weights over all of them"):
        train(run_config(path, tmp_path / "fsdp", *overrides(task_dir), "--train.sharding", "fsdp2"))


@pytest.mark.slow  # lm-eval indexes its ~15,000 tasks to look for it
def test_an_unknown_task_is_one_line(make_config, task_dir: Path, tmp_path: Path) -> None:
    path = make_config()
    with pytest.raises(TrainerError, match=r"collapse.benchmarks.tasks: 'nope' not among lm-eval's tasks or those"):
        train(run_config(path, tmp_path / "run", *overrides(task_dir), "--collapse.benchmarks.tasks", "[nope]"))


def test_a_sweep_takes_a_benchmark_tolerance_higher_is_better(make_config, task_dir: Path, tmp_path: Path) -> None:
    config = load_config(make_config(), overrides(task_dir))
    sweep = Sweep(config=config, run_dir=tmp_path, ratios=[0.0, 0.5], seeds=[0], steps=3, tolerances={ACC: 0.1})
    check_sweep(sweep)
    with pytest.raises(ConfigError, match=r"task 'arc_easy' is not in collapse.benchmarks.tasks"):
        check_sweep(Sweep(config=config, run_dir=tmp_path, ratios=[0.0, 0.5], seeds=[0], tolerances={
            "benchmark.arc_easy.acc": 0.02}))  # fmt: skip
    assert breaks_tolerance(ACC, -0.2, 0.1) and not breaks_tolerance(ACC, +0.2, 0.1)
    # Accuracy 0.5 at ratio 0; 0.48 at 0.25 (-4%: within 10%); 0.4 at 0.5 (-20%): 0.25 is the safe ratio.
    rows = [{"ratio": r, "seed": 0, "run": str(r), ACC: acc} for r, acc in ((0.0, 0.5), (0.25, 0.48), (0.5, 0.4))]
    result = verdict(rows, {ACC: 0.1})
    assert result["safe_ratio"] == 0.25 and result["limited_by"]["indicator"] == ACC
