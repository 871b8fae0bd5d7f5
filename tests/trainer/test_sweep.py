"""synthmix.trainer.experiments.sweep: the verdict on recorded runs (by hand), and a tiny sweep end to end (equal
steps, skipping finished runs, runs side by side in processes, as submitit jobs collected after the command
exited, the files it writes, bad input)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from testkit import subprocess_env

from synthmix.cli import main as synthmix
from synthmix.errors import ConfigError
from synthmix.trainer.collapse.indicators import relative_change
from synthmix.trainer.experiments.sweep import DEFAULT_TOLERANCES, breaks_tolerance, verdict
from synthmix.trainer.reporting.events import METRICS, read_events


def rows(values: dict[float, list[dict[str, float]]]) -> list[dict]:
    """Recorded final evals: {ratio: [indicators of seed 0, of seed 1, ...]}."""
    return [
        {"ratio": ratio, "seed": seed, "run": f"ratio-{ratio}-seed-{seed}", **indicators}
        for ratio, per_seed in values.items()
        for seed, indicators in enumerate(per_seed)
    ]


def healthy(real_ppl: float = 100.0, distinct_2: float = 0.8, tail_mass: float = 0.1) -> dict[str, float]:
    return {"real_ppl": real_ppl, "distinct_2": distinct_2, "tail_mass": tail_mass}


def test_the_safe_ratio_is_the_last_before_the_first_broken_tolerance() -> None:
    recorded = rows({
        0.0: [healthy(99), healthy(101)],                        # anchor: real_ppl mean 100
        0.25: [healthy(102), healthy(104)],                      # +3%: within 5%
        0.5: [healthy(104, distinct_2=0.7), healthy(104)],       # distinct_2 mean 0.75: -6.25%, past 5%
        0.75: [healthy(101), healthy(101)],                      # fine again, but the search has stopped
    })  # fmt: skip
    result = verdict(recorded, DEFAULT_TOLERANCES)
    assert result["safe_ratio"] == 0.25
    assert result["limited_by"] == {
        "indicator": "distinct_2", "ratio": 0.5, "change": pytest.approx(-0.0625), "tolerance": 0.05
    }  # fmt: skip
    assert result["message"] == "safe ratio: 0.25; at ratio 0.5 distinct_2 moved -6.3% from ratio 0 (tolerance 5%)"
    assert result["per_ratio"]["0.25"]["real_ppl"] == {"mean": 103.0, "min": 102.0, "max": 104.0,
                                                       "change": pytest.approx(0.03)}  # fmt: skip
    assert result["tolerances"] == DEFAULT_TOLERANCES


def test_the_limiting_indicator_is_the_one_furthest_past_its_tolerance() -> None:
    # real_ppl +6% (1.2x its 5%) and tail_mass -20% (2x its 10%) at the same ratio: tail_mass limits.
    recorded = rows({0.0: [healthy()], 0.5: [healthy(106, tail_mass=0.08)]})
    assert verdict(recorded, DEFAULT_TOLERANCES)["limited_by"]["indicator"] == "tail_mass"


def test_no_ratio_safe_and_every_ratio_safe_are_said_so() -> None:
    none = verdict(rows({0.0: [healthy()], 0.25: [healthy(110)], 0.5: [healthy()]}), DEFAULT_TOLERANCES)
    assert none["safe_ratio"] is None and none["limited_by"]["ratio"] == 0.25
    assert none["message"].startswith("no ratio is safe: at ratio 0.25 real_ppl moved +10.0%")
    every = verdict(rows({0.0: [healthy()], 0.25: [healthy(96)], 0.9: [healthy(104)]}), DEFAULT_TOLERANCES)
    assert every["safe_ratio"] == 0.9 and every["limited_by"] is None
    assert every["message"] == "every ratio tried is safe: up to 0.9, no indicator moved past its tolerance"


def test_the_good_direction_never_breaks_a_tolerance_and_a_directionless_one_breaks_both_ways() -> None:
    assert not breaks_tolerance("real_ppl", -0.5, 0.05)  # lower perplexity is no sign of collapse
    assert not breaks_tolerance("distinct_2", +0.5, 0.05)
    assert breaks_tolerance("sample_base_ppl_mean", -0.2, 0.1) and breaks_tolerance("sample_base_ppl_mean", 0.2, 0.1)
    assert not breaks_tolerance("sample_base_ppl_mean", 0.05, 0.1)
    assert breaks_tolerance("distinct_2", relative_change(math.nan, 0.8), 0.05)  # a run that diverged is unsafe
    assert relative_change(0.3, 0.0) == 0.3  # from an anchor of 0: the absolute change, as alert rules do


def test_the_verdict_needs_the_ratio_0_runs_and_every_toleranced_indicator() -> None:
    with pytest.raises(ConfigError, match="need ratio 0"):
        verdict(rows({0.25: [healthy()]}), DEFAULT_TOLERANCES)
    with pytest.raises(ConfigError, match="run ratio-0.0-seed-0 has no vendi_score"):
        verdict(rows({0.0: [healthy()], 0.5: [healthy()]}), {"vendi_score": 0.1})


# ---------------------------------------------------------------------------------------------- end to end
# The tiny synthetic corpus repeats at ratio 0.6; one epoch of real text is the step budget.
REPEAT = {"data": {"allow_repeat": True}, "train": {"epochs": 1}}
STOP_RULE = "[{indicator: real_ppl, direction: up, threshold: 0.5, action: stop}]"


def evals(folder: Path) -> list[dict]:
    return [e for e in read_events(folder / METRICS) if e["event"] == "eval"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, write_tiny_config) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    config = write_tiny_config(root, REPEAT)
    command = ["sweep", "--config", str(config), "--ratios", "0,0.6", "--seeds", "0", "--run-dir", str(root / "s")]
    assert synthmix([*command, "--collapse.rules", STOP_RULE]) == 0
    return root / "s"


@pytest.mark.slow
def test_every_run_trains_the_same_number_of_steps_and_ends_with_an_eval(swept: Path) -> None:
    result = json.loads((swept / "verdict.json").read_text())
    steps = result["steps"]
    ratio_0 = [e for e in read_events(swept / "ratio-0-seed-0" / METRICS) if e["event"] == "epoch"]
    assert [e["epoch"] for e in ratio_0] == [1] and ratio_0[-1]["step"] == steps  # the ratio-0 run's plan
    lines = [json.loads(line) for line in (swept / "sweep.jsonl").read_text().splitlines()]
    assert [(line["ratio"], line["seed"]) for line in lines] == [(0.0, 0), (0.6, 0)]
    for line in lines:
        assert line["step"] == steps and line["status"] == "finished"
        final = evals(Path(line["run"]))[-1]
        assert final["step"] == steps and final["real_ppl"] == line["real_ppl"]
    # At 0.6 an epoch holds 2.5x the tokens: the run stops inside its first epoch, measured there.
    assert [e["epoch"] for e in evals(swept / "ratio-0.6-seed-0")] == [0, 1]
    # A stop rule only warns in a sweep: every run reached its step budget whatever fired.
    config = next(e for e in read_events(swept / "ratio-0-seed-0" / METRICS) if e["event"] == "config")["config"]
    assert [r["action"] for r in config["collapse"]["rules"]] == ["warn"]


@pytest.mark.slow
def test_the_verdict_and_the_page_are_written(swept: Path) -> None:
    result = json.loads((swept / "verdict.json").read_text())
    assert set(result) >= {"safe_ratio", "limited_by", "tolerances", "message", "per_ratio", "steps", "seeds"}
    lines = [json.loads(line) for line in (swept / "sweep.jsonl").read_text().splitlines()]
    assert {k: result[k] for k in ("safe_ratio", "limited_by")} == {
        k: verdict(lines, DEFAULT_TOLERANCES)[k] for k in ("safe_ratio", "limited_by")
    }  # the verdict written is the verdict of the runs written
    assert result["tolerances"] == DEFAULT_TOLERANCES
    page = (swept / "sweep.html").read_text()
    assert "<h2>Verdict</h2>" in page and result["message"].split(":")[0] in page
    assert page.count("data:image/png;base64,") >= 2 * 3  # every indicator: against the ratio, and overlaid


@pytest.mark.slow
def test_a_second_sweep_skips_finished_runs_and_resumes_an_interrupted_one(
    swept: Path, tmp_path: Path, write_tiny_config
) -> None:
    run_dir = tmp_path / "s"
    shutil.copytree(swept, run_dir)
    # ratio-0.6-seed-0 "crashed" after its oldest kept checkpoint: its end and everything after it are gone.
    interrupted = run_dir / "ratio-0.6-seed-0"
    oldest = min(int(f.name.split("-")[1]) for f in (interrupted / "checkpoints").iterdir())
    for folder in (interrupted / "checkpoints").iterdir():
        if folder.name != f"step-{oldest}":
            shutil.rmtree(folder)
    lines = (interrupted / METRICS).read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("step", 0) <= oldest]
    (interrupted / METRICS).write_text("\n".join(kept) + "\n")
    (interrupted / "adapter").rename(tmp_path / "old-adapter")
    finished = (run_dir / "ratio-0-seed-0" / METRICS).read_bytes()
    config = write_tiny_config(tmp_path, REPEAT)
    command = ["sweep", "--config", str(config), "--ratios", "0,0.6", "--seeds", "0", "--run-dir", str(run_dir)]
    assert synthmix([*command, "--collapse.rules", STOP_RULE]) == 0
    assert (run_dir / "ratio-0-seed-0" / METRICS).read_bytes() == finished  # not trained again
    assert any(e["event"] == "resume" for e in read_events(interrupted / METRICS))
    assert (interrupted / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "old-adapter" / "adapter_model.safetensors"
    ).read_bytes()  # resumed exactly where it stopped
    assert json.loads((run_dir / "verdict.json").read_text()) == json.loads((swept / "verdict.json").read_text())


@pytest.mark.slow
def test_runs_side_by_side_in_processes_give_the_same_sweep(swept: Path, tmp_path: Path, write_tiny_config) -> None:
    config = write_tiny_config(tmp_path, REPEAT)
    run_dir = tmp_path / "parallel"
    command = ["sweep", "--config", str(config), "--ratios", "0,0.6", "--seeds", "0", "--run-dir", str(run_dir)]
    assert synthmix([*command, "--jobs", "2", "--collapse.rules", STOP_RULE]) == 0
    together = {(r["ratio"], r["seed"]): r for r in map(json.loads, (swept / "sweep.jsonl").read_text().splitlines())}
    for line in map(json.loads, (run_dir / "sweep.jsonl").read_text().splitlines()):
        alone = together[(line["ratio"], line["seed"])]
        assert line["step"] == alone["step"] and line["real_ppl"] == pytest.approx(alone["real_ppl"], rel=1e-4)


@pytest.mark.slow
def test_submitit_jobs_collected_after_the_command_exited_give_the_same_verdict(
    swept: Path, tmp_path: Path, write_tiny_config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """submitit's local cluster (the code path of Slurm's, without a scheduler): the first call submits and
    returns (--no-wait), resubmitting a run whose recorded job ended without finishing it; the second collects."""
    for key, value in subprocess_env().items():  # the jobs inherit this environment: one thread, as in-process
        monkeypatch.setenv(key, value)
    config = write_tiny_config(tmp_path, REPEAT)
    run_dir = tmp_path / "jobs"
    run_dir.mkdir()
    gone = {"cluster": "local", "job_id": "999999999", "folder": str(run_dir / "submitit"), "stdout": "old.out",
            "submitted_s": 0, "attempts": 1}  # fmt: skip
    (run_dir / "jobs.json").write_text(json.dumps({"ratio-0.6-seed-0": gone}))
    command = ["sweep", "--config", str(config), "--ratios", "0,0.6", "--seeds", "0", "--run-dir", str(run_dir),
               "--collapse.rules", STOP_RULE, "--launcher", "submitit", "--submitit.cluster", "local",
               "--submitit.time", "20", "--submitit.poll", "0.5"]  # fmt: skip
    assert synthmix([*command, "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "[ratio-0.6-seed-0] job 999999999 ended (GONE) unfinished" in out
    assert "2 job(s) queued or running; run the same command again to collect" in out
    assert not (run_dir / "verdict.json").exists()
    jobs = json.loads((run_dir / "jobs.json").read_text())
    assert jobs["ratio-0.6-seed-0"]["attempts"] == 2 and jobs["ratio-0-seed-0"]["attempts"] == 1
    for name, job in jobs.items():
        assert f"[{name}] job {job['job_id']} submitted; log {job['stdout']}" in out
        assert Path(job["stdout"]).parent == run_dir / name / "submitit"  # the log, linked from the run folder
    assert synthmix(command) == 0  # collects: waits for the running jobs, then the verdict
    assert json.loads((run_dir / "verdict.json").read_text()) == json.loads((swept / "verdict.json").read_text())
    for name, job in jobs.items():
        assert "Job completed successfully" in Path(job["stdout"]).read_text()
        assert (run_dir / name / "adapter" / "adapter_model.safetensors").read_bytes() == (
            swept / name / "adapter" / "adapter_model.safetensors"
        ).read_bytes()  # the same training, bit for bit
    assert synthmix(command) == 0  # everything finished: nothing submitted, the same verdict
    assert "submitted" not in capsys.readouterr().out.split("already finished")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratios", "0.25,0.5"], "--ratios: include 0"),
        (["--ratios", "0,1"], "--ratios: distinct values in [0, 1)"),
        (["--ratios", "0,a"], "--ratios: comma-separated numbers expected"),
        (["--ratios", "0,0.5", "--tolerance", "real_pp=0.1"], "--tolerance: unknown indicator 'real_pp'"),
        (["--ratios", "0,0.5", "--tolerance", "real_ppl"], "--tolerance: INDICATOR=FRACTION expected"),
        (["--ratios", "0,0.5", "--steps", "0"], "--steps: must be at least 1"),
    ],
)
def test_bad_sweep_arguments_are_one_line_errors(
    args: list[str], message: str, make_config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert synthmix(["sweep", "--config", str(make_config()), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
