"""The mixer: an exact, deterministic, resumable real/synthetic stream of rows, sharded across ranks.

An epoch is one pass over the real data (or, at ratio 1, over the synthetic data). Its plan is a pure
function of (corpora, settings, seed, epoch, ratio scale): the synthetic budget is the real budget times
r / (1 - r), counted in tokens or examples, and the last synthetic example drawn is cut so the token count
is exact. Rows are made in one of two ways (`data.packing`):
- `wrap`: the stream is cut into rows of `seq_len` tokens; an example that does not fit continues in the next
  row (continuous text);
- `bfd`: whole examples are packed into rows by best-fit decreasing; an example longer than a row follows
  `data.overflow` (truncate, split into row-sized pieces, or drop). The ratio counts the tokens the rows hold,
  after truncation or drop.
Resuming only re-plans the current epoch, so it costs the same at position 10 as at 10 million.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from synthmix.data_mixers.config import KINDS, DataConfig, resolved_packing
from synthmix.data_mixers.corpus import Corpus
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.rows import best_fit_decreasing, rows_from_assignment
from synthmix.data_mixers.schedules import ratio_for_epoch

_DRAW, _ORDER, _ROWS = 1, 2, 3  # seed-sequence purposes, so each random choice has its own stream


@dataclasses.dataclass(frozen=True)
class Example:
    """One example (or a piece of one) with its provenance, as the trainer receives it."""

    source: str
    kind: str
    index: int
    """Index of the example in its source."""
    ids: np.ndarray
    loss_mask: np.ndarray | None
    start: int = 0
    """Offset of `ids` within the example: pieces cut by packing start past 0."""


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """Everything an epoch's plan depends on besides the data. Frozen when the epoch starts and saved with the
    stream position, so a resume with changed settings finishes the epoch under way with the plan it started
    with (every real example still exactly once); the new values take effect from the next epoch."""

    target_ratio: float
    unit: str
    stratify: bool
    allow_repeat: bool
    seed: int
    weights: tuple[tuple[str, float | None], ...]
    """(source name, weight) of every source of the config."""
    packing: str = "wrap"
    seq_len: int = 0
    """Row length the plan packs for (bfd only; wrap rows are cut at the run's seq_len as they are taken)."""
    overflow: str = ""


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The ordered entries of one epoch (corpus number, example row, first token, tokens taken), and with
    bfd the rows they are packed into."""

    epoch: int
    target_ratio: float
    budgets: dict[str, int]
    """Units (data.unit) planned per kind: the real budget, and the synthetic budget the ratio asks for."""
    corpus: np.ndarray
    row: np.ndarray
    start: np.ndarray
    """Offset of the entry in its example (past 0 for the later pieces of a split example)."""
    n_tokens: np.ndarray
    synthetic: np.ndarray
    """True where the entry comes from a synthetic corpus."""
    row_starts: np.ndarray | None = None
    """bfd: row k holds entries row_entries[row_starts[k]:row_starts[k + 1]]."""
    row_entries: np.ndarray | None = None
    overflow: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """bfd: per kind, the examples truncated, split or dropped and the tokens that removed."""

    @property
    def rows(self) -> int | None:
        """Rows of the plan (bfd), or None (wrap: rows are cut as they are taken)."""
        return None if self.row_starts is None else len(self.row_starts) - 1

    def shard(self, rank: int, world_size: int) -> EpochPlan:
        """The part of `rank`: every world_size-th entry (wrap) or row (bfd), so ranks are disjoint and cover
        the plan."""
        if self.row_starts is None:
            pick = np.arange(rank, len(self), world_size)
            return dataclasses.replace(self, **_take(self, pick))
        chosen = np.arange(rank, self.rows, world_size)
        sizes = np.diff(self.row_starts)[chosen]
        entries = np.concatenate([self.row_entries[self.row_starts[k] : self.row_starts[k + 1]] for k in chosen]
                                 ) if len(chosen) else np.zeros(0, np.int64)  # fmt: skip
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return dataclasses.replace(
            self, **_take(self, entries), row_starts=starts, row_entries=np.arange(len(entries), dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.corpus)


def _take(plan: EpochPlan, pick: np.ndarray) -> dict[str, np.ndarray]:
    return {name: getattr(plan, name)[pick] for name in ("corpus", "row", "start", "n_tokens", "synthetic")}


class Mixer:
    """Streams rows of examples from `corpora` with the configured synthetic ratio; state survives checkpoints.

    `seq_len` is the run's row length: the length of wrap rows, and what bfd packs for.
    """

    def __init__(
        self,
        corpora: list[Corpus],
        data: DataConfig,
        seed: int,
        epochs: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seq_len: int = 256,
    ) -> None:
        if not 0 <= rank < world_size:
            raise MixerError(f"rank {rank} is outside world size {world_size}")
        self.corpora = corpora
        self.data = data
        self.seed = seed
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.seq_len = seq_len
        self.epoch = 1
        self.position = 0
        """Entries (wrap) or rows (bfd) of this rank's share of the epoch already taken."""
        self.token_offset = 0
        self.ratio_scale = 1.0
        self._frozen: PlanSettings | None = None  # the settings of the epoch under way, once it has started
        self._cache: dict[tuple[int, PlanSettings], EpochPlan] = {}
        self._shard: tuple[tuple[int, PlanSettings], EpochPlan] | None = None
        _check_kinds_present(corpora, data, epochs)
        _check_no_empty_examples(corpora)
        self._frozen = self.settings(1)

    # ------------------------------------------------------------ planning
    def settings(self, epoch: int) -> PlanSettings:
        """The settings `epoch` is planned with: frozen for the epoch under way, else from the config now."""
        if epoch == self.epoch and self._frozen is not None:
            return self._frozen
        ratio = float(np.clip(ratio_for_epoch(self.data, epoch, self.epochs) * self.ratio_scale, 0.0, 1.0))
        packing = resolved_packing(self.data)
        bfd = packing == "bfd"
        return PlanSettings(
            target_ratio=ratio,
            unit=self.data.unit,
            stratify=self.data.stratify,
            allow_repeat=self.data.allow_repeat,
            seed=self.seed,
            weights=tuple((s.name, s.weight) for s in self.data.sources),
            packing=packing,
            seq_len=self.seq_len if bfd else 0,
            overflow=self.data.overflow if bfd else "",
        )

    def target_ratio(self, epoch: int) -> float:
        """The synthetic ratio epoch `epoch` is planned with: the schedule's value times the ratio scale."""
        return self.settings(epoch).target_ratio

    def plan(self, epoch: int) -> EpochPlan:
        """The global plan of `epoch` (all ranks), computed once and cached."""
        key = (epoch, self.settings(epoch))
        if key not in self._cache:
            self._cache = {key: self._make_plan(epoch, key[1])}
        return self._cache[key]

    def shard_plan(self, epoch: int) -> EpochPlan:
        """This rank's part of the plan of `epoch`."""
        key = (epoch, self.settings(epoch))
        if self._shard is None or self._shard[0] != key:
            self._shard = (key, self.plan(epoch).shard(self.rank, self.world_size))
        return self._shard[1]

    def shard_tokens(self, epoch: int) -> list[int]:
        """Tokens each rank receives in `epoch`."""
        plan = self.plan(epoch)
        return [int(plan.shard(r, self.world_size).n_tokens.sum()) for r in range(self.world_size)]

    def shard_rows(self, epoch: int) -> list[int]:
        """Rows each rank receives in `epoch` (the trainer sizes its steps by the largest)."""
        plan = self.plan(epoch)
        if plan.row_starts is not None:
            return [len(range(r, plan.rows, self.world_size)) for r in range(self.world_size)]
        return [math.ceil(tokens / self.seq_len) for tokens in self.shard_tokens(epoch)]

    def _make_plan(self, epoch: int, settings: PlanSettings) -> EpochPlan:
        ratio = settings.target_ratio
        real = [i for i, c in enumerate(self.corpora) if c.kind == "real"]
        synthetic = [i for i, c in enumerate(self.corpora) if c.kind == "synthetic"]
        _check_ratio_feasible(ratio, real, synthetic, epoch)
        if ratio >= 1.0:
            real_budget, synthetic_budget = 0, sum(self._size(i, settings) for i in synthetic)
        else:
            real_budget = sum(self._size(i, settings) for i in real)
            synthetic_budget = int(round(real_budget * ratio / (1.0 - ratio)))
        parts = []
        for ids, budget in ((real, real_budget), (synthetic, synthetic_budget)):
            for i, share in zip(ids, self._split(ids, budget, settings)):
                parts.append(self._draw(i, share, epoch, settings))
        corpus = np.concatenate([np.full(len(rows), i, np.int32) for i, rows, _ in parts])
        row = np.concatenate([rows for _, rows, _ in parts]).astype(np.int64)
        n_tokens = np.concatenate([tokens for _, _, tokens in parts]).astype(np.int64)
        start = np.zeros(len(row), dtype=np.int64)
        overflow = self._overflow_counts(corpus, row, settings)
        if settings.overflow == "split":
            corpus, row, start, n_tokens = _split_long(corpus, row, n_tokens, settings.seq_len)
        is_synthetic = np.array([self.corpora[i].kind == "synthetic" for i in range(len(self.corpora))])[corpus]
        order = self._order(n_tokens, is_synthetic, epoch, settings)
        fields = (corpus[order], row[order], start[order], n_tokens[order], is_synthetic[order])
        budgets = {"real": real_budget, "synthetic": synthetic_budget}
        plan = EpochPlan(epoch, ratio, budgets, *fields, overflow=overflow)
        return self._pack(plan, epoch, settings) if settings.packing == "bfd" else plan

    # ------------------------------------------------------------ lengths under the overflow policy
    def _lengths(self, i: int, settings: PlanSettings) -> np.ndarray:
        """Tokens each example of corpus `i` contributes: its length, or at most a row under bfd + truncate."""
        lengths = self.corpora[i].lengths
        return np.minimum(lengths, settings.seq_len) if settings.overflow == "truncate" else lengths

    def _eligible(self, i: int, settings: PlanSettings) -> np.ndarray:
        """Rows of corpus `i` the epoch may draw: all of them, but those longer than a row under bfd + drop."""
        lengths = self.corpora[i].lengths
        return np.flatnonzero(lengths <= settings.seq_len) if settings.overflow == "drop" else np.arange(len(lengths))

    def _size(self, i: int, settings: PlanSettings) -> int:
        eligible = self._eligible(i, settings)
        return int(self._lengths(i, settings)[eligible].sum()) if settings.unit == "tokens" else len(eligible)

    def _overflow_counts(self, corpus: np.ndarray, row: np.ndarray, settings: PlanSettings) -> dict:
        if settings.packing != "bfd":
            return {}
        counts = {kind: {"examples": 0, "tokens": 0} for kind in KINDS}
        for i, c in enumerate(self.corpora):
            if settings.overflow == "drop":  # examples the epoch never draws
                long = c.lengths[c.lengths > settings.seq_len]
            else:
                drawn = c.lengths[row[corpus == i]]
                long = drawn[drawn > settings.seq_len]
            counts[c.kind]["examples"] += len(long)
            if settings.overflow != "split":  # split keeps every token; truncate cuts the rest, drop all of it
                kept = 0 if settings.overflow == "drop" else settings.seq_len
                counts[c.kind]["tokens"] += int((long - kept).sum())
        return {"policy": settings.overflow, **counts}

    # ------------------------------------------------------------ the draw
    def _split(self, ids: list[int], budget: int, settings: PlanSettings) -> list[int]:
        """Integer budgets per source that add up to `budget` exactly (largest remainder)."""
        if not ids:
            return []
        configured = dict(settings.weights)
        weights = [configured.get(self.corpora[i].name) for i in ids]
        if any(w is None for w in weights):  # validate_data makes weights all-or-none per kind
            weights = [self._size(i, settings) for i in ids]
        shares = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * budget
        whole = np.floor(shares).astype(np.int64)
        leftover = budget - int(whole.sum())
        whole[np.argsort(-(shares - whole), kind="stable")[:leftover]] += 1
        return whole.tolist()

    def _draw(self, i: int, budget: int, epoch: int, settings: PlanSettings) -> tuple[int, np.ndarray, np.ndarray]:
        """Rows of corpus `i` drawn without replacement (passes repeat only if allowed) to meet `budget`."""
        corpus = self.corpora[i]
        eligible = self._eligible(i, settings)
        lengths = self._lengths(i, settings)
        if budget <= 0:
            return i, np.zeros(0, np.int64), np.zeros(0, np.int64)
        size = self._size(i, settings)
        if size == 0:
            raise MixerError(f"source '{corpus.name}': every example is longer than train.seq_len {settings.seq_len}"
                             " and data.overflow is drop")  # fmt: skip
        if budget > size and corpus.kind == "synthetic" and not settings.allow_repeat:
            raise MixerError(
                f"epoch {epoch}: synthetic_ratio {settings.target_ratio:g} needs {budget:,} synthetic "
                f"{settings.unit} from source '{corpus.name}', which has {size:,}; add synthetic data, lower "
                "the ratio, or set data.allow_repeat: true"
            )
        rng = np.random.default_rng([settings.seed, epoch, _DRAW, i])
        passes = -(-budget // size)
        rows = np.concatenate([eligible[rng.permutation(len(eligible))] for _ in range(passes)])
        units = lengths[rows] if settings.unit == "tokens" else np.ones(len(rows), np.int64)
        cumulative = np.cumsum(units)
        last = int(np.searchsorted(cumulative, budget, side="left"))
        rows = rows[: last + 1]
        taken = lengths[rows].copy()
        if settings.unit == "tokens":
            taken[-1] -= int(cumulative[last]) - budget  # cut the last example so the total is exact
        return i, rows, taken

    def _order(self, n_tokens: np.ndarray, is_synthetic: np.ndarray, epoch: int, settings: PlanSettings) -> np.ndarray:
        rng = np.random.default_rng([settings.seed, epoch, _ORDER])
        order = rng.permutation(len(n_tokens))
        if not settings.stratify or settings.packing == "bfd":  # bfd interleaves rows instead (see _pack)
            return order
        units = n_tokens if settings.unit == "tokens" else np.ones(len(n_tokens), np.int64)
        return order[_interleave(units[order], is_synthetic[order])]

    def _pack(self, plan: EpochPlan, epoch: int, settings: PlanSettings) -> EpochPlan:
        """bfd rows of the plan's entries: one packing over all of them, or (stratify) one per kind with the
        rows interleaved by their share of their kind's tokens, so every window of rows holds the ratio up to
        one row. The rows come in a seeded random order."""
        groups = [np.flatnonzero(plan.synthetic == flag) for flag in (False, True)] if settings.stratify else [
            np.arange(len(plan))]  # fmt: skip
        rows: list[np.ndarray] = []
        for members in groups:
            if len(members):
                starts, items = rows_from_assignment(best_fit_decreasing(plan.n_tokens[members], settings.seq_len))
                rows += [members[items[starts[k] : starts[k + 1]]] for k in range(len(starts) - 1)]
        order = np.random.default_rng([settings.seed, epoch, _ROWS]).permutation(len(rows))
        if settings.stratify:
            kinds = np.array([bool(plan.synthetic[r[0]]) for r in rows])
            units = np.array([int(plan.n_tokens[r].sum()) if settings.unit == "tokens" else len(r) for r in rows])
            order = order[_interleave(units[order], kinds[order])]
        sizes = np.array([len(rows[k]) for k in order], dtype=np.int64)
        entries = np.concatenate([rows[k] for k in order]) if rows else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return dataclasses.replace(plan, row_starts=starts, row_entries=entries.astype(np.int64))

    # ------------------------------------------------------------ streaming
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (1-based) from its first example, freezing the settings it is planned with."""
        self._frozen = None
        self.epoch, self.position, self.token_offset = epoch, 0, 0
        self._frozen = self.settings(epoch)

    def remaining_tokens(self) -> int:
        """Tokens of this rank's share of the current epoch not yet taken."""
        plan = self.shard_plan(self.epoch)
        if plan.row_starts is not None:
            return int(plan.n_tokens[plan.row_entries[plan.row_starts[self.position] :]].sum())
        return int(plan.n_tokens[self.position :].sum()) - self.token_offset

    def rows_left(self) -> int:
        """Rows of this rank's share of the current epoch not yet taken."""
        plan = self.shard_plan(self.epoch)
        if plan.row_starts is not None:
            return plan.rows - self.position
        return math.ceil(self.remaining_tokens() / self.seq_len)

    def next_row(self) -> list[Example]:
        """The next row of this rank's share: the pieces that fill it, in order (none past the epoch's end)."""
        plan = self.shard_plan(self.epoch)
        if plan.row_starts is None:
            return self.take_tokens(self.seq_len)
        if self.position >= plan.rows:
            return []
        entries = plan.row_entries[plan.row_starts[self.position] : plan.row_starts[self.position + 1]]
        self.position += 1
        return [self._piece(plan, int(e), 0, int(plan.n_tokens[e])) for e in entries]

    def __iter__(self) -> Iterator[Example]:
        """The rest of the current epoch, example by example (row by row with bfd)."""
        plan = self.shard_plan(self.epoch)
        if plan.row_starts is not None:
            while self.position < plan.rows:
                yield from self.next_row()
            return
        while self.position < len(plan):
            yield from self.take_tokens(int(plan.n_tokens[self.position]) - self.token_offset)

    def take_tokens(self, n: int) -> list[Example]:
        """wrap: up to `n` tokens from the current epoch, as example pieces in stream order (fewer at its end)."""
        plan = self.shard_plan(self.epoch)
        pieces = []
        while n > 0 and self.position < len(plan):
            remaining = int(plan.n_tokens[self.position]) - self.token_offset
            take = min(n, remaining)
            pieces.append(self._piece(plan, self.position, self.token_offset, take))
            n -= take
            self.token_offset += take
            if self.token_offset == int(plan.n_tokens[self.position]):
                self.position, self.token_offset = self.position + 1, 0
        return pieces

    def _piece(self, plan: EpochPlan, entry: int, offset: int, length: int) -> Example:
        corpus = self.corpora[int(plan.corpus[entry])]
        row = int(plan.row[entry])
        within = int(plan.start[entry]) + offset
        begin = int(corpus.starts[row]) + within
        mask = None if corpus.loss_mask is None else corpus.loss_mask[begin : begin + length].astype(bool)
        ids = corpus.ids[begin : begin + length]
        return Example(corpus.name, corpus.kind, int(corpus.source_index[row]), ids, mask, within)

    # ------------------------------------------------------------ state
    def reduce_ratio(self, factor: float) -> None:
        """Scale the synthetic ratio by `factor` from the next epoch on, or from this one if none of it was taken
        yet (a collapse action); an epoch under way keeps its plan, so it still holds each real example once."""
        self.ratio_scale *= factor
        if self.position == 0 and self.token_offset == 0:  # the current epoch has not started yet
            self._frozen = None
            self._frozen = self.settings(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: small, JSON-serialisable, enough to resume at the exact next token."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "token_offset": self.token_offset,
            "ratio_scale": self.ratio_scale,
            "epoch_settings": None if self._frozen is None else dataclasses.asdict(self._frozen),
            "rank": self.rank,
            "world_size": self.world_size,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` left off (same data and world size required; the epoch under way keeps
        the settings it was planned with, whatever the config says now)."""
        if state.get("fingerprint") != self.fingerprint():
            raise MixerError(
                "the checkpoint's stream was planned over other data (sources, their cleaning or their sizes "
                "changed); resume with the data it was trained on, or start a new run"
            )
        if state.get("world_size") != self.world_size:
            raise MixerError(
                f"mixer state was saved with {state.get('world_size')} processes; this run has {self.world_size}"
            )
        frozen = state.get("epoch_settings")
        settings = None
        if frozen is not None:
            settings = PlanSettings(**{**frozen, "weights": tuple(tuple(pair) for pair in frozen["weights"])})
            mid_epoch = state["position"] > 0 or state["token_offset"] > 0
            if settings.packing == "bfd" and settings.seq_len != self.seq_len and mid_epoch:
                raise MixerError(
                    f"the epoch under way was packed (data.packing: bfd) into rows of {settings.seq_len} tokens; "
                    f"resume it with train.seq_len {settings.seq_len}, or from a checkpoint at an epoch end"
                )
        self.ratio_scale = float(state["ratio_scale"])
        self.epoch, self.position, self.token_offset = state["epoch"], state["position"], state["token_offset"]
        self._frozen = settings

    def fingerprint(self) -> str:
        """A hash of the data the stream is planned over: every corpus's name, kind and example lengths."""
        digest = hashlib.sha256()
        for corpus in self.corpora:
            digest.update(json.dumps([corpus.name, corpus.kind, len(corpus), corpus.n_tokens]).encode())
            digest.update(np.ascontiguousarray(corpus.lengths, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------ reporting
    def summary(self, epoch: int) -> dict[str, Any]:
        """Planned counts of `epoch` by kind and source, the budgets, rows, padding efficiency and overflow, and
        the realized ratio in tokens and examples (examples counted once, at their first piece)."""
        plan = self.plan(epoch)
        tokens = {k: int(plan.n_tokens[plan.synthetic == (k == "synthetic")].sum()) for k in KINDS}
        first = plan.start == 0
        examples = {k: int((first & (plan.synthetic == (k == "synthetic"))).sum()) for k in KINDS}
        by_source = {}
        for i, corpus in enumerate(self.corpora):
            chosen = plan.corpus == i
            taken = {"examples": int((chosen & first).sum()), "tokens": int(plan.n_tokens[chosen].sum())}
            by_source[corpus.name] = taken
        rows = sum(self.shard_rows(epoch))
        return {
            "epoch": epoch,
            "target_synthetic_ratio": plan.target_ratio,
            "unit": self.settings(epoch).unit,
            "packing": self.settings(epoch).packing,
            "budgets": plan.budgets,
            "tokens": tokens,
            "examples": examples,
            "sources": by_source,
            "rows": rows,
            "padding_efficiency": sum(tokens.values()) / (rows * self.seq_len) if rows else 0.0,
            "overflow": plan.overflow,
            "realized_token_ratio": _share(tokens["synthetic"], tokens["real"]),
            "realized_example_ratio": _share(examples["synthetic"], examples["real"]),
        }


def _interleave(units: np.ndarray, is_synthetic: np.ndarray) -> np.ndarray:
    """Smooth interleave: each item at the midpoint of its share of its kind's budget, so every window holds
    the target ratio up to one item; returns the new order of the given items."""
    keys = np.zeros(len(units), dtype=np.float64)
    for flag in (False, True):
        members = np.flatnonzero(is_synthetic == flag)
        weights = units[members].astype(np.float64)
        total = weights.sum()
        if total > 0:
            keys[members] = (np.cumsum(weights) - weights / 2) / total
    return np.lexsort((is_synthetic, keys))


def _split_long(
    corpus: np.ndarray, row: np.ndarray, n_tokens: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries longer than a row become row-sized pieces (the last one shorter), each its own entry."""
    pieces = -(-n_tokens // seq_len)
    owner = np.repeat(np.arange(len(n_tokens)), pieces)
    index = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    start = index * seq_len
    length = np.minimum(seq_len, n_tokens[owner] - start)
    return corpus[owner], row[owner], start.astype(np.int64), length.astype(np.int64)


def _share(synthetic: int, real: int) -> float:
    return synthetic / (synthetic + real) if synthetic + real else 0.0


def _check_kinds_present(corpora: list[Corpus], data: DataConfig, epochs: int) -> None:
    kinds = {c.kind for c in corpora}
    ratios = [ratio_for_epoch(data, e, epochs) for e in range(1, epochs + 1)]
    if max(ratios, default=0) > 0 and "synthetic" not in kinds:
        raise MixerError(f"data.synthetic_ratio is {max(ratios):g} but no source has kind: synthetic")
    if min(ratios, default=1) < 1 and "real" not in kinds:
        raise MixerError(f"data.synthetic_ratio is {min(ratios):g} but no source has kind: real")


def _check_no_empty_examples(corpora: list[Corpus]) -> None:
    # An example of no tokens would never be consumed: the stream would stall on it.
    for corpus in corpora:
        empty = np.flatnonzero(corpus.lengths == 0)
        if len(empty):
            raise MixerError(
                f"source '{corpus.name}': example {int(corpus.source_index[empty[0]])} has no tokens "
                f"({len(empty)} such examples); the tokenizer produced nothing for them"
            )


def _check_ratio_feasible(ratio: float, real: list[int], synthetic: list[int], epoch: int) -> None:
    if ratio > 0 and not synthetic:
        raise MixerError(f"epoch {epoch}: synthetic ratio {ratio:g} but no source has kind: synthetic")
    if ratio < 1 and not real:
        raise MixerError(f"epoch {epoch}: synthetic ratio {ratio:g} needs real data, but no source has kind: real")
