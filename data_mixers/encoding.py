"""From checked examples to token ids, a batch at a time: what the store's entries are built from.

Texts are tokenized in batches through the fast tokenizer's parallel path. Chats are rendered with the
tokenizer's chat template, and the part that carries the loss (assistant turns, or the completion of a
prompt-completion example) is found as character spans of the rendered text and mapped to tokens by their
offsets, which works with any template (no `{% generation %}` markers needed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.sources import Chat, Item, PromptCompletion


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    """The tokenization settings an entry of the store depends on."""

    add_eos: bool
    assistant_only_loss: bool
    completion_only_loss: bool


@dataclasses.dataclass
class EncodedBatch:
    """A batch's token ids per example, their loss masks (None: every token trains) and identity hashes."""

    ids: list[np.ndarray]
    masks: list[np.ndarray] | None
    keys: np.ndarray
    """[n, 2] uint64: the 128-bit hash of each example's exact content (see `item_key`)."""
    reply_starts: np.ndarray | None = None
    """Chats and prompt-completion pairs (None for text): where each example's last reply (its last assistant
    turn, or its completion) begins, as a token index; the example's length when it ends without one. What
    comes before is the prompt that the collapse hook samples a reply to."""


def item_key(item: Item) -> str:
    """The identity of an example for duplicate and contamination checks (exact text, chat or pair)."""
    if isinstance(item, str):
        return item
    if isinstance(item, PromptCompletion):
        return json.dumps([item.prompt, item.completion], sort_keys=True, ensure_ascii=False)
    return json.dumps(item, sort_keys=True, ensure_ascii=False)


def key_hashes(items: Sequence[Item]) -> np.ndarray:
    """[n, 2] uint64 blake2b-128 of each example's key; the first word also decides held-out membership."""
    digests = b"".join(
        hashlib.blake2b(item_key(item).encode("utf-8", "surrogatepass"), digest_size=16).digest() for item in items
    )
    return np.frombuffer(digests, dtype="<u8").reshape(-1, 2).copy()


def encode_batch(
    tokenizer: PreTrainedTokenizerBase, items: Sequence[Item], form: str, settings: EncodeSettings
) -> EncodedBatch:
    """Token ids (and loss masks where only part of an example trains) of a batch of one source's examples."""
    keys = key_hashes(items)
    if form == "text":
        return EncodedBatch(_encode_texts(tokenizer, items, settings.add_eos), None, keys)  # type: ignore[arg-type]
    if form == "messages":
        rendered = [render_chat(tokenizer, chat) for chat in items]  # type: ignore[arg-type]
        ids, masks = _encode_spans(tokenizer, rendered, special_tokens=False, eos=False)
        return EncodedBatch(ids, masks if settings.assistant_only_loss else None, keys, last_span_starts(masks))
    pairs: list[PromptCompletion] = list(items)  # type: ignore[arg-type]
    if isinstance(pairs[0].prompt, list):
        rendered = [render_prompt_completion(tokenizer, p) for p in pairs]
        ids, masks = _encode_spans(tokenizer, rendered, special_tokens=False, eos=False)
    else:
        rendered = [(p.prompt + p.completion, [(len(p.prompt), len(p.prompt) + len(p.completion))]) for p in pairs]
        ids, masks = _encode_spans(tokenizer, rendered, special_tokens=True, eos=settings.add_eos)  # type: ignore[arg-type]
    return EncodedBatch(ids, masks if settings.completion_only_loss else None, keys, last_span_starts(masks))


def last_span_starts(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Where the last run of true values of each mask begins (its length when it has none), int64."""
    starts = np.empty(len(masks), dtype=np.int64)
    for i, mask in enumerate(masks):
        on = np.flatnonzero(mask)
        if on.size == 0:
            starts[i] = len(mask)
            continue
        # The last run starts after the last false value before the last true one.
        off = np.flatnonzero(~mask[: on[-1]])
        starts[i] = off[-1] + 1 if off.size else 0
    return starts


def _encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], add_eos: bool) -> list[np.ndarray]:
    eos = tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if hasattr(backend, "encode_batch_fast"):
        # The fast tokenizer's own batch call, skipping the offsets and strings nothing here reads: what
        # tokenizer(texts) does for the ids, in less time and memory.
        batch = [encoding.ids for encoding in backend.encode_batch_fast(list(texts), add_special_tokens=True)]
    else:
        batch = tokenizer(list(texts), return_attention_mask=False)["input_ids"]
    out = []
    for ids in batch:
        if add_eos and eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        out.append(np.asarray(ids, dtype=np.int64))
    return out


def _encode_spans(
    tokenizer: PreTrainedTokenizerBase,
    rendered: Sequence[tuple[str, list[tuple[int, int]]]],
    special_tokens: bool,
    eos: bool,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tokenize rendered texts; a token trains when its first character lies in one of the text's spans."""
    encoded = tokenizer(
        [text for text, _ in rendered],
        add_special_tokens=special_tokens,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )
    ids_out, masks_out = [], []
    for (_, spans), ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
        starts = np.asarray([start for start, _ in offsets], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=bool)
        for lo, hi in spans:
            mask |= (starts >= lo) & (starts < hi)
        if special_tokens:  # added special tokens (a BOS) sit at offset (0, 0): they are context, not target
            mask &= np.asarray([end > start for start, end in offsets], dtype=bool) | (starts > 0)
        if eos and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids, mask = [*ids, tokenizer.eos_token_id], np.append(mask, True)  # learn to stop after the completion
        ids_out.append(np.asarray(ids, dtype=np.int64))
        masks_out.append(mask)
    return ids_out, masks_out


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Chat) -> tuple[str, list[tuple[int, int]]]:
    """A chat rendered with the chat template, and the character spans of its assistant replies.

    Each span comes from rendering growing prefixes of the chat: the prefix with a generation prompt marks where
    the reply starts (the assistant header is prompt, not completion), the prefix with the reply where it ends.
    """
    _check_template(tokenizer)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        header = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        spans.append((len(header), len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))))
    return full, spans


def render_prompt_completion(
    tokenizer: PreTrainedTokenizerBase, pair: PromptCompletion
) -> tuple[str, list[tuple[int, int]]]:
    """A conversational prompt-completion pair rendered as one chat, and the character span of the completion."""
    _check_template(tokenizer)
    prompt = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*pair.prompt, *pair.completion], tokenize=False)  # type: ignore[list-item]
    return full, [(len(prompt), len(full))]


def _check_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.chat_template is None:
        raise MixerError(
            "chats (and conversational prompt-completion pairs) are rendered with the tokenizer's chat template, "
            f"and tokenizer {tokenizer.name_or_path!r} has none; set data.chat_template: chatml, or use an "
            "instruct model's tokenizer (tokenizer.name)"
        )


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Chat) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of one chat and a mask that is true on its assistant replies."""
    ids, masks = _encode_spans(tokenizer, [render_chat(tokenizer, messages)], special_tokens=False, eos=False)
    return ids[0], masks[0]
