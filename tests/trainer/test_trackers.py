"""train.report_to: a tiny run logs to TensorBoard, MLflow (a SQLite store named by MLFLOW_TRACKING_URI) and W&B
(offline) at once; what TensorBoard and MLflow recorded is read back and equals metrics.jsonl. MLflow with no
variable at all writes MLflow's default store in the working directory. Bad tracker names are one-line errors.
Only variables a user sets are set here: MLFLOW_TRACKING_URI and WANDB_MODE=offline."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthmix.errors import ConfigError, UserError
from synthmix.trainer.config import load_config
from synthmix.trainer.reporting.events import METRICS, TRACKER_IDS, read_events
from synthmix.trainer.runtime.loop import train

RULE = "[{indicator: real_ppl, direction: down, threshold: 0.0001, action: warn}]"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, write_tiny_config) -> Path:
    """5 steps, a resume refused (other data), then a resume to step 8: what every tracker recorded of it."""
    root = tmp_path_factory.mktemp("trackers")
    path = write_tiny_config(root)
    overrides = ["--output_dir", str(root / "run"), "--collapse.rules", RULE,
                 "--train.report_to", "[tensorboard, mlflow, wandb]"]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("WANDB_MODE", "offline")
        train(load_config(path, [*overrides, "--train.max_steps", "5"]))
        with pytest.raises(UserError, match="other data"):  # after the trackers started: they must be finished
            train(
                load_config(path, [*overrides, "--train.max_steps", "8", "--data.filters.min_tokens", "40"]), "latest"
            )
        import mlflow

        (root / "status-after-refusal").write_text(str(mlflow.active_run()))
        train(load_config(path, [*overrides, "--train.max_steps", "8"]), "latest")
    return root


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


@pytest.mark.slow
def test_tensorboard_recorded_every_step_metric_and_eval_indicator(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = read_events(tracked / "run" / METRICS)
    (folder,) = (tracked / "run" / "tensorboard").iterdir()  # the project's folder: tensorboard/synthmix
    board = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    board.Reload()
    loss = [(s.step, s.value) for s in board.Scalars("train/loss")]
    assert loss == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in of(events, "train")]
    assert [s.step for s in board.Scalars("eval/real_ppl")] == [e["step"] for e in of(events, "eval")]
    assert [s.step for s in board.Scalars("alert/value")] == [a["step"] for a in of(events, "alert")]
    samples = board.Tensors("samples/text_summary")  # each eval's samples as a Markdown table
    assert [s.step for s in samples] == [e["step"] for e in of(events, "eval")]
    assert b"| step | sample | source | index | prompt | completion |" in samples[0].tensor_proto.string_val[0]


@pytest.mark.slow
def test_mlflow_recorded_the_metrics_and_the_config_as_parameters(
    tracked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    events = read_events(tracked / "run" / METRICS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracked / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["synthmix"], output_format="list")  # the resumes continued it
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.metrics["eval/real_ppl"] == pytest.approx(of(events, "eval")[-1]["real_ppl"], rel=1e-9)
    client = MlflowClient()
    assert (tracked / "status-after-refusal").read_text() == "None"  # the refused resume ended its run
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [
        (e["step"], pytest.approx(e["loss"], rel=1e-9)) for e in of(events, "train")
    ]
    evals = client.get_metric_history(run.info.run_id, "eval/real_ppl")
    assert [m.step for m in evals] == [e["step"] for e in of(events, "eval")]
    assert len(client.get_metric_history(run.info.run_id, "alert/change")) == len(of(events, "alert")) > 0
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert artifacts == sorted(f"samples/step-{e['step']}.jsonl" for e in of(events, "eval"))
    params = run.data.params
    assert params["train.learning_rate"] == "0.01" and params["data.synthetic_ratio"] == "0.3"
    assert params["lora.target_modules"] == '["q_proj", "k_proj", "v_proj", "o_proj"]'


@pytest.mark.slow
def test_mlflow_with_no_variable_writes_its_default_store_in_the_working_directory(
    tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a user who only adds mlflow to report_to gets: a run in sqlite:///mlflow.db beside them, where
    `mlflow ui` looks by default, and the command says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    command = [sys.executable, "-m", "synthmix", "train", "--config", str(make_config()), "--output_dir", "run"]
    command += ["--train.max_steps", "2", "--train.report_to", "[mlflow]"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert "mlflow tracker: run " in done.stdout and f"in {store} (mlflow ui --backend-store-uri" in done.stdout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["synthmix"], output_format="list")
    events = read_events(tmp_path / "run" / METRICS)
    assert run.data.metrics["train/loss"] == pytest.approx(of(events, "train")[-1]["loss"], rel=1e-9)
    assert {"eval/real_ppl", "eval/distinct_2", "eval/tail_mass"} <= set(run.data.metrics)
    (config,) = of(events, "config")
    assert config["trackers"]["mlflow"].startswith(f"run {run.info.run_id} of experiment 'synthmix' in {store}")


@pytest.mark.slow
def test_wandb_ran_offline_into_the_run_folder_and_each_resume_continued_its_run(tracked: Path) -> None:
    # wandb 0.31 reads its offline run files only from its Go core, so only the run's own files are checked here.
    starts = sorted((tracked / "run" / "wandb").glob("offline-run-*"))  # offline-run-TIME-ID[-N], one per start
    ids = {start.name.split("-")[3] for start in starts}
    assert len(starts) == 3 and ids == {json.loads((tracked / "run" / TRACKER_IDS).read_text())["wandb"]}
    (record,) = starts[0].glob("run-*.wandb")
    assert record.stat().st_size > 1000


@pytest.mark.slow
def test_wandb_without_a_login_is_one_line_saying_how_to_log_in_or_run_offline(tmp_path: Path, make_config) -> None:
    """A fresh process on a machine never logged in to W&B (no variable, no ~/.netrc, no W&B settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "synthmix", "train", "--config", str(make_config()), "--output_dir", "run"]
    command += ["--train.report_to", "[wandb]"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: train.report_to: starting wandb tracker(s) failed: ")
    assert line.endswith("log in with `wandb login` (or set WANDB_API_KEY), or run offline with WANDB_MODE=offline")


@pytest.mark.slow
def test_none_logs_to_metrics_jsonl_only(tmp_path: Path, make_config) -> None:
    overrides = ["--output_dir", str(tmp_path / "run"), "--train.max_steps", "2", "--train.report_to", "[none]"]
    train(load_config(make_config(), overrides))
    assert (tmp_path / "run" / METRICS).is_file() and not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[mlfow]", "train.report_to: unknown tracker 'mlfow' (did you mean 'mlflow'?)"),
        ("[none, tensorboard]", "train.report_to: 'none' means no tracker, so it comes alone"),
        ("[aim]", "train.report_to: aim is not installed; pip install 'aim>=3.29'"),
    ],
)
def test_bad_tracker_settings_are_one_line_errors(
    make_config, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aim" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        load_config(make_config(), ["--train.report_to", value])
    assert str(err.value).startswith(message)
