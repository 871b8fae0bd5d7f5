"""The exact mix as a `torch.utils.data.IterableDataset` of packed rows, for trainers people already run.

    stream = MixedStream(corpora.train, config.data, seed=0, epochs=2, seq_len=256, pad_id=tok.pad_token_id,
                         rows_per_step=8 * 4)                     # per-device batch x gradient accumulation
    loader = StatefulDataLoader(stream, batch_size=8, collate_fn=...)   # torchdata: checkpoints stream.state_dict()

Each item is one packed row in the form TRL's padding-free collator takes: `input_ids`, `labels` (-100 where the
example's loss mask is off and on the first token of every piece, as synthmix's own loop does) and
`seq_lengths` (the pieces, so position ids restart per example). The stream runs through every configured epoch
(an epoch is one pass over the real data, at the mixer's exact ratio) and each rank's share of an epoch is padded
with filler rows (one pad token, no loss) to the same whole number of optimizer steps on every rank, so data
parallel ranks never wait for each other and a step never mixes two epochs.

Why the state is a row count: every rank takes exactly `rows_per_step` rows per optimizer step, so "where the
stream stands after step N" is N x rows_per_step rows, whatever the dataloader has prefetched. `state_at(rows)`
turns that into the mixer's exact position in O(log n) (no row is rebuilt, none replayed); `state_dict()` is
`state_at` of the rows this object has yielded, which is what `StatefulDataLoader` wants.
`trainer.integrations.StreamCallback` saves `state_at(global_step x rows_per_step)` beside each `Trainer`
checkpoint, because transformers' Trainer does not checkpoint dataloader state itself.

Sharding: `layout="rank"` yields rank r's share only (a loop that builds one loader per process). Under
`accelerate` with several processes a `torch` IterableDataset is split by `IterableDatasetShard`, which iterates
the whole dataset on every process and keeps the process's `block` rows of every `block x world_size`; for that,
`layout="global"` yields rank 0's next `block` rows, then rank 1's, ..., so the split hands each process exactly
its mixer share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch

from synthmix.data_mixers.config import KINDS, DataConfig
from synthmix.data_mixers.corpus import Corpus
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.labels import FILLER_KIND, IGNORE, KIND_CODES, piece_labels
from synthmix.data_mixers.mixer import Example, Mixer

TRAINING_KEYS = ("input_ids", "labels", "seq_lengths")
PROVENANCE_KEYS = ("kinds", "sources", "starts", "row")


@dataclasses.dataclass(frozen=True)
class _Epoch:
    """One epoch of the stream: where it starts (rows per rank before it), its padded rows, its plan settings."""

    start: int
    rows: int
    settings: dict[str, Any]


class MixedStream(torch.utils.data.IterableDataset):
    """The mixer's rows, exact ratio per epoch, resumable to the row; see the module docstring."""

    def __init__(
        self,
        corpora: list[Corpus],
        data: DataConfig,
        *,
        seed: int,
        epochs: int,
        seq_len: int,
        pad_id: int,
        rows_per_step: int,
        rank: int = 0,
        world_size: int = 1,
        layout: Literal["rank", "global"] = "rank",
        block: int = 1,
        provenance: bool = False,
    ) -> None:
        """`rows_per_step`: rows one process takes per optimizer step (per-device batch x accumulation), the unit
        each epoch is padded to; `block`: the per-device batch size, the rows of one rank in a row of `global`
        layout; `provenance`: also yield `kinds` (0 real, 1 synthetic, -1 filler, per token), `sources`
        ("source:index:start" per piece), `starts` (each piece's offset in its example; 0: the example starts
        here) and `row` (the row's number in its rank's stream), which `KindCounter` reads."""
        if rows_per_step < 1:
            raise MixerError(f"rows_per_step: must be at least 1, got {rows_per_step}")
        if layout not in ("rank", "global"):
            raise MixerError(f"layout: expected 'rank' or 'global', got {layout!r}")
        if layout == "global" and (block < 1 or rows_per_step % block):
            raise MixerError(f"block: must divide rows_per_step {rows_per_step} (the per-device batch), got {block}")
        self.seq_len, self.pad_id, self.rows_per_step = seq_len, pad_id, rows_per_step
        self.epochs, self.layout, self.block, self.provenance = epochs, layout, block, provenance
        self.world_size = world_size
        ranks = range(world_size) if layout == "global" else [rank]
        self._mixers = [Mixer(corpora, data, seed, epochs, r, world_size, seq_len) for r in ranks]
        self._planner = Mixer(corpora, data, seed, epochs, 0, world_size, seq_len)  # plans epochs, never streams
        self._table: dict[int, _Epoch] = {}
        self._first = 1
        self._rows = 0
        """Rows per rank this object has yielded (or been restored to) since the stream began."""

    # ------------------------------------------------------------------------------------------ the plan of rows
    def _epoch(self, epoch: int) -> _Epoch:
        """The epoch's start, padded rows and settings, planned forward from the first known epoch."""
        if not self._first <= epoch <= self.epochs:
            raise MixerError(f"epoch {epoch}: this stream holds epochs {self._first}..{self.epochs} (resumed at "
                             f"epoch {self._first})")  # fmt: skip
        while epoch not in self._table:
            known = max(self._table, default=self._first - 1)
            nxt = known + 1
            start = self._table[known].start + self._table[known].rows if known in self._table else 0
            self._planner.set_epoch(nxt)  # freezes the settings the config gives this epoch now
            steps = max(1, math.ceil(max(self._planner.shard_rows(nxt)) / self.rows_per_step))
            settings = self._planner.state_dict()["epoch_settings"]
            self._table[nxt] = _Epoch(start, steps * self.rows_per_step, settings)
        return self._table[epoch]

    @property
    def total_rows(self) -> int:
        """Rows per rank over every epoch (filler included)."""
        last = self._epoch(self.epochs)
        return last.start + last.rows

    def total_steps(self) -> int:
        """Optimizer steps the whole stream takes (Trainer's `max_steps`)."""
        return self.total_rows // self.rows_per_step

    def epoch_end_steps(self) -> dict[int, int]:
        """{epoch: the optimizer step that ends it} (where synthmix evaluates and checkpoints), from the epoch
        the stream stands in on."""
        ends = {e: self._epoch(e).start + self._epoch(e).rows for e in range(self._first, self.epochs + 1)}
        return {epoch: rows // self.rows_per_step for epoch, rows in ends.items()}

    def epoch_rows(self, epoch: int) -> int:
        """Rows per rank of `epoch`, filler included (a whole number of steps)."""
        return self._epoch(epoch).rows

    def epoch_settings(self, epoch: int) -> dict[str, Any]:
        """The plan settings of `epoch` (`target_ratio`, `unit`, `packing`, ...), as frozen when it was planned."""
        return self._epoch(epoch).settings

    def _position(self, rows: int) -> tuple[int, int]:
        """(epoch, rows into it) after `rows` rows per rank; an epoch's end stays in that epoch."""
        if rows > self.total_rows or rows < self._epoch(self._first).start:
            raise MixerError(
                f"row {rows} is outside this stream (rows {self._epoch(self._first).start}..{self.total_rows})"
            )
        epoch = self._first
        while rows > self._epoch(epoch).start + self._epoch(epoch).rows:
            epoch += 1
        return epoch, rows - self._epoch(epoch).start

    # ------------------------------------------------------------------------------------------ state
    def state_at(self, rows: int) -> dict[str, Any]:
        """The state of the stream after `rows` rows per rank: small, JSON-serialisable, O(log n) to resume."""
        epoch, _ = self._position(rows)
        return {
            "rows": rows,
            "epoch": epoch,
            "epoch_start": self._epoch(epoch).start,
            "epoch_settings": self._epoch(epoch).settings,
            "ratio_scale": self._planner.ratio_scale,
            "rows_per_step": self.rows_per_step,
            "world_size": self.world_size,
            "fingerprint": self._planner.fingerprint(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this object's iteration stands (what `StatefulDataLoader` saves after each batch)."""
        if self.layout == "global":
            raise MixerError("a global-layout stream is split by accelerate; save StreamCallback's state instead")
        return self.state_at(self._rows)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after `state["rows"]` rows per rank: the epoch under way keeps the settings it was planned
        with (as a synthmix run does); the data, world size and rows per step must be the same."""
        checks = {"fingerprint": self._planner.fingerprint(), "world_size": self.world_size,
                  "rows_per_step": self.rows_per_step}  # fmt: skip
        for key, expected in checks.items():
            if state.get(key) != expected:
                raise MixerError(f"stream state: {key} is {state.get(key)!r}, this stream has {expected!r}; "
                                 "resume with the data, processes and batch settings it was saved with")  # fmt: skip
        epoch = int(state["epoch"])
        frozen = {"epoch": epoch, "position": 0, "token_offset": 0, "ratio_scale": state["ratio_scale"],
                  "epoch_settings": state["epoch_settings"], "world_size": self.world_size,
                  "fingerprint": state["fingerprint"]}  # fmt: skip
        self._planner.load_state_dict({**frozen, "rank": 0})
        self._table = {}
        self._first = epoch
        steps = max(1, math.ceil(max(self._planner.shard_rows(epoch)) / self.rows_per_step))
        self._table[epoch] = _Epoch(int(state["epoch_start"]), steps * self.rows_per_step, state["epoch_settings"])
        self._rows = int(state["rows"])
        self._position(self._rows)  # a state past this stream's end is refused here, not mid-iteration

    # ------------------------------------------------------------------------------------------ iteration
    def example(self) -> dict[str, Any]:
        """A row in the stream's format that moves nothing (a filler row), for constructors that peek at data."""
        return self._encode([], 0)

    @property
    def column_names(self) -> list[str]:
        """The keys of every row (read by TRL instead of peeking at the first row)."""
        return [*TRAINING_KEYS, *(PROVENANCE_KEYS if self.provenance else ())]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the stream from where this object stands: each call continues, none restarts."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise MixerError("MixedStream: use num_workers 0 or 1 (the stream is sharded by rank, not by worker)")
        return self._rows_from(self._rows)

    def _rows_from(self, rows: int) -> Iterator[dict[str, Any]]:
        while rows < self.total_rows:
            epoch, into = self._position(rows)
            plan = self._epoch(epoch)
            if into == plan.rows:  # at an epoch's end: the next one starts
                epoch, into = epoch + 1, 0
                plan = self._epoch(epoch)
            for mixer in self._mixers:
                _seek(mixer, epoch, into, plan.settings, self._planner)
            yield from self._epoch_rows(plan.rows - into)
            rows = plan.start + plan.rows

    def _epoch_rows(self, count: int) -> Iterator[dict[str, Any]]:
        """`count` rows per rank of the epoch the mixers stand in (filler past a rank's share)."""
        block = self.block if self.layout == "global" else count
        for _ in range(0, count, block):
            first = self._rows
            for mixer in self._mixers:
                for i in range(min(block, count)):
                    row = self._encode(mixer.next_row(), first + i)
                    if mixer is self._mixers[-1]:
                        self._rows += 1
                    yield row
            count -= block

    def _encode(self, pieces: list[Example], number: int) -> dict[str, Any]:
        """Row `number` of its rank's stream (counted from the stream's start, filler included)."""
        pieces = [p for p in pieces if len(p.ids)]
        if not pieces:  # past this rank's share: a row that carries no loss and no data
            row = {"input_ids": [self.pad_id], "labels": [IGNORE], "seq_lengths": [1]}
            provenance = {"kinds": [FILLER_KIND], "sources": [], "starts": [], "row": number}
            return {**row, **provenance} if self.provenance else row
        ids = [p.ids.astype(np.int64) for p in pieces]
        labels = [piece_labels(piece) for piece in pieces]
        row = {"input_ids": np.concatenate(ids).tolist(), "labels": np.concatenate(labels).tolist(),
               "seq_lengths": [len(p) for p in ids]}  # fmt: skip
        if self.provenance:
            row["kinds"] = np.repeat([KIND_CODES[p.kind] for p in pieces], [len(p) for p in ids]).tolist()
            row["sources"] = [f"{p.source}:{p.index}:{p.start}" for p in pieces]
            row["starts"] = [int(p.start) for p in pieces]
            row["row"] = number
        return row


def _seek(mixer: Mixer, epoch: int, rows: int, settings: dict[str, Any], planner: Mixer) -> None:
    """Put `mixer` `rows` rows into `epoch` (planned with `settings`) without building a row: bfd rows are the
    unit of position; wrap rows are `seq_len` tokens of the rank's share, found by a binary search."""
    mixer.load_state_dict({"epoch": epoch, "position": 0, "token_offset": 0, "ratio_scale": planner.ratio_scale,
                           "epoch_settings": settings, "rank": mixer.rank, "world_size": mixer.world_size,
                           "fingerprint": planner.fingerprint()})  # fmt: skip
    plan = mixer.shard_plan(epoch)
    if plan.row_starts is not None:
        mixer.position = min(rows, plan.rows)
        return
    ends = np.cumsum(plan.n_tokens)
    tokens = min(rows * mixer.seq_len, int(ends[-1]) if len(ends) else 0)
    position = int(np.searchsorted(ends, tokens, side="right"))
    mixer.position = position
    mixer.token_offset = tokens - (int(ends[position - 1]) if position else 0)


class KindCounter:
    """A collator for a stream with provenance: counts the tokens and the started examples of each kind in the
    rows it collates, by the optimizer step that trains them, then collates the rows without their provenance.

    By step, not by time: the dataloader collates ahead of training (accelerate prefetches a batch, the Trainer
    fetches a step's micro-batches at once), so "counted so far" would include rows no step has trained yet.
    Row `n` of a rank's stream is trained by step `n // rows_per_step + 1`, whatever was prefetched."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], Any], rows_per_step: int) -> None:
        self.collate, self.rows_per_step = collate, rows_per_step
        self._by_step: dict[int, np.ndarray] = {}

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        if not all("row" in row for row in rows):  # not the stream's rows (an eval dataset): collated as they are
            return self.collate(rows)
        for row in rows:
            step = row["row"] // self.rows_per_step + 1
            self._by_step[step] = self._by_step.get(step, 0) + kind_counts(row)
        return self.collate([{key: row[key] for key in TRAINING_KEYS} for row in rows])

    def counted(self, through: int) -> np.ndarray:
        """Counts of the steps up to `through` (not forgotten yet) on this process, as `kind_counts` orders them."""
        return sum((c for step, c in self._by_step.items() if step <= through), np.zeros(2 * len(KINDS), np.int64))

    def forget(self, through: int) -> None:
        """Drop the counts of the steps up to `through` (an epoch that was reported)."""
        self._by_step = {step: c for step, c in self._by_step.items() if step > through}


def kind_counts(row: dict[str, Any]) -> np.ndarray:
    """[real tokens, synthetic tokens, real examples started, synthetic examples started] of a provenance row
    (filler counts nothing; an example continued from an earlier row counts its tokens, not itself)."""
    kinds = np.asarray(row["kinds"], np.int64)
    tokens = np.bincount(kinds[kinds >= 0], minlength=len(KINDS))
    starts = np.asarray(row["starts"], np.int64)
    first_token = np.cumsum([0, *row["seq_lengths"][:-1]])[: len(starts)]
    started = kinds[first_token][starts == 0]
    return np.concatenate([tokens, np.bincount(started, minlength=len(KINDS))])
