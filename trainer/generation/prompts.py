"""Fixed prompts: the first tokens of texts chosen by a seeded shuffle (the collapse hook's and corpus jobs'),
and for chats and prompt-completion pairs the conversation up to its last reply (the collapse hook's)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from synthmix.data_mixers.corpus import HeldOutExample
from synthmix.trainer.generation.sampling import GenerationError

T = TypeVar("T")


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


def _choose(
    encode: Callable[[list[int]], list[list[int]]], count: int, n: int, prompt_tokens: int, seed: int,
    prefix: list[int],
) -> list[tuple[int, list[int]]]:  # fmt: skip
    if n < 1:
        raise GenerationError(f"n must be at least 1, got {n}")
    if prompt_tokens < 1:
        raise GenerationError(f"prompt_tokens must be at least 1, got {prompt_tokens}")

    def make(indices: list[int]) -> list[list[int] | None]:
        return [prefix + list(ids[:prompt_tokens]) if len(ids) > prompt_tokens else None for ids in encode(indices)]

    chosen = seeded_choice(count, n, seed, make)
    if not chosen:
        raise GenerationError(f"none of the {count} texts has more than prompt_tokens={prompt_tokens} tokens")
    return chosen


def seeded_choice(
    count: int, n: int, seed: int, make: Callable[[list[int]], Sequence[T | None]], chunk: int = 256
) -> list[tuple[int, T]]:
    """`n` (index, prompt) pairs: the items 0..count-1 in the order of a shuffle seeded by `seed`, made into
    prompts `chunk` at a time by `make` (None: the item makes no prompt, and is skipped); when fewer than `n`
    qualify, the list is reused from its start; empty when none does. The k-th pair does not depend on `n`, so a
    larger `n` extends a smaller one's choice."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    chosen: list[tuple[int, T]] = []
    for start in range(0, len(order), chunk):
        indices = order[start : start + chunk]
        chosen += [(i, made) for i, made in zip(indices, make(indices), strict=True) if made is not None]
        if len(chosen) >= n:
            return chosen[:n]
    return [chosen[k % len(chosen)] for k in range(n)] if chosen else []


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    """A prompt of the collapse hook and what the real example has where the model replies."""

    example: int
    """Its example's index in the held-out list."""
    prompt: list[int]
    reference: list[int]
    """The real continuation: text's next tokens, or the example's last reply (up to its end of turn)."""
    reply: bool
    """True for a chat's or a prompt-completion pair's prompt (its template's generation prompt included)."""


def eval_prompts(
    tokenizer: Any, examples: Sequence[HeldOutExample], n: int, prompt_tokens: int, reply_tokens: int, seed: int,
    stop_ids: Sequence[int], max_prompt_tokens: int,
) -> list[EvalPrompt]:  # fmt: skip
    """`n` fixed prompts from held-out examples drawn by a seeded shuffle. A text's prompt is its first
    `prompt_tokens` tokens (texts no longer than that are skipped); a chat's is its conversation up to its last
    reply, rendered with the template and its generation prompt, and a prompt-completion pair's is its prompt
    (examples without a reply, or whose prompt is longer than `max_prompt_tokens`, are skipped). References are
    at most `reply_tokens` long. When fewer than `n` examples qualify, the shuffled list is reused from its
    start."""
    if n < 1:
        raise GenerationError(f"n must be at least 1, got {n}")
    if prompt_tokens < 1:
        raise GenerationError(f"prompt_tokens must be at least 1, got {prompt_tokens}")
    prefix, eos = leading_special_tokens(tokenizer), tokenizer.eos_token_id

    def make(indices: list[int]) -> list[EvalPrompt | None]:
        return [
            _eval_prompt(i, examples[i], prompt_tokens, reply_tokens, stop_ids, max_prompt_tokens, prefix, eos)
            for i in indices
        ]

    chosen = seeded_choice(len(examples), n, seed, make)
    if not chosen:
        raise GenerationError(
            f"none of the {len(examples)} held-out examples can prompt the collapse hook: texts need more than "
            f"collapse.prompt_tokens={prompt_tokens} tokens, chats and prompt-completion pairs a reply after a "
            f"prompt of at most collapse.eval_seq_len={max_prompt_tokens} tokens"
        )
    return [prompt for _, prompt in chosen]


def _eval_prompt(
    i: int, example: HeldOutExample, prompt_tokens: int, reply_tokens: int, stop_ids: Sequence[int],
    max_prompt_tokens: int, prefix: list[int], eos: int | None,
) -> EvalPrompt | None:  # fmt: skip
    ids = [int(t) for t in example.ids]
    if example.reply_start is None:
        content = content_ids(ids, prefix, eos)
        if len(content) <= prompt_tokens:
            return None
        reference = content[prompt_tokens : prompt_tokens + reply_tokens]
        return EvalPrompt(i, prefix + content[:prompt_tokens], reference, reply=False)
    start = example.reply_start
    reference = cut_at_stop(ids[start:], stop_ids)[:reply_tokens]
    if start < 1 or start > max_prompt_tokens or not reference:
        return None
    return EvalPrompt(i, ids[:start], reference, reply=True)


def cut_at_stop(ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    """`ids` up to (not including) the first stop token."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with (ChatML's `<|im_end|>`, Llama 3's
    `<|eot_id|>`), which a reply must stop at; None without a template or when the turn ends in plain text."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    marker = "Zq7xW"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    try:
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template with rules of its own (a system turn first, ...): no end-of-turn token known
        return None
    after = rendered[rendered.rfind(marker) + len(marker) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    added = getattr(tokenizer, "added_tokens_decoder", {})
    if ids and ids[0] in added and added[ids[0]].special:
        return int(ids[0])
    return None


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
