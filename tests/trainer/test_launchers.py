"""synthmix.trainer.experiments.launchers without a GPU or a cluster: how the visible GPUs are sliced, the
command and environment each run gets on its slice, the queue of runs waiting for a free slice (real processes,
a stand-in command), and the one-line errors of flags that do not fit the launcher or the machine. The submitit
launcher end to end (its local cluster) is in test_sweep.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from synthmix.cli import main as synthmix
from synthmix.errors import ConfigError
from synthmix.trainer.experiments.launchers import (
    Launcher,
    LauncherError,
    Task,
    check_launcher,
    plan_slices,
    run_on_slices,
    slice_command,
)


def test_the_visible_gpus_are_cut_into_disjoint_slices_no_more_than_the_runs() -> None:
    gpus = ["0", "1", "2", "3", "4"]
    assert plan_slices(gpus, 2, runs=7) == [["0", "1"], ["2", "3"]]  # GPU 4 idles: a slice is 2 GPUs
    assert plan_slices(gpus, 1, runs=3) == [["0"], ["1"], ["2"]]  # no slice without a run to take it
    assert plan_slices(["GPU-a", "GPU-b"], 2, runs=4) == [["GPU-a", "GPU-b"]]  # UUIDs as CUDA_VISIBLE_DEVICES names
    assert plan_slices(["3", "5", "7"], 1, runs=9) == [["3"], ["5"], ["7"]]  # the parent's own ids, not 0..n-1
    with pytest.raises(ConfigError, match=r"--gpus-per-run 4: only 2 GPU\(s\) visible \(0,1\)"):
        plan_slices(["0", "1"], 4, runs=1)
    with pytest.raises(ConfigError, match="must be at least 1"):
        plan_slices(["0"], 0, runs=1)


def test_a_run_on_one_gpu_is_one_process_and_on_several_a_torchrun(tmp_path: Path) -> None:
    task = Task("ratio-0-seed-0", tmp_path, ("train", "--config", "c.yaml"), resume_from=tmp_path / "checkpoints")
    argv, env = slice_command(task, ["3"])
    assert argv == [sys.executable, "-m", "synthmix", "train", "--config", "c.yaml"]
    assert env == {"CUDA_VISIBLE_DEVICES": "3"}
    (tmp_path / "checkpoints").mkdir()  # an interrupted run: it resumes
    argv, env = slice_command(task, ["4", "5"])
    assert argv == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "synthmix", "train", "--config", "c.yaml", "--resume", "latest",
    ]  # fmt: skip
    assert env == {"CUDA_VISIBLE_DEVICES": "4,5"}


RECORD = """
import json, os, sys, time
start = time.time()
time.sleep(0.3)
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"gpus": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()}) + "\\n")
sys.exit(int(sys.argv[2]))
"""


def stand_in(codes: dict[str, int], record: Path):
    """In place of `synthmix train`: a process that records its slice and its time span, and exits with a code."""

    def command(task: Task, gpus: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        _, env = slice_command(task, gpus)  # the environment a real run would get
        return [sys.executable, "-c", RECORD, str(record), str(codes.get(task.name, 0))], env

    return command


def test_runs_queue_for_a_free_slice_and_never_share_one(tmp_path: Path) -> None:
    tasks = [Task(f"run-{i}", tmp_path / f"run-{i}", ("train",)) for i in range(5)]
    record = tmp_path / "record.jsonl"
    run_on_slices(tasks, [["0", "1"], ["2", "3"]], stand_in({}, record), poll_s=0.05)
    spans = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(spans) == 5 and {s["gpus"] for s in spans} == {"0,1", "2,3"}
    for gpus in ("0,1", "2,3"):
        mine = sorted((s["start"], s["end"]) for s in spans if s["gpus"] == gpus)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(mine, mine[1:]))  # one run at a time
    assert all((tmp_path / f"run-{i}" / "launch.log").is_file() for i in range(5))


def test_after_a_failed_run_no_other_starts_and_the_error_names_its_log(tmp_path: Path) -> None:
    tasks = [Task(f"run-{i}", tmp_path / f"run-{i}", ("train",)) for i in range(4)]
    record = tmp_path / "record.jsonl"
    with pytest.raises(LauncherError, match=f"run-0: exit 3; see {tmp_path / 'run-0' / 'launch.log'}"):
        run_on_slices(tasks, [["0"]], stand_in({"run-0": 3}, record), poll_s=0.05)
    assert len(record.read_text().splitlines()) == 1  # runs 1-3 never started


def test_submitit_missing_is_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    with pytest.raises(ConfigError, match=r"--launcher submitit needs submitit: pip install .*submitit>=1\.5\.4"):
        check_launcher(Launcher(kind="submitit"), jobs=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus-per-run", "1"], "--gpus-per-run 1: no GPU is visible here"),
        (["--gpus-per-run", "-1"], "--gpus-per-run: must be at least 0"),
        (["--submitit.partition", "gpu"], "--submitit.partition: only with --launcher submitit"),
        (["--no-wait"], "--no-wait: only with --launcher submitit"),
        (["--launcher", "submitit", "--gpus-per-run", "2"], "--gpus-per-run: for --launcher local"),
        (["--launcher", "submitit", "--submitit.slurm_additional_parameters", "[1]"], "a JSON object expected"),
        (["--launcher", "submitit", "--submitit.time", "0"], "--submitit.time: must be at least 1"),
        (["--launcher", "submitit", "--submitit.cluster", "local", "--submitit.nodes", "2"], "has one node"),
    ],
)
def test_launcher_flags_that_do_not_fit_are_one_line_errors(
    args: list[str], message: str, make_config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, even where a GPU is
    command = ["sweep", "--config", str(make_config()), "--ratios", "0,0.5", *args]
    assert synthmix(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
