"""The HTML report: self-contained, one plot per indicator, alerts and config shown, clear CLI errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthmix.cli import main as synthmix
from synthmix.trainer.reporting.report import COLLAPSE_DIRECTION, write_report

REPO = Path(__file__).resolve().parents[2]
INDICATORS = list(COLLAPSE_DIRECTION)
ALERT_MESSAGE = "distinct_2 fell 24% below its baseline <at epoch 3>"


def write_run(run_dir: Path, synthetic_ratio: float = 0.3, generations: bool = False) -> Path:
    """A run folder with a config, a reference, a baseline and 3 epochs of evals, train steps and one alert."""
    run_dir.mkdir(parents=True)
    config = {"seed": 7, "data": {"synthetic_ratio": synthetic_ratio}, "train": {"epochs": 3, "lr": 0.001}}
    rows: list[dict] = [{"event": "config", "config": config}]
    rows.append({"event": "reference", **{name: 1.0 for name in INDICATORS if name != "real_ppl"}})
    step = 0
    for epoch in range(4):
        if epoch:
            for _ in range(5):
                step += 1
                synthetic = None if step % 5 == 0 else 3.0 - 0.1 * step
                rows.append(
                    {"event": "train", "step": step, "epoch": epoch, "loss": 3.2 - 0.1 * step,
                     "loss_real": 3.3 - 0.1 * step, "loss_synthetic": synthetic, "lr": 1e-3, "tokens_per_s": 8e3}
                )  # fmt: skip
            rows.append(
                {"event": "epoch", "epoch": epoch, "step": step, "realized_synthetic_ratio": synthetic_ratio + 0.002,
                 "target_synthetic_ratio": synthetic_ratio, "tokens_real": 700, "tokens_synthetic": 300}
            )  # fmt: skip
        values = {name: 0.8 - 0.08 * epoch for name in INDICATORS}
        realized = None if epoch == 0 else synthetic_ratio
        rows.append(
            {"event": "eval", "time": 1.7e9 + epoch, "step": step, "epoch": epoch, **values,
             "target_synthetic_ratio": synthetic_ratio, "realized_synthetic_ratio": realized, "sampling": {"top_p": 1}}
        )  # fmt: skip
    rows.append(
        {"event": "alert", "step": step, "epoch": 3, "indicator": "distinct_2", "rule": "distinct_2 down > 20%",
         "value": 0.56, "baseline": 0.8, "action": "warn", "message": ALERT_MESSAGE}
    )  # fmt: skip
    rows += [{"event": "checkpoint", "step": step}, {"event": "end", "status": "completed", "step": step}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if generations:
        lines = [
            {"generation": g, "strategy": "replace", "distinct_2": 1 - g / 10, "self_bleu": g / 10} for g in range(3)
        ]
        (run_dir / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


@pytest.fixture(scope="module")
def single_report(tmp_path_factory) -> Path:
    """One run's report, shared by the tests that only read it."""
    return write_report([write_run(tmp_path_factory.mktemp("runs") / "ratio0.3")])


def test_single_run_report_is_self_contained_with_every_indicator(single_report):
    run, out = single_report.parent, single_report
    assert out == run / "report.html"
    page = out.read_text()
    assert 'src="http' not in page and "<script" not in page
    for name in INDICATORS:
        assert f'<img alt="{name}" src="data:image/png;base64,' in page
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "plots" / "loss.png").is_file() and (run / "plots" / "synthetic_ratio.png").is_file()
    assert "distinct_2 fell 24% below its baseline &lt;at epoch 3&gt;" in page  # escaped, not markup
    assert "Falls under collapse" in page and "completed" in page
    assert "synthetic_ratio: 0.3" in page and "lr: 0.001" in page  # the config, as YAML
    assert "-30.0%" in page  # distinct_2 at epoch 3 vs its baseline in the table
    assert not (run / "plots" / "time.png").exists()  # bookkeeping fields are not indicators


def test_report_without_alerts_says_so(tmp_path):
    run = write_run(tmp_path / "run")
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"alert"' not in line]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert "No alerts" in write_report([run]).read_text()


def test_generations_add_a_section(tmp_path):
    run = write_run(tmp_path / "run", generations=True)
    page = write_report([run]).read_text()
    assert "Self-consuming generations" in page
    assert (run / "plots" / "generations_distinct_2.png").is_file()


def test_comparison_labels_each_run_by_folder_and_ratio(tmp_path):
    first, second = write_run(tmp_path / "low", 0.1), write_run(tmp_path / "high", 0.7)
    out = write_report([first, second])
    assert out == first / "compare.html"
    page = out.read_text()
    assert "low (synthetic_ratio=0.1)" in page and "high (synthetic_ratio=0.7)" in page
    assert page.count("data:image/png;base64,") >= len(INDICATORS)
    assert not (first / "plots").exists()


def test_cli_writes_where_out_says_and_prints_the_path(tmp_path, capsys):
    out = tmp_path / "elsewhere" / "report.html"
    assert synthmix(["report", str(write_run(tmp_path / "run")), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.is_file()


def test_cli_missing_folder_exits_2_naming_it(tmp_path, capsys):
    assert synthmix(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "not found" in err and "Traceback" not in err


def test_cli_missing_metrics_exits_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert synthmix(["report", str(tmp_path / "empty")]) == 2
    assert str(tmp_path / "empty" / "metrics.jsonl") in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bad_json_line_exits_2_with_its_line_number(tmp_path):
    run = write_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"event": "train", "step": \n')
    line = len((run / "metrics.jsonl").read_text().splitlines())
    done = subprocess.run(
        [sys.executable, "-m", "synthmix", "report", str(run)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    assert f"{run / 'metrics.jsonl'}:{line}: not valid JSON" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_screenshot_shows_a_rendered_page(single_report, tmp_path):
    import matplotlib.image

    shot = tmp_path / "shot.png"
    script = str(REPO / "scripts" / "screenshot_report.py")
    done = subprocess.run(
        [sys.executable, script, str(single_report), str(shot), "--width", "1200", "--height", "5000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    image = matplotlib.image.imread(shot)
    assert image.shape[1] == 1200 and 1500 < image.shape[0] < 5000  # the whole page, cropped below it
    assert shot.stat().st_size > 50_000
    assert image[..., :3].std() > 0.05  # not one flat colour


def test_screenshot_without_chromium_exits_2(tmp_path):
    report = tmp_path / "report.html"
    report.write_text("<p>report</p>")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshot_report.py"), str(report), str(tmp_path / "s.png")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path)},
    )
    assert done.returncode == 2 and "no Chromium found" in done.stderr
