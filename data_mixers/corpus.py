"""Tokenized corpora: every source loaded, cleaned (held-out split, duplicates, contamination, filters) and
tokenized once, stored as flat arrays so the mixer plans with lengths and slices tokens without copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from data_mixers.config import DataConfig, SourceConfig, TokenizerConfig
from data_mixers.errors import MixerError
from data_mixers.hygiene import first_occurrences, item_key, passes_filters, select_held_out
from data_mixers.sources import LoadedSource, load_source
from data_mixers.tokenizer import encode_chat, encode_texts, load_tokenizer


@dataclasses.dataclass
class Corpus:
    """One training source after cleaning: token ids of its examples, with their index in the source."""

    name: str
    kind: str
    ids: np.ndarray
    """All token ids, concatenated (int32)."""
    offsets: np.ndarray
    """Example i spans ids[offsets[i]:offsets[i + 1]] (int64, length n + 1)."""
    source_index: np.ndarray
    """Index of each example in its source as loaded (provenance survives dropped records)."""
    loss_mask: np.ndarray | None = None
    """Per-token training mask (chat data with assistant-only loss); None means every token is trained."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example."""
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        """Total tokens."""
        return int(self.offsets[-1])


@dataclasses.dataclass
class SourceReport:
    """What happened to one source's records on the way to training."""

    name: str
    kind: str
    loaded: int = 0
    skipped: int = 0
    held_out: int = 0
    duplicates: int = 0
    contaminated: int = 0
    filtered: int = 0
    examples: int = 0
    tokens: int = 0


@dataclasses.dataclass
class Corpora:
    """Everything the mixer and the eval hook need from the data section."""

    train: list[Corpus]
    held_out: list[str]
    """Held-out real texts (chats rendered with the chat template)."""
    reports: list[SourceReport]
    skipped_messages: list[str]
    tokenizer: PreTrainedTokenizerBase


def build_corpora(
    data: DataConfig,
    tokenizer_config: TokenizerConfig,
    base_dir: Path | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Corpora:
    """Load, clean and tokenize every source of `data` (the tokenizer is trained on real text if none given)."""
    loaded = [load_source(spec, base_dir) for spec in _training_order(data.sources)]
    held_loaded = [load_source(spec, base_dir) for spec in data.held_out.sources]
    reports = [
        SourceReport(src.spec.name, src.spec.kind, loaded=len(src.items), skipped=len(src.skipped)) for src in loaded
    ]
    keeps = [np.ones(len(src.items), dtype=bool) for src in loaded]
    held_items = [item for src in held_loaded for item in src.items]
    held_items += _split_held_out(loaded, keeps, reports, data)
    _drop_duplicates(loaded, keeps, reports, data)
    _drop_contaminated(loaded, keeps, reports, held_items, data)
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_config, _plain_text(loaded, keeps, kind="real"))
    train = [_tokenize(src, keep, report, tokenizer, data) for src, keep, report in zip(loaded, keeps, reports)]
    for corpus, report in zip(train, reports):
        if len(corpus) == 0:
            raise MixerError(f"source '{corpus.name}': no examples left after cleaning ({_why_empty(report)})")
    held_texts = [_render(item, tokenizer) for item in held_items]
    skipped = [msg for src in (*loaded, *held_loaded) for msg in src.skipped]
    return Corpora(train, held_texts, reports, skipped, tokenizer)


def real_training_texts(data: DataConfig, base_dir: Path | None = None) -> list[str]:
    """The real texts that training sees (the held-out split removed), e.g. to prompt synthetic generation."""
    loaded = [load_source(spec, base_dir) for spec in _training_order(data.sources) if spec.kind == "real"]
    keeps = [np.ones(len(src.items), dtype=bool) for src in loaded]
    reports = [SourceReport(src.spec.name, src.spec.kind) for src in loaded]
    _split_held_out(loaded, keeps, reports, data)
    return _plain_text(loaded, keeps, kind="real")


def _training_order(sources: list[SourceConfig]) -> list[SourceConfig]:
    # Real sources first, so that a text present in both a real and a synthetic source counts as real.
    return sorted(sources, key=lambda s: s.kind != "real")


def _split_held_out(
    loaded: list[LoadedSource], keeps: list[np.ndarray], reports: list[SourceReport], data: DataConfig
) -> list:
    real = [(i, j) for i, src in enumerate(loaded) if src.spec.kind == "real" for j in range(len(src.items))]
    keys = [item_key(loaded[i].items[j]) for i, j in real]
    chosen = select_held_out(keys, data.held_out.fraction, data.held_out.max_examples)
    held = []
    for position in chosen:
        i, j = real[position]
        keeps[i][j] = False
        reports[i].held_out += 1
        held.append(loaded[i].items[j])
    return held


def _drop_duplicates(
    loaded: list[LoadedSource], keeps: list[np.ndarray], reports: list[SourceReport], data: DataConfig
) -> None:
    if not data.dedup:
        return
    seen: set[str] = set()
    for src, keep, report in zip(loaded, keeps, reports):
        candidates = np.flatnonzero(keep)
        first = first_occurrences([item_key(src.items[j]) for j in candidates], seen)
        keep[candidates[~first]] = False
        report.duplicates += int((~first).sum())


def _drop_contaminated(
    loaded: list[LoadedSource], keeps: list[np.ndarray], reports: list[SourceReport], held_items: list, data: DataConfig
) -> None:
    held_keys = {item_key(item) for item in held_items}
    if not held_keys:
        return
    for src, keep, report in zip(loaded, keeps, reports):
        for j in np.flatnonzero(keep):
            if item_key(src.items[j]) in held_keys:
                if data.contamination == "error":
                    raise MixerError(
                        f"source '{src.spec.name}': example {j} equals a held-out example "
                        "(set data.contamination: drop to drop such examples)"
                    )
                keep[j] = False
                report.contaminated += 1


def _plain_text(loaded: list[LoadedSource], keeps: list[np.ndarray], kind: str) -> list[str]:
    texts = []
    for src, keep in zip(loaded, keeps):
        if src.spec.kind == kind:
            for j in np.flatnonzero(keep):
                item = src.items[j]
                texts.append(item if isinstance(item, str) else "\n".join(m["content"] for m in item))
    return texts


def _tokenize(
    src: LoadedSource, keep: np.ndarray, report: SourceReport, tokenizer: PreTrainedTokenizerBase, data: DataConfig
) -> Corpus:
    indices = np.flatnonzero(keep)
    items = [src.items[j] for j in indices]
    is_chat = src.spec.messages_field is not None
    if is_chat:
        encoded = [encode_chat(tokenizer, item) for item in items]
        ids_list = [ids for ids, _ in encoded]
        masks = [mask if data.assistant_only_loss else None for _, mask in encoded]
    else:
        ids_list = encode_texts(tokenizer, items, data.add_eos)
        masks = [None] * len(ids_list)
    cap = data.max_tokens_per_example
    if cap is not None:
        ids_list = [ids[:cap] for ids in ids_list]
        masks = [None if m is None else m[:cap] for m in masks]
    passing = np.ones(len(ids_list), dtype=bool)
    if src.spec.kind == "synthetic":
        passing = np.array([passes_filters(ids, data.filters) for ids in ids_list], dtype=bool)
        report.filtered = int((~passing).sum())
    ids_list = [ids for ids, ok in zip(ids_list, passing) if ok]
    masks = [m for m, ok in zip(masks, passing) if ok]
    lengths = np.array([len(ids) for ids in ids_list], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(ids_list).astype(np.int32) if ids_list else np.zeros(0, np.int32)
    loss_mask = np.concatenate(masks) if is_chat and data.assistant_only_loss and masks else None
    report.examples, report.tokens = len(ids_list), int(offsets[-1])
    return Corpus(src.spec.name, src.spec.kind, flat, offsets, indices[passing].astype(np.int64), loss_mask)


def _render(item, tokenizer: PreTrainedTokenizerBase) -> str:
    return item if isinstance(item, str) else tokenizer.apply_chat_template(item, tokenize=False)


def _why_empty(report: SourceReport) -> str:
    parts = [
        f"{n} {label}"
        for label, n in [
            ("held out", report.held_out),
            ("duplicates", report.duplicates),
            ("contaminated", report.contaminated),
            ("filtered", report.filtered),
        ]
        if n
    ]
    return ", ".join(parts) or "the source is empty"
