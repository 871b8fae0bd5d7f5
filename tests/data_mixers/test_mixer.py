"""Mixer: exact ratio per epoch, stratified batches, fresh order, bit-identical resume, sharding, provenance.

Corpora are built directly from lengths (numpy), with token ids 0, 1, 2, ... through each corpus, so any piece
of the stream can be traced back to the exact tokens of its source example.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers import Corpus, DataConfig, Example, Mixer, MixerError, SourceConfig, build_corpora
from synthmix.data_mixers.config import HeldOutConfig, ScheduleConfig, TokenizerConfig


def make_corpus(name: str, kind: str, lengths: Any) -> Corpus:
    """A corpus whose example i holds the consecutive ids offsets[i], offsets[i] + 1, ..."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Corpus.from_offsets(name, kind, np.arange(offsets[-1], dtype=np.int32), offsets)


def make_data(corpora: list[Corpus], ratio: float, weights: list[float | None] | None = None, **kw: Any) -> DataConfig:
    weights = weights or [None] * len(corpora)
    sources = [SourceConfig(name=c.name, kind=c.kind, weight=w) for c, w in zip(corpora, weights)]
    return DataConfig(sources=sources, synthetic_ratio=ratio, **kw)


def size(corpus: Corpus, unit: str) -> int:
    return corpus.n_tokens if unit == "tokens" else len(corpus)


def counted(stream: list[Example], unit: str) -> dict[str, int]:
    """Units per kind, counted from the streamed examples themselves."""
    counts = {"real": 0, "synthetic": 0}
    for example in stream:
        counts[example.kind] += len(example.ids) if unit == "tokens" else 1
    return counts


def epoch(mixer: Mixer, number: int = 1) -> list[Example]:
    mixer.set_epoch(number)
    return list(mixer)


def signature(stream: list[Example]) -> list[tuple]:
    """Everything the trainer receives from each piece: provenance, offset, token ids and loss mask."""
    return [
        (e.source, e.kind, e.index, e.start, e.ids.tolist(), None if e.loss_mask is None else e.loss_mask.tolist())
        for e in stream
    ]


def synthetic_share(stream: list[Example]) -> float:
    kinds = np.array([e.kind == "synthetic" for e in stream])
    return float(kinds.mean())


# ---------------------------------------------------------------- random mixes
class Mix(NamedTuple):
    corpora: list[Corpus]
    data: DataConfig
    seed: int
    weighted: bool


@st.composite
def mixes(draw: st.DrawFn) -> Mix:
    """1-3 sources per kind of 1-60 examples each, lengths skewed up to synthetic 100x longer than real."""
    unit = draw(st.sampled_from(["tokens", "examples"]))
    ratio = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 0.95)))
    skew = draw(st.sampled_from([1.0, 2.3, 100.0]))  # mean synthetic length / mean real length
    weighted = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    corpora = []
    for kind, scale in (("real", 1.0), ("synthetic", skew)):
        for k in range(draw(st.integers(1, 3))):
            n = draw(st.integers(1, 60))
            corpora.append(make_corpus(f"{kind}-{k}", kind, rng.geometric(1 / (6 * scale), n)))
    weights = [draw(st.floats(0.1, 10.0)) for _ in corpora] if weighted else None
    data = make_data(
        corpora,
        ratio,
        weights,
        unit=unit,
        stratify=draw(st.booleans()),
        allow_repeat=draw(st.booleans()),
    )
    return Mix(corpora, data, seed, weighted)


def totals(mix: Mix) -> dict[str, int]:
    return {k: sum(size(c, mix.data.unit) for c in mix.corpora if c.kind == k) for k in ("real", "synthetic")}


# ---------------------------------------------------------------- ratio exactness
@settings(max_examples=150, deadline=None)
@given(mix=mixes())
def test_realized_ratio_of_an_epoch_is_exact(mix: Mix) -> None:
    r, unit = mix.data.synthetic_ratio, mix.data.unit
    available = totals(mix)
    try:
        stream = list(Mixer(mix.corpora, mix.data, mix.seed))
    except MixerError as err:
        # The only refusal: the ratio needs more synthetic data than there is and repeats are not allowed.
        assert not mix.data.allow_repeat
        assert "allow_repeat" in str(err)
        if not mix.weighted:
            assert round(available["real"] * r / (1 - r)) > available["synthetic"]
        return
    got = counted(stream, unit)
    if r == 1.0:
        assert got == {"real": 0, "synthetic": available["synthetic"]}  # one pass over the synthetic data
        return
    # An epoch is one pass over the real data: R = all real units, whatever the weights.
    assert got["real"] == available["real"]
    # The design's bound: the synthetic budget is S = round(R * r / (1 - r)), met exactly (in tokens, the last
    # synthetic example drawn is cut), so S is within 0.5 unit (0.5 token, or 0.5 example) of R * r / (1 - r),
    # and the realized ratio S / (R + S) within 0.5 / (R + S) of r: at most 0.5 pp once the epoch holds 100 units.
    assert abs(got["synthetic"] - got["real"] * r / (1 - r)) <= 0.5 + 1e-9 * got["real"]
    total = got["real"] + got["synthetic"]
    if total >= 100:
        assert abs(got["synthetic"] / total - r) <= 0.01


@settings(max_examples=100, deadline=None)
@given(mix=mixes())
def test_each_real_example_once_per_epoch_and_synthetic_repeats_only_if_allowed(mix: Mix) -> None:
    try:
        stream = list(Mixer(mix.corpora, mix.data, mix.seed))
    except MixerError:
        return  # not enough synthetic data without repeats: covered by the test above
    by_name = {c.name: c for c in mix.corpora}
    for example in stream:  # every piece is its source example's own tokens, from the start
        corpus = by_name[example.source]
        assert example.kind == corpus.kind and example.start == 0
        assert 1 <= len(example.ids) <= corpus.lengths[example.index]
        assert example.ids[0] == corpus.starts[example.index]
    seen = collections.Counter((e.source, e.index) for e in stream)
    if not mix.weighted and mix.data.synthetic_ratio < 1:
        expected = {(c.name, i) for c in mix.corpora if c.kind == "real" for i in range(len(c))}
        assert {key for key in seen if key[0].startswith("real")} == expected
        assert all(seen[key] == 1 for key in expected)
    if not mix.data.allow_repeat:
        assert all(n == 1 for key, n in seen.items() if key[0].startswith("synthetic"))


def test_ratio_needing_more_synthetic_data_than_exists_names_source_amount_and_allow_repeat() -> None:
    corpora = [make_corpus("docs", "real", [10] * 10), make_corpus("gen", "synthetic", [5] * 4)]
    with pytest.raises(MixerError) as caught:
        list(Mixer(corpora, make_data(corpora, 0.5), seed=0))
    message = str(caught.value)
    assert "'gen'" in message and "100 synthetic tokens" in message and "has 20" in message
    assert "allow_repeat" in message
    stream = list(Mixer(corpora, make_data(corpora, 0.5, allow_repeat=True), seed=0))
    assert counted(stream, "tokens") == {"real": 100, "synthetic": 100}
    # 20 synthetic examples drawn from 4: each of them 5 times (whole passes, each in a fresh order).
    assert collections.Counter(e.index for e in stream if e.kind == "synthetic") == {0: 5, 1: 5, 2: 5, 3: 5}


def test_an_example_without_tokens_is_refused_rather_than_stalling_the_stream() -> None:
    corpora = [make_corpus("docs", "real", [2, 0, 3])]
    with pytest.raises(MixerError, match="source 'docs': example 1 has no tokens"):
        Mixer(corpora, make_data(corpora, 0.0), seed=0)


# ---------------------------------------------------------------- stratified batches
def lengths(rng: np.random.Generator, n: int, longest: int, bimodal: bool) -> np.ndarray:
    """Uniform lengths up to `longest`, or mostly short with 5% at `longest` (the hardest case for windows)."""
    if bimodal:
        return np.where(rng.random(n) < 0.05, longest, rng.integers(1, 5, n))
    return rng.integers(1, longest + 1, n)


def skewed_mix(
    n_real: int,
    ratio: float,
    unit: str,
    stratify: bool,
    seed: int,
    longest: tuple[int, int] = (10, 23),
    bimodal: bool = False,
) -> Mixer:
    """One real and one synthetic source (3x as many examples); `longest` is the longest (real, synthetic)."""
    rng = np.random.default_rng(seed)
    corpora = [
        make_corpus("real", "real", lengths(rng, n_real, longest[0], bimodal)),
        make_corpus("synthetic", "synthetic", lengths(rng, 3 * n_real, longest[1], bimodal)),
    ]
    return Mixer(corpora, make_data(corpora, ratio, unit=unit, stratify=stratify, allow_repeat=True), seed)


def window_shares(flags: np.ndarray, width: int) -> np.ndarray:
    """Share of True in every window of `width` consecutive flags."""
    cumulative = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return (cumulative[width:] - cumulative[:-width]) / width


# Why stratify holds every window: each entry sits at the midpoint of its share of its own kind, so at any
# point of the stream the two kinds' progress (share of that kind consumed) differ by at most half an entry
# of each: L_syn / 2S + L_real / 2R. Over a window of W units, the synthetic count is then within
# (1 - r) * L_syn + r * L_real <= L units of r' * W, where r' is the epoch's own (exact up to 0.5 unit) ratio:
# one example in examples unit (1/64 for a batch of 64), and L / W = 5 pp for token windows of W = 20 L.
@settings(max_examples=40, deadline=None)
@given(ratio=st.floats(0.01, 0.9), n_real=st.integers(64, 500), seed=st.integers(0, 2**32 - 1))
def test_stratified_every_64_examples_hold_the_ratio(ratio: float, n_real: int, seed: int) -> None:
    stream = list(skewed_mix(n_real, ratio, "examples", stratify=True, seed=seed))
    flags = np.array([e.kind == "synthetic" for e in stream])
    epsilon = 0.5 / len(flags) + 1e-9  # |r' - r|
    assert np.abs(window_shares(flags, 64) - ratio).max() <= 1 / 64 + epsilon


@settings(max_examples=15, deadline=None)
@given(
    ratio=st.floats(0.05, 0.95),
    longest=st.sampled_from([(10, 10), (10, 23), (10, 1000), (1000, 1000)]),
    bimodal=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_token_windows_of_20_longest_examples_hold_the_ratio_within_5pp(
    ratio: float, longest: tuple[int, int], bimodal: bool, seed: int
) -> None:
    mixer = skewed_mix(2000, ratio, "tokens", stratify=True, seed=seed, longest=longest, bimodal=bimodal)
    stream = list(mixer)
    per_token = np.repeat([e.kind == "synthetic" for e in stream], [len(e.ids) for e in stream])
    width = 20 * max(int(c.lengths.max()) for c in mixer.corpora)
    if len(per_token) < width:
        return
    epsilon = 0.5 / len(per_token) + 1e-9  # |r' - r|
    assert np.abs(window_shares(per_token, width) - ratio).max() <= 0.05 + epsilon


def test_without_stratify_batches_vary_much_more() -> None:
    def worst_batch(stratify: bool) -> float:
        flags = np.array([e.kind == "synthetic" for e in skewed_mix(2000, 0.3, "examples", stratify, seed=7)])
        batches = flags[: len(flags) // 64 * 64].reshape(-1, 64).mean(axis=1)
        return float(np.abs(batches - 0.3).max())

    assert worst_batch(stratify=True) <= 1 / 64 + 1e-3
    assert worst_batch(stratify=False) > 4 / 64  # a random interleave: batches swing by several examples


# ---------------------------------------------------------------- order and determinism
def two_kinds(ratio: float = 0.3, **kw: Any) -> tuple[list[Corpus], DataConfig]:
    rng = np.random.default_rng(1)
    corpora = [
        make_corpus("real", "real", rng.integers(1, 30, 120)),
        make_corpus("synthetic", "synthetic", rng.integers(1, 60, 200)),
    ]
    return corpora, make_data(corpora, ratio, **kw)


@pytest.mark.parametrize("stratify", [False, True])
def test_each_epoch_has_a_fresh_order_of_the_same_real_examples(stratify: bool) -> None:
    corpora, data = two_kinds(stratify=stratify)
    mixer = Mixer(corpora, data, seed=0, epochs=2)
    first, second = epoch(mixer, 1), epoch(mixer, 2)
    order = [[(e.source, e.index) for e in stream] for stream in (first, second)]
    assert order[0] != order[1]
    real = [sorted(e.index for e in stream if e.kind == "real") for stream in (first, second)]
    assert real[0] == real[1] == list(range(120))


def test_same_seed_gives_identical_streams_and_another_seed_a_different_one() -> None:
    corpora, data = two_kinds()
    assert signature(list(Mixer(corpora, data, seed=5))) == signature(list(Mixer(corpora, data, seed=5)))
    assert signature(list(Mixer(corpora, data, seed=5))) != signature(list(Mixer(corpora, data, seed=6)))


# ---------------------------------------------------------------- resume
@settings(max_examples=50, deadline=None)
@given(
    unit=st.sampled_from(["tokens", "examples"]),
    stratify=st.booleans(),
    k=st.integers(0, 260),
    partial=st.integers(0, 40),
)
def test_resume_from_a_json_state_continues_the_exact_stream(unit: str, stratify: bool, k: int, partial: int) -> None:
    corpora, data = two_kinds(unit=unit, stratify=stratify)

    def start() -> tuple[Mixer, list[Example]]:
        mixer = Mixer(corpora, data, seed=3, epochs=2)
        iterator = iter(mixer)
        head = [next(iterator, None) for _ in range(k)]
        return mixer, [e for e in head if e is not None] + mixer.take_tokens(partial)  # may stop mid-example

    uninterrupted, head = start()
    expected = [list(uninterrupted), epoch(uninterrupted, 2)]

    interrupted, _ = start()
    state = json.loads(json.dumps(interrupted.state_dict()))
    resumed = Mixer(corpora, data, seed=3, epochs=2)
    resumed.load_state_dict(state)
    rest = [list(resumed), epoch(resumed, 2)]
    assert signature(rest[0] + rest[1]) == signature(expected[0] + expected[1])

    # Nothing lost or doubled at the cut: the pieces concatenate to the tokens of the uninterrupted epoch.
    def tokens(stream: list[Example]) -> list[tuple[str, int]]:
        return [(e.source, int(t)) for e in stream for t in e.ids]

    assert tokens(head + rest[0]) == tokens(list(Mixer(corpora, data, seed=3, epochs=2)))


def test_resume_cost_does_not_grow_with_position() -> None:
    rng = np.random.default_rng(0)
    corpora = [
        make_corpus("real", "real", rng.integers(1, 8, 1_000_000)),
        make_corpus("synthetic", "synthetic", rng.integers(1, 16, 1_000_000)),
    ]
    data = make_data(corpora, 0.3, unit="examples")

    def resume_seconds(position: int) -> float:
        mixer = Mixer(corpora, data, seed=0)
        state = dict(mixer.state_dict(), position=position)
        began = time.perf_counter()
        mixer.load_state_dict(state)
        piece = mixer.take_tokens(1)
        elapsed = time.perf_counter() - began
        assert len(piece) == 1
        return elapsed

    timings = [(resume_seconds(10), resume_seconds(1_000_000)) for _ in range(3)]  # interleaved: same load
    early, late = min(t for t, _ in timings), min(t for _, t in timings)
    assert late < 3 * early + 0.05  # a replay of a million examples would take seconds


def test_load_state_dict_refuses_another_world_size_or_other_data() -> None:
    corpora, data = two_kinds()
    state = Mixer(corpora, data, seed=0, rank=0, world_size=2).state_dict()
    with pytest.raises(MixerError, match="saved with 2 processes; this run has 3"):
        Mixer(corpora, data, seed=0, rank=0, world_size=3).load_state_dict(state)
    state = Mixer(corpora, data, seed=0).state_dict()
    shorter = [corpora[0], make_corpus("synthetic", "synthetic", corpora[1].lengths[:-1])]
    with pytest.raises(MixerError, match="planned over other data"):
        Mixer(shorter, data, seed=0).load_state_dict(state)


@pytest.mark.parametrize(
    "change",
    [
        {"synthetic_ratio": 0.45},
        {"schedule": ScheduleConfig(type="steps", steps=[[1, 0.1], [2, 0.6]])},
        {"unit": "examples"},
        {"stratify": True},
        {"weights": True},
        {"seed": 7},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_changed_setting_at_resume_takes_effect_at_the_next_epoch(change: dict) -> None:
    """The documented rule: the epoch under way finishes with the plan it started with, frozen in the state."""
    corpora, data = two_kinds(0.3, allow_repeat=True)
    old = Mixer(corpora, data, seed=0, epochs=2)
    old.set_epoch(1)
    head = old.take_tokens(700)  # stopped mid-epoch, mid-example
    expected_rest = list(old)

    seed = change.get("seed", 0)
    fields = {k: v for k, v in change.items() if k not in ("seed", "weights")}
    changed = dataclasses.replace(data, **fields)
    if "weights" in change:
        changed.sources = [dataclasses.replace(s, weight=float(i + 1)) for i, s in enumerate(changed.sources)]
    resumed = Mixer(corpora, changed, seed=seed, epochs=2)
    saved = Mixer(corpora, data, seed=0, epochs=2)
    saved.set_epoch(1)
    saved.take_tokens(700)
    resumed.load_state_dict(json.loads(json.dumps(saved.state_dict())))
    rest = list(resumed)
    assert signature(rest) == signature(expected_rest)
    epoch_one = head + rest
    real = collections.Counter(e.index for e in epoch_one if e.kind == "real" and e.start == 0)
    assert sorted(real) == list(range(len(corpora[0]))) and set(real.values()) == {1}  # each real example once
    # From the next epoch on, the new settings plan the stream.
    fresh = Mixer(corpora, changed, seed=seed, epochs=2)
    assert signature(epoch(resumed, 2)) == signature(epoch(fresh, 2))


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("unit,stratify", [("tokens", False), ("tokens", True), ("examples", True)])
def test_ranks_get_disjoint_shares_that_add_up_to_the_single_rank_stream(
    world_size: int, unit: str, stratify: bool
) -> None:
    corpora, data = two_kinds(unit=unit, stratify=stratify)

    def keys(stream: list[Example]) -> list[tuple[str, int, int]]:
        return [(e.source, e.index, len(e.ids)) for e in stream]

    single = keys(list(Mixer(corpora, data, seed=2)))
    ranks = [list(Mixer(corpora, data, seed=2, rank=r, world_size=world_size)) for r in range(world_size)]
    shares = [keys(stream) for stream in ranks]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not {(s, i) for s, i, _ in shares[a]} & {(s, i) for s, i, _ in shares[b]}
    assert collections.Counter(k for share in shares for k in share) == collections.Counter(single)
    everything = [e for stream in ranks for e in stream]
    got = counted(everything, unit)
    assert abs(got["synthetic"] / sum(got.values()) - 0.3) <= 0.01
    shard_tokens = Mixer(corpora, data, seed=2, world_size=world_size).shard_tokens(1)
    assert shard_tokens == [sum(len(e.ids) for e in stream) for stream in ranks]
    assert sum(shard_tokens) == sum(n for _, _, n in single)


# ---------------------------------------------------------------- schedules and ratio changes
def test_linear_schedule_each_epoch_realizes_its_own_target() -> None:
    corpora, _ = two_kinds()
    data = make_data(corpora, 0.1, schedule=ScheduleConfig(type="linear", start=0.1, end=0.5), allow_repeat=True)
    mixer = Mixer(corpora, data, seed=0, epochs=3)
    for number, target in [(1, 0.1), (2, 0.3), (3, 0.5)]:
        got = counted(epoch(mixer, number), "tokens")
        assert got["real"] == corpora[0].n_tokens
        assert abs(got["synthetic"] / sum(got.values()) - target) <= 0.5 / sum(got.values()) + 1e-12


def test_reduce_ratio_halves_the_following_epochs_and_survives_a_state_round_trip() -> None:
    corpora, data = two_kinds(0.4, unit="examples")
    mixer = Mixer(corpora, data, seed=0, epochs=3)
    first = [e for _, e in zip(range(50), mixer)]
    mixer.reduce_ratio(0.5)  # mid-epoch: the epoch under way keeps its plan
    first += list(mixer)
    assert abs(synthetic_share(first) - 0.4) <= 0.5 / len(first)
    assert sorted(e.index for e in first if e.kind == "real") == list(range(120))

    resumed = Mixer(corpora, data, seed=0, epochs=3)
    resumed.load_state_dict(json.loads(json.dumps(mixer.state_dict())))
    for number in (2, 3):
        expected, got = epoch(mixer, number), epoch(resumed, number)
        assert signature(got) == signature(expected)
        assert abs(synthetic_share(got) - 0.2) <= 0.5 / len(got)


def test_reduce_ratio_before_an_epoch_starts_applies_to_it() -> None:
    corpora, data = two_kinds(0.4, unit="examples")
    mixer = Mixer(corpora, data, seed=0, epochs=2)
    mixer.reduce_ratio(0.5)
    assert abs(synthetic_share(list(mixer)) - 0.2) <= 0.01


# ---------------------------------------------------------------- provenance (end to end, real files)
def test_examples_carry_source_kind_and_index_in_the_source_file(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    real = ["alpha one", "beta two", "alpha one", "gamma three", "delta four"]  # line 3 repeats line 1
    synthetic = ["made up 1", "beta two", "made up 2", "made up 3", "made up 4"]  # "beta two" is real already
    for name, texts in (("real.jsonl", real), ("syn.jsonl", synthetic)):
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    data = DataConfig(
        sources=[
            SourceConfig(name="gen", kind="synthetic", path=str(tmp_path / "syn.jsonl")),
            SourceConfig(name="docs", kind="real", path=str(tmp_path / "real.jsonl")),
        ],
        synthetic_ratio=0.5,  # 4 real examples left, so all 4 synthetic ones are drawn
        unit="examples",
        held_out=HeldOutConfig(fraction=0.0),
    )
    corpora = build_corpora(data, TokenizerConfig(), tokenizer=byte_tokenizer)
    stream = list(Mixer(corpora.train, data, seed=0))
    lines = {"docs": real, "gen": synthetic}
    for example in stream:
        assert example.kind == {"docs": "real", "gen": "synthetic"}[example.source]
        text = byte_tokenizer.decode(example.ids.tolist())
        assert text == lines[example.source][example.index] + byte_tokenizer.eos_token
    indices = {kind: sorted(e.index for e in stream if e.source == kind) for kind in lines}
    assert indices == {"docs": [0, 1, 3, 4], "gen": [0, 2, 3, 4]}  # later lines keep their original index
