"""Fixtures every test package shares: one torch thread, the tiny Llama architecture, and a tiny tokenizer.
No behaviour under test lives here."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest
import torch
from testkit import subprocess_env

from synthmix.data_mixers.tokenizer import train_bpe

LONGEST_FIRST = (
    "tests/trainer/test_distributed.py",
    "tests/trainer/test_collapse.py",
    "tests/bench/test_bench_trainer.py",
    "tests/trainer/test_sweep.py",
    "tests/trainer/test_multi_node.py",
    "tests/configs/test_ready_configs.py",
    "tests/trainer/test_trackers.py",
    "tests/trainer/test_recursive.py",
    "tests/docs/test_docs.py",
    "tests/trainer/test_loop.py",
    "tests/synthmix/test_wheel.py",
    "tests/synthmix/test_cli.py",
    "tests/trainer/test_preemption.py",
    "tests/examples/test_sft_example.py",
    "tests/trainer/test_demo.py",
    "tests/trainer/test_report.py",
    "tests/trainer/test_integrations.py",
    "tests/trainer/test_disk_full.py",
    "tests/bench/test_bench_stream.py",
    "tests/synthmix/test_served.py",
    "tests/trainer/test_trl_dataset.py",
)
"""The files that take 15 s or more of a worker's time (pytest --durations), longest first: `make test` runs with
--no-loadscope-reorder, so its two workers take files in this order (xdist would otherwise order files by their
number of tests and leave the one-test end-to-end files, a benchmark's two minutes among them, for the end)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file, and of the other files, stays as collected


REPORTED_VERSIONS = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "mlflow-skinny")


def pytest_report_header() -> str:
    """The versions the suite runs against, at the top of every run (what docs/development.md records)."""
    import importlib.metadata

    return "synthmix runs against: " + ", ".join(f"{p} {importlib.metadata.version(p)}" for p in REPORTED_VERSIONS)


TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
"""A Llama of about 30k parameters plus its embeddings: trains in seconds on one CPU thread."""


@pytest.fixture(scope="session")
def tiny_arch() -> Mapping[str, Any]:
    """The tiny Llama's config as `model.arch` takes it (read-only: `{**tiny_arch, ...}` makes a changed copy)."""
    return MappingProxyType(TINY_LLAMA)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads on a busy shared CPU; the tests' subprocesses run with one thread
    too (OMP_NUM_THREADS=1), so in-process and CLI runs compute the very same floating-point numbers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE (300 tokens, eos/pad, ChatML template) trained on Python's documentation topics."""
    import pydoc_data.topics

    texts = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:30]
    return train_bpe(texts, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    """Build the tiny Llama: `tiny_model(tokenizer, seed=0, **arch_changes)`, random weights, eval mode."""

    def build(tokenizer: Any, seed: int = 0, **changes: Any) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        arch = {**TINY_LLAMA, **changes}
        config = AutoConfig.for_model(
            arch.pop("model_type"),
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **arch,
        )
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()

    return build


HUB_MODELS = (
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-32B-Instruct",
    "Qwen/Qwen2.5-0.5B",
)
"""The hub models that the ready configs, the README and the example name."""


@pytest.fixture(scope="session")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that finds every model of HUB_MODELS in its Hugging Face cache, offline: a
    tiny Qwen2 (widths multiples of 64, as bitsandbytes' 4-bit CPU kernels need) with a ChatML BPE tokenizer,
    stored where a download would have put it. Commands then run as written, without a network, and reach the
    same loading code as after a real download."""
    import pydoc_data.topics

    from transformers import AutoConfig, AutoModelForCausalLM

    cache = tmp_path_factory.mktemp("hf-cache")
    model_dir = tmp_path_factory.mktemp("tiny-qwen")
    tokenizer = train_bpe([t for t in pydoc_data.topics.topics.values() if len(t) > 200][:40], vocab_size=512)
    config = AutoConfig.for_model(
        "qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(str(model_dir))
    commit = "0" * 40
    for name in HUB_MODELS:
        repo = cache / f"models--{name.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        (repo / "snapshots").mkdir()
        shutil.copytree(model_dir, repo / "snapshots" / commit)
    return subprocess_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
