"""Whole-example rows (data.packing: bfd): best-fit decreasing against a plain reference implementation, every
example whole in one row unless it overflowed, the three overflow policies, the exact ratio in the tokens the
rows hold, sharding, stratified rows, resume, and padding at least as tight as TRL's bfd packing."""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthmix.data_mixers import Corpus, DataConfig, Example, Mixer, MixerError, SourceConfig
from synthmix.data_mixers.rows import best_fit_decreasing, rows_from_assignment

SEQ = 32


def corpus(name: str, kind: str, lengths: Any) -> Corpus:
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Corpus.from_offsets(name, kind, np.arange(offsets[-1], dtype=np.int32), offsets)


def mix(ratio: float = 0.3, seed: int = 1, **data: Any) -> tuple[list[Corpus], DataConfig]:
    rng = np.random.default_rng(seed)
    corpora = [
        corpus("real", "real", rng.integers(1, 45, 150)),
        corpus("synthetic", "synthetic", rng.integers(1, 45, 300)),
    ]
    sources = [SourceConfig(name=c.name, kind=c.kind) for c in corpora]
    return corpora, DataConfig(sources=sources, synthetic_ratio=ratio, packing="bfd", **data)


def rows_of(mixer: Mixer, epoch: int = 1) -> list[list[Example]]:
    mixer.set_epoch(epoch)
    rows = []
    while row := mixer.next_row():
        rows.append(row)
    return rows


def naive_bfd(lengths: list[int], capacity: int) -> list[int]:
    """Best-fit decreasing the slow, obvious way: for each item, longest first, the row with the least room."""
    rooms: list[int] = []
    row_of = [0] * len(lengths)
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r, room in enumerate(rooms) if room >= lengths[item]]
        if fits:
            best = min(fits, key=lambda r: (rooms[r], -r))  # least room; among equals, the newest row (a stack)
        else:
            rooms.append(capacity)
            best = len(rooms) - 1
        rooms[best] -= lengths[item]
        row_of[item] = best
    return row_of


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 20), min_size=0, max_size=60), capacity=st.integers(20, 40))
def test_best_fit_decreasing_packs_as_the_plain_algorithm_does(lengths: list[int], capacity: int) -> None:
    row_of = best_fit_decreasing(np.array(lengths, dtype=np.int64), capacity)
    expected = naive_bfd(lengths, capacity)

    def loads(assignment) -> list[int]:
        """The tokens in each row, sorted (rows with equal room are interchangeable: only loads must agree)."""
        return sorted(np.bincount(assignment, weights=lengths).astype(int).tolist()) if lengths else []

    assert loads(row_of) == loads(expected)
    assert all(load <= capacity for load in loads(row_of))
    starts, items = rows_from_assignment(row_of)
    assert sorted(items.tolist()) == list(range(len(lengths))) and starts[-1] == len(lengths)


def test_best_fit_decreasing_refuses_items_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 8\]"):
        best_fit_decreasing(np.array([3, 9]), 8)


@pytest.mark.parametrize("overflow", ["truncate", "split", "drop"])
def test_every_example_is_whole_in_one_row_unless_it_overflowed(overflow: str) -> None:
    corpora, data = mix(overflow=overflow, allow_repeat=True)
    lengths = {(c.name, i): int(c.lengths[i]) for c in corpora for i in range(len(c))}
    mixer = Mixer(corpora, data, seed=0, seq_len=SEQ)
    rows = rows_of(mixer)
    assert rows and all(sum(len(p.ids) for p in row) <= SEQ for row in rows)
    for row in rows:
        for piece in row:
            full = lengths[(piece.source, piece.index)]
            if full <= SEQ:
                assert piece.start == 0 and (len(piece.ids) == full or piece.kind == "synthetic")  # or the last cut
            elif overflow == "truncate":
                assert piece.start == 0 and len(piece.ids) == SEQ
            elif overflow == "split":
                assert piece.start % SEQ == 0 and len(piece.ids) == min(SEQ, full - piece.start)
            else:
                pytest.fail(f"{piece.source}[{piece.index}] of {full} tokens should have been dropped")
            assert piece.ids[0] == corpora[piece.kind == "synthetic"].starts[piece.index] + piece.start


def test_split_keeps_every_token_and_drop_and_truncate_count_what_they_remove() -> None:
    corpora, data = mix(ratio=0.0)
    real = corpora[0]
    long = real.lengths[real.lengths > SEQ]
    split = Mixer(corpora[:1], dataclasses.replace(data, overflow="split", sources=data.sources[:1]), 0, seq_len=SEQ)
    pieces = [p for row in rows_of(split) for p in row]
    assert sum(len(p.ids) for p in pieces) == real.n_tokens
    assert collections.Counter(p.index for p in pieces if p.start == 0) == collections.Counter(range(len(real)))
    assert split.summary(1)["overflow"]["real"] == {"examples": len(long), "tokens": 0}
    truncate = Mixer(corpora[:1], dataclasses.replace(data, sources=data.sources[:1]), 0, seq_len=SEQ)
    assert truncate.summary(1)["overflow"]["real"] == {"examples": len(long), "tokens": int((long - SEQ).sum())}
    drop = Mixer(corpora[:1], dataclasses.replace(data, overflow="drop", sources=data.sources[:1]), 0, seq_len=SEQ)
    assert drop.summary(1)["overflow"]["real"] == {"examples": len(long), "tokens": int(long.sum())}
    assert {p.index for row in rows_of(drop) for p in row} == set(np.flatnonzero(real.lengths <= SEQ).tolist())


@pytest.mark.parametrize("overflow", ["truncate", "split", "drop"])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.7])
def test_the_ratio_is_exact_in_the_tokens_the_rows_hold(overflow: str, ratio: float) -> None:
    corpora, data = mix(ratio, overflow=overflow, allow_repeat=True)
    counts = collections.Counter()
    for row in rows_of(Mixer(corpora, data, seed=3, seq_len=SEQ)):
        for piece in row:
            counts[piece.kind] += len(piece.ids)
    assert abs(counts["synthetic"] - ratio / (1 - ratio) * counts["real"]) <= 0.5
    examples = dataclasses.replace(data, unit="examples")
    started = collections.Counter(p.kind for row in rows_of(Mixer(corpora, examples, seed=3, seq_len=SEQ))
                                  for p in row if p.start == 0)  # fmt: skip
    assert abs(started["synthetic"] - ratio / (1 - ratio) * started["real"]) <= 0.5


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_rows_that_together_are_the_single_process_rows(world_size: int) -> None:
    corpora, data = mix()

    def signature(row: list[Example]) -> tuple:
        return tuple((p.source, p.index, p.start, len(p.ids)) for p in row)

    single = [signature(r) for r in rows_of(Mixer(corpora, data, seed=2, seq_len=SEQ))]
    ranks = [
        [signature(r) for r in rows_of(Mixer(corpora, data, 2, 1, rank, world_size, SEQ))] for rank in range(world_size)
    ]
    assert sorted(r for share in ranks for r in share) == sorted(single)
    assert Mixer(corpora, data, 2, 1, 0, world_size, SEQ).shard_rows(1) == [len(share) for share in ranks]


def test_stratified_rows_hold_the_ratio_in_every_window() -> None:
    corpora, data = mix(0.3, stratify=True)
    rows = rows_of(Mixer(corpora, data, seed=4, seq_len=SEQ))
    assert all(len({p.kind for p in row}) == 1 for row in rows)  # one kind per row, interleaved by share
    tokens = np.array([[sum(len(p.ids) for p in row if p.kind == k) for k in ("real", "synthetic")] for row in rows])
    for start in range(0, len(rows) - 20, 5):
        window = tokens[start : start + 20].sum(axis=0)
        assert abs(window[1] / window.sum() - 0.3) < 0.08
    unstratified = rows_of(Mixer(corpora, dataclasses.replace(data, stratify=False), seed=4, seq_len=SEQ))
    assert len(unstratified) <= len(rows)  # packing both kinds together never takes more rows


def test_resume_continues_with_the_exact_next_row_and_refuses_another_row_length() -> None:
    corpora, data = mix()
    mixer = Mixer(corpora, data, seed=5, epochs=2, seq_len=SEQ)
    everything = rows_of(mixer)
    mixer.set_epoch(1)
    for _ in range(7):
        mixer.next_row()
    state = json.loads(json.dumps(mixer.state_dict()))
    resumed = Mixer(corpora, data, seed=5, epochs=2, seq_len=SEQ)
    resumed.load_state_dict(state)
    assert resumed.rows_left() == len(everything) - 7
    rest = []
    while row := resumed.next_row():
        rest.append(row)
    key = lambda rows: [[(p.source, p.index, p.start, len(p.ids)) for p in r] for r in rows]  # noqa: E731
    assert key(rest) == key(everything[7:])
    with pytest.raises(MixerError, match=r"packed \(data.packing: bfd\) into rows of 32 tokens; resume it with train"):
        Mixer(corpora, data, seed=5, epochs=2, seq_len=48).load_state_dict(state)


def test_padding_is_at_least_as_tight_as_trls_bfd_packing() -> None:
    """The same examples, the same row length: TRL packs each batch of 1,000 examples with its BFD (truncating
    overflow), we pack the whole epoch at once."""
    import datasets
    from trl import pack_dataset

    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(4.5, 0.8, 3000).astype(np.int64) + 1, 1000)
    seq = 512
    real = corpus("chat", "real", lengths)
    mixer = Mixer([real], DataConfig(sources=[SourceConfig(name="chat")], packing="bfd"), seed=0, seq_len=seq)
    ours = mixer.summary(1)["padding_efficiency"]
    dataset = datasets.Dataset.from_dict({"input_ids": [list(range(n)) for n in lengths]})
    packed = pack_dataset(dataset, seq, strategy="bfd")
    trl = sum(np.minimum(lengths, seq)) / (len(packed) * seq)
    assert ours >= trl
