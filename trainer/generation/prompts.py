"""Fixed prompts: the first tokens of texts chosen by a seeded shuffle (the collapse hook's and corpus jobs')."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from synthmix.trainer.generation.sampling import GenerationError


def prompts_from_texts(tokenizer: Any, texts: list[str], n: int, prompt_tokens: int, seed: int) -> list[list[int]]:
    """`n` fixed prompts: the first `prompt_tokens` tokens of texts drawn by a seeded shuffle.

    Texts shorter than `prompt_tokens + 1` tokens are skipped; when fewer than `n` texts qualify, the shuffled
    list is reused from its start. The tokenizer's own leading special tokens (a BOS) are kept in front.
    """
    return [ids for _, ids in choose_prompts(tokenizer, texts, n, prompt_tokens, seed)]


def choose_prompts(
    tokenizer: Any, texts: list[str], n: int, prompt_tokens: int, seed: int
) -> list[tuple[int, list[int]]]:
    """Like `prompts_from_texts`, with each prompt's index in `texts` (for provenance)."""

    def encode(indices: list[int]) -> list[list[int]]:
        # Truncation keeps only what the length test and the prompt need.
        batch = [texts[i] for i in indices]
        return tokenizer(batch, add_special_tokens=False, truncation=True, max_length=prompt_tokens + 1)["input_ids"]

    return _choose(encode, len(texts), n, prompt_tokens, seed, leading_special_tokens(tokenizer))


def choose_prompts_from_ids(
    tokenizer: Any, contents: list[list[int]], n: int, prompt_tokens: int, seed: int
) -> list[tuple[int, list[int]]]:
    """Like `choose_prompts`, from texts already tokenized (without the tokenizer's added special tokens)."""
    prefix = leading_special_tokens(tokenizer)
    return _choose(lambda indices: [contents[i] for i in indices], len(contents), n, prompt_tokens, seed, prefix)


def _choose(
    encode: Callable[[list[int]], list[list[int]]], count: int, n: int, prompt_tokens: int, seed: int,
    prefix: list[int],
) -> list[tuple[int, list[int]]]:  # fmt: skip
    if n < 1:
        raise GenerationError(f"n must be at least 1, got {n}")
    if prompt_tokens < 1:
        raise GenerationError(f"prompt_tokens must be at least 1, got {prompt_tokens}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    chosen: list[tuple[int, list[int]]] = []
    chunk = 256
    for start in range(0, len(order), chunk):
        indices = order[start : start + chunk]
        for i, ids in zip(indices, encode(indices), strict=True):
            if len(ids) > prompt_tokens:
                chosen.append((i, prefix + list(ids[:prompt_tokens])))
        if len(chosen) >= n:
            return chosen[:n]
    if not chosen:
        raise GenerationError(f"none of the {count} texts has more than prompt_tokens={prompt_tokens} tokens")
    return [chosen[k % len(chosen)] for k in range(n)]


def content_ids(ids: Any, prefix: list[int], eos: int | None) -> list[int]:
    """A stored example's ids without what tokenizing added around the text: the tokenizer's leading special
    tokens (`prefix`, see `leading_special_tokens`) and a trailing eos."""
    ids = [int(t) for t in ids]
    if prefix and ids[: len(prefix)] == prefix:
        ids = ids[len(prefix) :]
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return ids


def leading_special_tokens(tokenizer: Any) -> list[int]:
    """Special tokens the tokenizer puts before text (Llama's BOS; none for GPT-2 or a local BPE)."""
    probe = "a b"
    full = tokenizer(probe)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    prefix_length = len(full) - len(plain)
    if prefix_length > 0 and full[prefix_length:] == plain:
        return list(full[:prefix_length])
    return []
