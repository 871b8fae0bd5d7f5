"""Shared fixtures of the trainer tests: a tiny run config that trains in seconds on a CPU, and one reference
run that several tests read (its folder, its events and the trained model in memory). No behaviour under test
lives here."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from testkit import run_config

from synthmix.schema import apply_overrides, flatten
from synthmix.trainer.config import RunConfig, load_config
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.loop import fit, train
from synthmix.trainer.runtime.setup import setup
from synthmix.trainer.runtime.state import Run

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = REPO / "data" / "tiny_synthetic.jsonl"


def tiny_config(cache_dir: Path, arch: Mapping[str, Any]) -> dict[str, Any]:
    """About 44 optimizer steps over 2 epochs (22 each), a checkpoint every 4 steps, a cheap collapse hook."""
    return {
        "seed": 0,
        "tokenizer": {"vocab_size": 512},
        "data": {
            "cache_dir": str(cache_dir),
            "synthetic_ratio": 0.3,
            "sources": [
                {"name": "docs", "kind": "real", "builtin": "python_docs", "max_examples": 24},
                {"name": "syn", "kind": "synthetic", "path": str(SYNTHETIC), "max_examples": 40},
            ],
        },
        "model": {"arch": dict(arch)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {
            "epochs": 2,
            "per_device_train_batch_size": 4,
            "seq_len": 64,
            "learning_rate": 0.01,
            "warmup_steps": 2,
            "progress": False,
        },
        "checkpoint": {"every_steps": 4, "keep_last": 3},
        "collapse": {
            "num_prompts": 4,
            "prompt_tokens": 8,
            "max_eval_texts": 4,
            "eval_seq_len": 64,
            "eval_batch_size": 4,
            "self_bleu_samples": 4,
            "sampling": {"max_new_tokens": 8, "batch_size": 4},
        },
    }


def merged(raw: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` merged into a copy of `raw` (nested mappings key by key; a list or a value replaces)."""
    return apply_overrides(raw, flatten(changes).items())


def write_config(folder: Path, cache_dir: Path, arch: Mapping[str, Any], changes: dict[str, Any] | None = None) -> Path:
    """The tiny config with `changes` deep-merged into it, written as folder/config.yaml (no output_dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(merged(tiny_config(cache_dir, arch), changes or {}), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer cache for the session, so the BPE is trained once per corpus."""
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="session")
def write_tiny_config(token_cache: Path, tiny_arch: Mapping[str, Any]) -> Callable[..., Path]:
    """`write_tiny_config(folder, changes=None)`: the tiny config written into any folder (for module fixtures)."""
    return lambda folder, changes=None: write_config(folder, token_cache, tiny_arch, changes)


@pytest.fixture
def make_config(tmp_path: Path, token_cache: Path, tiny_arch: Mapping[str, Any]) -> Callable[..., Path]:
    """Write the tiny config (with changes) into tmp_path and return its path."""

    def make(changes: dict[str, Any] | None = None, name: str = "config") -> Path:
        return write_config(tmp_path / name, token_cache, tiny_arch, changes)

    return make


@dataclasses.dataclass
class ReferenceRun:
    """The uninterrupted run that resumed runs must reproduce."""

    config_path: Path
    config: RunConfig
    output_dir: Path
    run: Run
    """The finished run, model included (base and LoRA weights as training left them)."""
    events: list[dict[str, Any]]

    @property
    def train_steps(self) -> list[int]:
        return [e["step"] for e in self.events if e["event"] == "train"]

    @property
    def adapter_bytes(self) -> bytes:
        return (self.output_dir / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="session")
def reference(
    tmp_path_factory: pytest.TempPathFactory, token_cache: Path, tiny_arch: Mapping[str, Any]
) -> ReferenceRun:
    """The tiny config trained to the end, uninterrupted (`train()` is exactly setup, fit and closing the log;
    they are called here to keep the trained model)."""
    root = tmp_path_factory.mktemp("reference")
    path = write_config(root, token_cache, tiny_arch)
    config = run_config(path, root / "run")
    run = setup(config, resume=None)
    try:
        fit(run)
    finally:
        run.close()
    return ReferenceRun(path, config, run.output_dir, run, read_events(run.output_dir / METRICS))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory, tiny_arch) -> Path:
    """A tiny base model, fully trained for a few steps on the real text, saved with its tokenizer."""
    root = tmp_path_factory.mktemp("base")
    config = {
        "output_dir": str(root / "run"),
        "tokenizer": {"vocab_size": 384},
        "data": {
            "cache_dir": str(root / "cache"),
            "sources": [{"name": "docs", "kind": "real", "builtin": "python_docs", "max_examples": 80}],
            "held_out": {"fraction": 0.1},
        },
        "model": {"arch": dict(tiny_arch)},
        "lora": {"r": 0},
        "train": {
            "epochs": 8,  # a base close to converged, so drifting away from the real data shows
            "per_device_train_batch_size": 8,
            "seq_len": 64,
            "learning_rate": 0.01,
            "progress": False,
        },
        "collapse": {"enabled": False},
    }
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = train(load_config(path))
    model_dir = root / "model"
    shutil.copytree(run_dir / "model", model_dir)
    for file in (run_dir / "tokenizer").iterdir():
        shutil.copy(file, model_dir / file.name)
    return model_dir


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    """The tiny tokenizer, under the name the generation tests give it."""
    return tiny_tokenizer


@pytest.fixture
def fresh_accelerate_state():
    """TRL's SFTConfig turns bf16 on, and accelerate keeps one process-wide state: reset it after each test, or
    the next synthmix run in this process would be refused a different mixed precision."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
