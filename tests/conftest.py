"""Fixtures every test package shares: one torch thread, the tiny Llama architecture, and a tiny tokenizer.
No behaviour under test lives here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest
import torch

from synthmix.data_mixers.tokenizer import train_bpe

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
