"""Helpers that test modules import (fixtures live in the conftest files): the run config of a config file, a
JSONL writer, and the one environment every subprocess a test starts runs in. No behaviour under test lives here.

`tests/` is on sys.path because `tests/conftest.py` is there (pytest's default import mode), so any test module
imports this one as `testkit`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from synthmix.trainer.config import RunConfig, load_config


def run_config(path: Path, output_dir: Path, *overrides: str) -> RunConfig:
    """The run config of `path` writing into `output_dir`, with CLI-style overrides."""
    return load_config(path, ["--output_dir", str(output_dir), *overrides])


def write_jsonl(path: Path, records: list[Any]) -> str:
    """Write one JSON object per line (creating the folder); returns the path as a config names it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def subprocess_env(**changes: str | None) -> dict[str, str]:
    """This environment as a child process of a test gets it: one thread, like the in-process runs
    (conftest.one_thread), so both compute the same numbers; unbuffered output, read while the child runs; the
    venv's console scripts (synthmix, accelerate) on PATH, as an activated venv has them; no ACCELERATE_USE_CPU,
    since the trainer itself must join a launcher's processes on a CPU machine. `changes` add variables, and a
    None removes one."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("ACCELERATE_USE_CPU", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


BENCHMARK_TASK = "synthmix_arith"


def write_benchmark_task(folder: Path) -> Path:
    """A multiple-choice task of 12 sums as lm-eval reads one: a YAML beside its JSONL."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"{i} plus {i} is", "choices": [str(2 * i), str(2 * i + 1), str(i)], "answer": 0}
            for i in range(12)]  # fmt: skip
    write_jsonl(folder / "arith.jsonl", rows)
    task = {
        "task": BENCHMARK_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "arith.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }
    (folder / "arith.yaml").write_text(yaml.safe_dump(task))
    return folder


def example_chat(i: int) -> list[dict[str, str]]:
    """A system prompt, a question and its answer; every third chat asks a second question."""
    turns = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"What is {i} plus {i + 1}?"},
        {"role": "assistant", "content": f"It is {2 * i + 1}."},
    ]
    if i % 3 == 0:
        turns += [{"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": f"Then {4 * i + 2}."}]
    return turns


def pairs_source(path: Path, pairs: list[dict[str, str]]) -> dict[str, str]:
    """Write prompt-completion `pairs` as JSONL to `path`; the real source of a config that reads them."""
    write_jsonl(path, pairs)
    return {"name": "qa", "kind": "real", "path": str(path), "prompt_field": "prompt", "completion_field": "completion"}
