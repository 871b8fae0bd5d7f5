"""`synthmix demo` (what `make demo` runs) end to end, reduced: pre-train a base, sample a corpus from it, LoRA
on the mix; a second run takes the first two stages from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synthmix.cli import main as synthmix

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]


def write_configs(tmp_path: Path, arch: dict) -> tuple[Path, Path]:
    """The demo's two configs with the same structure, shrunk to seconds."""
    base = yaml.safe_load((REPO / "configs/demo_base.yaml").read_text())
    base["tokenizer"] = {"vocab_size": 384}
    base["data"]["cache_dir"] = str(tmp_path / "data-cache")
    base["data"]["sources"][0]["max_examples"] = 60
    base["model"]["arch"] = {**arch, "tie_word_embeddings": True}
    base["train"].update(epochs=2, per_device_train_batch_size=8, seq_len=64, warmup_steps=2, progress=False)
    demo = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    demo["output_dir"] = str(tmp_path / "run")
    demo["data"]["sources"][0]["max_examples"] = 60
    demo["data"]["cache_dir"] = str(tmp_path / "data-cache")
    demo["lora"]["r"] = 4
    demo["train"].update(epochs=2, per_device_train_batch_size=8, seq_len=64, warmup_steps=2, progress=False)
    demo["collapse"].update(num_prompts=8, sampling={"max_new_tokens": 16})
    paths = tmp_path / "demo_base.yaml", tmp_path / "demo.yaml"
    for path, config in zip(paths, (base, demo)):
        path.write_text(yaml.safe_dump(config))
    return paths


def test_the_demo_pipeline_runs_end_to_end_and_caches_its_first_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_arch
) -> None:
    base_config, demo_config = write_configs(tmp_path, dict(tiny_arch))
    args = [
        "demo",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--base-config",
        str(base_config),
        "--config",
        str(demo_config),
        "--samples",
        "300",
    ]
    assert synthmix(args) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "adapter:" in out
    run = tmp_path / "run"
    assert (run / "report.html").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    corpus = [json.loads(line) for line in (tmp_path / "cache" / "synthetic.jsonl").read_text().splitlines()]
    assert len(corpus) == 300
    assert set(corpus[0]) == {"text", "generator", "prompt_source", "sampling"}
    assert corpus[0]["generator"].endswith("base") and corpus[0]["sampling"]["temperature"] == 1.0
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [0, 1, 2]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert all(abs(e["realized_synthetic_ratio"] - 0.5) < 0.01 for e in epochs)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == str(tmp_path / "cache" / "base")

    assert synthmix(args + ["--train.epochs", "1"]) == 0  # stages 1 and 2 come from the cache
    out = capsys.readouterr().out
    assert "[1/3] base model: cached" in out and "[2/3] synthetic corpus: cached" in out
