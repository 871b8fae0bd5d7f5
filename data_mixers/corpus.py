"""Tokenized corpora: every source tokenized once into the store, then cleaned across sources (held-out split,
duplicates, contamination, truncation, filters, the verifier, the diversity selection) into views the mixer
plans with, without copying token ids.

The cleaning is itself an entry of the store (a few small arrays per source), so a second start maps
everything and computes nothing; a changed cleaning setting re-runs only the cleaning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers.config import DataConfig, SourceConfig, TokenizerConfig
from synthmix.data_mixers.diversity import NgramSets, concat_sets, ngram_sets, select_diverse
from synthmix.data_mixers.encoding import EncodeSettings, key_hashes
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.hygiene import contained_in, filter_mask, first_occurrences, select_held_out
from synthmix.data_mixers.sources import PromptCompletion, SourceStream
from synthmix.data_mixers.store import Entry, EntryWriter, cached_entry, digest_of, source_fingerprint, tokenized_source
from synthmix.data_mixers.tokenizer import load_tokenizer, set_chat_template, tokenizer_fingerprint
from synthmix.data_mixers.verifier import Verifier, model_identity, resolve_model, verify_synthetic

_CLEANING_VERSION = 3
_READ_FIELDS = ("format", "split", "text_field", "messages_field", "prompt_field", "completion_field", "on_error",
                "max_examples")  # fmt: skip


@dataclasses.dataclass
class Corpus:
    """One training source after cleaning: a view of its stored token ids (example i is
    `ids[starts[i] : starts[i] + lengths[i]]`), with the index of each example in its source."""

    name: str
    kind: str
    ids: np.ndarray
    """The source's token ids as stored (memory-mapped), including examples cleaning removed."""
    starts: np.ndarray
    """Where each kept example starts in `ids` (int64)."""
    lengths: np.ndarray
    """Tokens of each kept example, after `max_tokens_per_example` (int64)."""
    source_index: np.ndarray
    """Index of each kept example among the source's loaded records (provenance survives dropped records)."""
    loss_mask: np.ndarray | None = None
    """Per-token training mask aligned with `ids` (chat or prompt-completion data); None: every token trains."""

    @classmethod
    def from_offsets(
        cls, name: str, kind: str, ids: np.ndarray, offsets: np.ndarray, source_index: np.ndarray | None = None,
        loss_mask: np.ndarray | None = None,
    ) -> Corpus:  # fmt: skip
        """Every example of a flat array, example i spanning ids[offsets[i]:offsets[i + 1]]."""
        offsets = np.asarray(offsets, dtype=np.int64)
        index = np.arange(len(offsets) - 1) if source_index is None else np.asarray(source_index, dtype=np.int64)
        return cls(name, kind, ids, offsets[:-1].copy(), np.diff(offsets), index, loss_mask)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_tokens(self) -> int:
        """Total tokens of the kept examples."""
        return int(self.lengths.sum())

    def example_ids(self, i: int) -> np.ndarray:
        """The token ids of kept example `i`."""
        return self.ids[self.starts[i] : self.starts[i] + self.lengths[i]]

    def example_mask(self, i: int) -> np.ndarray | None:
        """The loss mask of kept example `i` (None when every token trains)."""
        if self.loss_mask is None:
            return None
        return self.loss_mask[self.starts[i] : self.starts[i] + self.lengths[i]].astype(bool)


@dataclasses.dataclass
class SourceReport:
    """What happened to one source's records on the way to training, and where its tokens came from."""

    name: str
    kind: str
    loaded: int = 0
    skipped: int = 0
    held_out: int = 0
    duplicates: int = 0
    contaminated: int = 0
    filtered: int = 0
    unverified: int = 0
    """Synthetic examples the verifier rejected as too surprising (above its upper bound, data.filters.verifier)."""
    too_typical: int = 0
    """Synthetic examples the verifier rejected as too typical (below its lower bound, `min_quantile`/`min_ppl`)."""
    not_novel: int = 0
    """Synthetic examples with too few n-grams new against the real text (data.filters.diversity.min_novelty)."""
    near_duplicates: int = 0
    """Synthetic examples too close to another synthetic one (data.filters.diversity.max_overlap)."""
    examples: int = 0
    tokens: int = 0
    store: str = ""
    """`built` (tokenized now) or `cached` (mapped from the store)."""
    seconds: float = 0.0
    """Time spent building, or opening and verifying, its store entry."""
    entry: str = ""
    """The store entry's folder."""


@dataclasses.dataclass(frozen=True)
class HeldOutExample:
    """One held-out real example, tokenized exactly as training examples are."""

    ids: np.ndarray
    loss_mask: np.ndarray | None = None
    """The tokens training's loss counts (assistant-only or completion-only loss); None: every token."""
    reply_start: int | None = None
    """Chats and prompt-completion pairs: where the last reply (assistant turn or completion) begins; None for
    plain text."""
    source: str = ""
    index: int = -1
    """The example's source and its index among the source's loaded records."""


@dataclasses.dataclass
class Corpora:
    """Everything the mixer and the eval hook need from the data section."""

    train: list[Corpus]
    held_out: list[HeldOutExample]
    """The held-out real examples, never trained on."""
    reports: list[SourceReport]
    skipped_messages: list[str]
    tokenizer: PreTrainedTokenizerBase
    cleaning: dict[str, Any] = dataclasses.field(default_factory=dict)
    """How the cleaning entry was obtained: its folder, `built` or `cached`, seconds."""


def build_corpora(
    data: DataConfig,
    tokenizer_config: TokenizerConfig | None = None,
    base_dir: Path | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool | None = None,
    base_model: str | None = None,
) -> Corpora:
    """Tokenize (or map from the store) and clean every source of `data`; the tokenizer is trained on the real
    training text if none is named or given, and gets `data.chat_template` when one is set (a given tokenizer
    too). `progress`: show progress bars (None: on a terminal only). `base_model`: the run's model.name, which
    `data.filters.verifier.model: base` scores with."""
    if tokenizer is None:
        text = lambda: real_training_texts(data, base_dir)  # noqa: E731  (read only when the cache misses)
        fingerprint = _training_text_fingerprint(data, base_dir)
        tokenizer = load_tokenizer(tokenizer_config or TokenizerConfig(), text, fingerprint, data.cache_dir)
    set_chat_template(tokenizer, data.chat_template)
    _check_chat_template(data, tokenizer)
    settings = EncodeSettings(data.add_eos, data.assistant_only_loss, data.completion_only_loss)
    fingerprint = tokenizer_fingerprint(tokenizer)
    store = Path(data.cache_dir) / "store"
    order = _training_order(data.sources)

    def tokenized(spec: SourceConfig) -> Entry:
        return tokenized_source(spec, tokenizer, fingerprint, settings, store, data.verify_cache, base_dir, progress)

    train_entries = [tokenized(spec) for spec in order]
    held_entries = [tokenized(spec) for spec in data.held_out.sources]
    verifier = _verifier_setup(data, base_model, tokenizer, progress)
    cleaned = _cleaned(data, order, train_entries, held_entries, store, verifier)
    train, reports = [], []
    for i, (spec, entry) in enumerate(zip(order, train_entries)):
        rows = cleaned.arrays[f"rows_{i}"]
        offsets = entry.arrays["offsets"]
        lengths = np.diff(offsets)[rows]
        if data.max_tokens_per_example is not None:
            lengths = np.minimum(lengths, data.max_tokens_per_example)
        mask = entry.arrays.get("loss_mask")
        train.append(Corpus(spec.name, spec.kind, entry.arrays["ids"], offsets[rows], lengths, np.asarray(rows), mask))
        counts = cleaned.meta["reports"][i]
        reports.append(
            SourceReport(
                spec.name, spec.kind, **counts, examples=len(rows), tokens=int(lengths.sum()),
                store="built" if entry.built else "cached", seconds=round(entry.seconds, 3), entry=str(entry.folder),
            )
        )  # fmt: skip
    held_out = _held_out_examples(cleaned, train_entries + held_entries)
    skipped = [msg for entry in (*train_entries, *held_entries) for msg in entry.meta["skipped_messages"]]
    how = {"entry": str(cleaned.folder), "store": "built" if cleaned.built else "cached", "seconds": cleaned.seconds}
    for step in ("verifier", "diversity"):
        if step in cleaned.meta:
            how[step] = cleaned.meta[step]
    return Corpora(train, held_out, reports, skipped, tokenizer, how)


def _check_chat_template(data: DataConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """A chat source is rendered with the chat template: a tokenizer without one is an error before any reading."""
    if tokenizer.chat_template is not None:
        return
    listed = [("data.sources", data.sources), ("data.held_out.sources", data.held_out.sources)]
    for where, sources in listed:
        for i, source in enumerate(sources):
            if source.messages_field is not None:
                raise MixerError(
                    f"{where}[{i}] ({source.name}): chats are rendered with the tokenizer's chat template, and "
                    f"tokenizer {tokenizer.name_or_path!r} has none; set data.chat_template: chatml, or use an "
                    "instruct model's tokenizer (tokenizer.name)"
                )


def _training_order(sources: list[SourceConfig]) -> list[SourceConfig]:
    # Real sources first, so that a text present in both a real and a synthetic source counts as real.
    return sorted(sources, key=lambda s: s.kind != "real")


# ---------------------------------------------------------------------------------------------- cleaning
@dataclasses.dataclass
class _VerifierSetup:
    """The verifier of a run, before it is loaded: loading waits for a cache miss of the cleaning entry."""

    model: str
    identity: dict[str, Any]
    load: Callable[[], Verifier]


def _verifier_setup(
    data: DataConfig, base_model: str | None, tokenizer: PreTrainedTokenizerBase, progress: bool | None
) -> _VerifierSetup | None:
    verifier = data.filters.verifier
    if verifier.model is None:
        return None
    model = resolve_model(verifier, base_model)
    return _VerifierSetup(model, model_identity(model), lambda: Verifier(verifier, model, tokenizer, progress))


def _cleaned(
    data: DataConfig,
    order: list[SourceConfig],
    train: list[Entry],
    held: list[Entry],
    store: Path,
    verifier: _VerifierSetup | None = None,
) -> Entry:
    """The cleaning entry: per training source the rows it keeps and what removed the others, and the rows of
    the held-out examples; keyed by the entries it reads, every cleaning setting and the verifier model."""
    described = {
        "version": _CLEANING_VERSION,
        "train": [[spec.name, spec.kind, entry.folder.name] for spec, entry in zip(order, train)],
        "held": [entry.folder.name for entry in held],
        "held_out": {"fraction": data.held_out.fraction, "max_examples": data.held_out.max_examples},
        "dedup": data.dedup,
        "contamination": data.contamination,
        "filters": dataclasses.asdict(data.filters),
        "max_tokens_per_example": data.max_tokens_per_example,
        "verifier_model": None if verifier is None else verifier.identity,
    }

    def build(writer: EntryWriter) -> dict[str, Any]:
        cleaning = _Cleaning(order, train, held)
        cleaning.hold_out(data.held_out.fraction, data.held_out.max_examples)
        if data.dedup:
            cleaning.drop_duplicates()
        cleaning.drop_contaminated(data.contamination)
        cleaning.filter_synthetic(data)
        meta: dict[str, Any] = {}
        if verifier is not None:
            meta["verifier"] = cleaning.verify_synthetic(verifier.load(), data.max_tokens_per_example)
        diversity = data.filters.diversity
        if diversity.max_overlap is not None or diversity.min_novelty is not None:
            meta["diversity"] = cleaning.select_diverse(data)
        cleaning.check_not_empty()
        for i, keep in enumerate(cleaning.keeps):
            writer.append(f"rows_{i}", np.flatnonzero(keep).astype(np.int64))
        writer.append("held_out", np.asarray(cleaning.held, dtype=np.int64).reshape(-1, 2))
        return {"reports": cleaning.reports, **meta}

    return cached_entry(store, "clean-" + digest_of(described), data.verify_cache, build)


class _Cleaning:
    """The cross-source cleaning, step by step, over content hashes and lengths (never over texts)."""

    def __init__(self, order: list[SourceConfig], train: list[Entry], held: list[Entry]) -> None:
        self.order, self.train = order, train
        self.entries = train + held  # indexed as `held` pairs index them
        self.keeps = [np.ones(len(e.arrays["keys"]), dtype=bool) for e in train]
        self.reports = [
            {"loaded": e.meta["examples"], "skipped": e.meta["skipped"], "held_out": 0, "duplicates": 0,
             "contaminated": 0, "filtered": 0, "unverified": 0, "too_typical": 0, "not_novel": 0,
             "near_duplicates": 0}
            for e in train
        ]  # fmt: skip
        # Held-out examples as (source, row): explicit held-out sources come after the training ones.
        self.held = [(len(train) + j, row) for j, e in enumerate(held) for row in range(len(e.arrays["keys"]))]
        self.held_keys = [e.arrays["keys"] for e in held]

    def hold_out(self, fraction: float, cap: int | None) -> None:
        real = [i for i, spec in enumerate(self.order) if spec.kind == "real"]
        keys = np.concatenate([self.train[i].arrays["keys"] for i in real]) if real else np.zeros((0, 2), np.uint64)
        owners = np.concatenate([np.full(len(self.keeps[i]), i) for i in real]) if real else np.zeros(0, np.int64)
        rows = np.concatenate([np.arange(len(self.keeps[i])) for i in real]) if real else np.zeros(0, np.int64)
        for position in select_held_out(keys, fraction, cap):
            i, row = int(owners[position]), int(rows[position])
            self.keeps[i][row] = False
            self.reports[i]["held_out"] += 1
            self.held.append((i, row))
            self.held_keys.append(keys[position : position + 1])

    def drop_duplicates(self) -> None:
        candidates = [np.flatnonzero(keep) for keep in self.keeps]
        keys = np.concatenate([e.arrays["keys"][rows] for e, rows in zip(self.train, candidates)])
        first = first_occurrences(keys)
        start = 0
        for i, rows in enumerate(candidates):
            duplicate = ~first[start : start + len(rows)]
            self.keeps[i][rows[duplicate]] = False
            self.reports[i]["duplicates"] += int(duplicate.sum())
            start += len(rows)

    def drop_contaminated(self, mode: str) -> None:
        held = np.concatenate(self.held_keys) if self.held_keys else np.zeros((0, 2), np.uint64)
        for i, (spec, entry) in enumerate(zip(self.order, self.train)):
            rows = np.flatnonzero(self.keeps[i])
            hit = contained_in(entry.arrays["keys"][rows], held)
            if hit.any() and mode == "error":
                raise MixerError(
                    f"source '{spec.name}': example {int(rows[hit][0])} equals a held-out example "
                    "(set data.contamination: drop to drop such examples)"
                )
            self.keeps[i][rows[hit]] = False
            self.reports[i]["contaminated"] += int(hit.sum())

    def filter_synthetic(self, data: DataConfig) -> None:
        for i, (spec, entry) in enumerate(zip(self.order, self.train)):
            if spec.kind != "synthetic":
                continue
            rows = np.flatnonzero(self.keeps[i])
            offsets = entry.arrays["offsets"]
            lengths = np.diff(offsets)[rows]
            if data.max_tokens_per_example is not None:
                lengths = np.minimum(lengths, data.max_tokens_per_example)
            passing = filter_mask(entry.arrays["ids"], offsets[rows], lengths, data.filters)
            self.keeps[i][rows[~passing]] = False
            self.reports[i]["filtered"] += int((~passing).sum())

    def verify_synthetic(self, verifier: Verifier, max_tokens_per_example: int | None) -> dict[str, Any]:
        """Drop the synthetic examples the verifier rejects (after every other filter); its summary."""
        kept = [np.flatnonzero(keep) for keep in self.keeps]

        def examples(i: int) -> list[np.ndarray]:
            offsets, ids = self.train[i].arrays["offsets"], self.train[i].arrays["ids"]
            ends = offsets[kept[i] + 1]
            if max_tokens_per_example is not None:  # what training would see of each example
                ends = np.minimum(ends, offsets[kept[i]] + max_tokens_per_example)
            return [ids[offsets[r] : end] for r, end in zip(kept[i], ends, strict=True)]

        if verifier.config.real_from == "held_out":
            if not self.held:
                raise MixerError(
                    "data.filters.verifier.real_from: held_out, but there is no held-out text (set "
                    "data.held_out.fraction or data.held_out.sources, or real_from: train)"
                )
            real = []
            for i, row in self.held:
                offsets = self.entries[i].arrays["offsets"]
                real.append(self.entries[i].arrays["ids"][offsets[row] : offsets[row + 1]])
        else:
            real = [ex for i, spec in enumerate(self.order) if spec.kind == "real" for ex in examples(i)]
        synthetic = [i for i, spec in enumerate(self.order) if spec.kind == "synthetic"]
        verdicts, meta = verify_synthetic(verifier, real, [examples(i) for i in synthetic])
        for i, verdict in zip(synthetic, verdicts, strict=True):
            self.keeps[i][kept[i][~verdict.passing]] = False
            self.reports[i]["unverified"] += int(verdict.too_surprising.sum())
            self.reports[i]["too_typical"] += int((verdict.too_typical & ~verdict.too_surprising).sum())
        return meta

    def select_diverse(self, data: DataConfig) -> dict[str, Any]:
        """Drop near-duplicate and not novel synthetic examples (after the verifier); its summary."""
        n = data.filters.diversity.ngram

        def sets(i: int, rows: np.ndarray) -> NgramSets:
            offsets = self.train[i].arrays["offsets"]
            lengths = np.diff(offsets)[rows]
            if data.max_tokens_per_example is not None:  # what training would see of each example
                lengths = np.minimum(lengths, data.max_tokens_per_example)
            return ngram_sets(self.train[i].arrays["ids"], offsets[rows], lengths, n)

        kept = [np.flatnonzero(keep) for keep in self.keeps]
        synthetic = [i for i, spec in enumerate(self.order) if spec.kind == "synthetic"]
        real = concat_sets([sets(i, kept[i]) for i, spec in enumerate(self.order) if spec.kind == "real"])
        keys = [self.train[i].arrays["keys"][kept[i]] for i in synthetic]
        selections, meta = select_diverse([sets(i, kept[i]) for i in synthetic], keys, real, data.filters.diversity)
        for i, chosen in zip(synthetic, selections, strict=True):
            self.keeps[i][kept[i][chosen.not_novel | chosen.near_duplicate]] = False
            self.reports[i]["not_novel"] += int(chosen.not_novel.sum())
            self.reports[i]["near_duplicates"] += int(chosen.near_duplicate.sum())
        return meta

    def check_not_empty(self) -> None:
        for spec, keep, report in zip(self.order, self.keeps, self.reports):
            if not keep.any():
                raise MixerError(f"source '{spec.name}': no examples left after cleaning ({_why_empty(report)})")


def _held_out_examples(cleaned: Entry, entries: list[Entry]) -> list[HeldOutExample]:
    held = []
    for source, row in np.asarray(cleaned.arrays["held_out"]).reshape(-1, 2):
        arrays = entries[int(source)].arrays
        span = slice(int(arrays["offsets"][row]), int(arrays["offsets"][row + 1]))
        mask = arrays.get("loss_mask")
        reply_start = arrays.get("reply_start")
        held.append(
            HeldOutExample(
                ids=np.asarray(arrays["ids"][span], dtype=np.int64),
                loss_mask=None if mask is None else np.asarray(mask[span], dtype=bool),
                reply_start=None if reply_start is None else int(reply_start[row]),
                source=entries[int(source)].meta["source"],
                index=int(row),
            )
        )
    return held


def _why_empty(report: dict[str, int]) -> str:
    parts = [f"{report[key]} {label}" for key, label in
             [("held_out", "held out"), ("duplicates", "duplicates"), ("contaminated", "contaminated"),
              ("filtered", "filtered"), ("unverified", "rejected by the verifier"),
              ("too_typical", "too typical for the verifier"), ("not_novel", "not novel"),
              ("near_duplicates", "near duplicates")] if report.get(key)]  # fmt: skip
    return ", ".join(parts) or "the source is empty"


# ---------------------------------------------------------------------------------------------- real text
def real_training_texts(data: DataConfig, base_dir: Path | None = None) -> Iterator[str]:
    """The real texts that training sees, streamed, the held-out split removed (chats and prompt-completion
    pairs as plain text): what a local tokenizer is trained on and what synthetic generation is prompted with.

    Two passes over the real sources: one to hash every example and choose the held-out ones (the choice
    spans sources), one to hand out the others.
    """
    real = [spec for spec in _training_order(data.sources) if spec.kind == "real"]
    keys = np.concatenate([key_hashes(batch) for spec in real for batch in SourceStream(spec, base_dir).batches()])
    held = set(select_held_out(keys, data.held_out.fraction, data.held_out.max_examples).tolist())
    position = 0
    for spec in real:
        for batch in SourceStream(spec, base_dir).batches():
            for item in batch:
                if position not in held:
                    yield _as_plain_text(item)
                position += 1


def _as_plain_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, PromptCompletion):
        return _as_plain_text(item.prompt) + _as_plain_text(item.completion)
    return "\n".join(message["content"] for message in item)


def _training_text_fingerprint(data: DataConfig, base_dir: Path | None) -> str:
    """What the real training text depends on: the real sources' contents and how they are read, and the
    held-out split (so a cached tokenizer is found without reading the text)."""
    real = [spec for spec in _training_order(data.sources) if spec.kind == "real"]
    described = {
        "sources": [[source_fingerprint(spec, base_dir), [getattr(spec, key) for key in _READ_FIELDS]]
                    for spec in real],
        "held_out": [data.held_out.fraction, data.held_out.max_examples],
    }  # fmt: skip
    return digest_of(described)
