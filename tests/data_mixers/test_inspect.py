"""`synthmix inspect`: tables, --json, overrides, --dump, one-line errors with exit code 2, and the
`python -m synthmix inspect` alias; a config with only a data section can be inspected.

Runs in-process (main(argv)) from the repository root, as a user would, with the tokenizer cache in a
temporary folder so the tests never touch .cache/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthmix.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tokenizer-cache"))


@pytest.fixture
def inspect(cache: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run `inspect ARGS` from the repository root; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)

    def run(*args: str, config: str = "configs/tiny.yaml") -> tuple[int, str, str]:
        code = main(["inspect", "--config", config, "--data.cache_dir", cache, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_text_report_lists_sources_and_epochs(inspect) -> None:
    code, out, err = inspect()
    assert (code, err) == (0, "")
    assert "ratio counted in tokens" in out
    source_rows = [line.split() for line in out.splitlines() if line.startswith("  python-docs")]
    source_rows += [line.split() for line in out.splitlines() if line.startswith("  trigram-synthetic")]
    assert [row[:2] for row in source_rows] == [["python-docs", "real"], ["trigram-synthetic", "synthetic"]]
    epochs = out[out.index("epochs:") :].splitlines()[2:]
    assert [row.split()[:2] for row in epochs] == [["1", "0.300"], ["2", "0.300"]]  # train.epochs: 2


def report(inspect, *args: str) -> dict:
    code, out, err = inspect("--json", *args)
    assert (code, err) == (0, "")
    return json.loads(out)


def test_json_report_realizes_the_target_token_ratio(inspect) -> None:
    result = report(inspect)
    assert result["unit"] == "tokens" and len(result["epochs"]) == 2
    for epoch in result["epochs"]:
        assert epoch["target_synthetic_ratio"] == 0.3
        assert abs(epoch["realized_token_ratio"] - 0.3) <= 0.01
        assert epoch["tokens"]["real"] == result["sources"][0]["tokens"]  # one pass over the real data


def test_an_override_changes_the_ratio(inspect) -> None:
    for epoch in report(inspect, "--data.synthetic_ratio", "0.5")["epochs"]:
        assert epoch["target_synthetic_ratio"] == 0.5
        assert abs(epoch["realized_token_ratio"] - 0.5) <= 0.01


def test_dump_writes_the_stream_of_epoch_1(inspect, tmp_path: Path) -> None:
    dump = tmp_path / "out" / "stream.jsonl"
    result = report(inspect, "--dump", str(dump))
    records = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines()]
    assert len(records) == result["dump"]["examples"]
    assert all(set(r) == {"source", "kind", "index", "n_tokens"} for r in records)
    sums = {"real": 0, "synthetic": 0}
    for record in records:
        sums[record["kind"]] += record["n_tokens"]
    assert sums == result["epochs"][0]["tokens"]
    kinds = {r["source"]: r["kind"] for r in records}
    assert kinds == {"python-docs": "real", "trigram-synthetic": "synthetic"}


def one_line_error(inspect, *args: str, config: str = "configs/tiny.yaml") -> str:
    code, out, err = inspect(*args, config=config)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err.strip()


def test_bad_key_is_one_line_with_a_hint(inspect) -> None:
    message = one_line_error(inspect, "--data.synthetic_ratoi", "0.3")
    assert message == "error: unknown key 'data.synthetic_ratoi' (did you mean 'synthetic_ratio'?)"


def test_malformed_jsonl_line_names_file_and_line(inspect, tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    real.write_text('{"text": "fine"}\n{"text": "cut off\n{"text": "fine too"}\n', encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data:\n  sources:\n    - name: docs\n      kind: real\n      path: {real}\n      on_error: raise\n",
        encoding="utf-8",
    )
    message = one_line_error(inspect, config=str(config))
    assert message.startswith(f"error: source 'docs': {real}:2: invalid JSON")


def test_missing_source_file_and_missing_config(inspect, tmp_path: Path) -> None:
    message = one_line_error(inspect, "--data.sources", "[{name: gen, kind: real, path: nowhere.jsonl}]")
    assert message.startswith("error: source 'gen': nowhere.jsonl: file does not exist")
    message = one_line_error(inspect, config=str(tmp_path / "missing.yaml"))
    assert message == f"error: {tmp_path / 'missing.yaml'}: config file does not exist"


def test_a_config_with_only_a_data_section_is_inspected(inspect, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  sources:\n    - {name: docs, kind: real, builtin: python_docs, max_examples: 20}\n")
    code, out, err = inspect("--json", config=str(config))
    assert (code, err) == (0, "")
    assert json.loads(out)["epochs"][0]["examples"]["real"] == 19  # 20 loaded, 1 held out


@pytest.mark.slow
def test_module_entry_point_runs(cache: str) -> None:
    command = [sys.executable, "-m", "synthmix", "inspect", "--config", "configs/tiny.yaml"]
    done = subprocess.run([*command, "--data.cache_dir", cache], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trigram-synthetic" in done.stdout and "epochs:" in done.stdout


def test_rows_file_shows_whole_examples_under_bfd_and_the_report_shows_the_store(inspect, tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.jsonl"
    result = report(inspect, "--data.packing", "bfd", "--data.overflow", "split", "--rows", str(rows_file))
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    epoch = result["epochs"][0]
    assert len(rows) == result["rows_file"]["rows"] == epoch["rows"]
    seq_len = result["seq_len"]
    for row in rows:
        assert sum(p["tokens"] for p in row["pieces"]) + row["padding"] == seq_len
        for piece in row["pieces"]:
            assert piece["start"] % seq_len == 0  # past 0 only as the later piece of an example split by overflow
    assert {p["start"] > 0 for row in rows for p in row["pieces"]} == {False, True}  # tiny.yaml has long examples
    assert epoch["overflow"]["policy"] == "split" and epoch["overflow"]["real"]["tokens"] == 0
    used = sum(p["tokens"] for row in rows for p in row["pieces"])
    assert epoch["padding_efficiency"] == pytest.approx(used / (len(rows) * seq_len))
    assert {s["store"] for s in result["sources"]} <= {"built", "cached"} and result["cleaning"]["store"]
    code, out, _ = inspect("--data.packing", "bfd")
    assert code == 0 and "padding eff" in out and "overflow (truncate, epoch 1)" in out and "cached in" in out
