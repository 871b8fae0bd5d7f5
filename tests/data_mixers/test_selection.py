"""Selecting synthetic data beyond the upper perplexity bar: the verifier's two-sided band
(data.filters.verifier.min_quantile / min_ppl) and the diversity selection (data.filters.diversity), each
counted per source, cached with the cleaning, and their bad settings one-line errors naming the key.

The verifier model is replaced by a stand-in whose perplexity is an example's length in tokens, and the
byte-level tokenizer makes that hand-computable: a text of n ASCII characters is n + 1 tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers import DataConfig, MixerError, SourceConfig, build_corpora
from synthmix.data_mixers import corpus as corpus_module
from synthmix.data_mixers import diversity as diversity_module
from synthmix.data_mixers.config import (
    DiversityConfig,
    FilterConfig,
    HeldOutConfig,
    TokenizerConfig,
    VerifierConfig,
    validate_data,
)
from synthmix.data_mixers.diversity import jaccard, near_duplicates, ngram_sets, novelty
from synthmix.data_mixers.inspect import format_report
from synthmix.errors import ConfigError
from synthmix.schema import build as build_section


class LengthVerifier:
    """Stands in for the reference model: an example's perplexity is its number of tokens."""

    def __init__(self, config: VerifierConfig, name: str, tokenizer: Any, progress: bool | None) -> None:
        self.config, self.name = config, name

    def perplexities(self, examples: list[np.ndarray], desc: str) -> np.ndarray:
        return np.array([float(len(e)) for e in examples])


def jsonl(folder: Path, name: str, texts: list[str]) -> str:
    path = folder / name
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def padded(tag: str, n: int) -> str:
    """A text of exactly n characters starting with `tag` (n + 1 tokens with the end of sequence)."""
    return (tag + "-" * n)[:n]


def reports(corpora: Any) -> dict[str, Any]:
    return {r.name: r for r in corpora.reports}


# ---------------------------------------------------------------------------------------------- the band
@pytest.fixture
def band_sources(tmp_path: Path) -> tuple[list[SourceConfig], HeldOutConfig]:
    # Held-out perplexities 11, 21, ..., 91: the 0.1 quantile is 19, the 0.9 quantile 83.
    held_texts = [padded(f"h{n}", n) for n in range(10, 91, 10)]
    held = HeldOutConfig(fraction=0.0, sources=[SourceConfig(name="held", path=jsonl(tmp_path, "h.jsonl", held_texts))])
    a = [padded("a", n) for n in (5, 10, 40, 50, 100)]  # ppl 6 and 11: too typical; 41, 51: inside; 101: too surprising
    b = [padded("b", n) for n in (3, 60, 120, 150)]  # ppl 4: too typical; 61: inside; 121, 151: too surprising
    sources = [
        SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", ["real " * 3, "also real " * 4])),
        SourceConfig(name="a", kind="synthetic", path=jsonl(tmp_path, "a.jsonl", a)),
        SourceConfig(name="b", kind="synthetic", path=jsonl(tmp_path, "b.jsonl", b)),
    ]
    return sources, held


def band_data(tmp_path: Path, sources: list[SourceConfig], held: HeldOutConfig, **verifier: Any) -> DataConfig:
    filters = FilterConfig(verifier=VerifierConfig(model="length-model", **verifier))
    data = DataConfig(sources=sources, held_out=held, filters=filters, cache_dir=str(tmp_path / "cache"))
    validate_data(data)
    return data


def test_the_band_drops_both_ends_and_counts_each_per_source(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase, band_sources: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus_module, "Verifier", LengthVerifier)
    sources, held = band_sources
    data = band_data(tmp_path, sources, held, min_quantile=0.1)
    corpora = build_corpora(data, TokenizerConfig(), tokenizer=byte_tokenizer)
    by = reports(corpora)
    assert (by["a"].too_typical, by["a"].unverified, by["a"].examples) == (2, 1, 2)
    assert (by["b"].too_typical, by["b"].unverified, by["b"].examples) == (1, 2, 1)
    assert (by["docs"].too_typical, by["docs"].unverified) == (0, 0)  # real text is never filtered
    kept = {c.name: c.source_index.tolist() for c in corpora.train}
    assert kept["a"] == [2, 3] and kept["b"] == [1]
    summary = corpora.cleaning["verifier"]
    assert summary["min_threshold"] == pytest.approx(19.0) and summary["threshold"] == pytest.approx(83.0)
    assert (summary["kept"], summary["too_typical"], summary["synthetic_scored"]) == (3, 3, 9)
    assert summary["rule"] == "quantile 0.1 of real <= ppl <= quantile 0.9 of real"

    # Without a lower bound the over-typical examples stay (today's behaviour); an absolute min_ppl works alike.
    upper_only = build_corpora(band_data(tmp_path, sources, held), TokenizerConfig(), tokenizer=byte_tokenizer)
    assert [(r.too_typical, r.unverified) for r in upper_only.reports] == [(0, 0), (0, 1), (0, 2)]
    assert upper_only.cleaning["verifier"]["min_threshold"] is None
    absolute_bar = band_data(tmp_path, sources, held, min_ppl=8.0)
    absolute = build_corpora(absolute_bar, TokenizerConfig(), tokenizer=byte_tokenizer)
    assert [r.too_typical for r in absolute.reports] == [0, 1, 1]

    # The counts are cached with the cleaning: the same settings again load nothing.
    again = build_corpora(data, TokenizerConfig(), tokenizer=byte_tokenizer)
    assert again.cleaning["store"] == "cached" and reports(again)["a"].too_typical == 2

    report = {"unit": "tokens", "packing": "wrap", "seq_len": 64, "sources": [vars(r) for r in corpora.reports],
              "cleaning": corpora.cleaning, "held_out_examples": 9, "epochs": [], "skipped": []}  # fmt: skip
    text = format_report(report)
    assert "typical" in text and "near dup" not in text
    assert "quantile 0.1 of real <= ppl <= quantile 0.9 of real: 19 to 83" in text


def test_a_lower_bound_above_the_upper_one_is_an_error_naming_the_keys(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase, band_sources: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus_module, "Verifier", LengthVerifier)
    sources, held = band_sources
    with pytest.raises(MixerError, match=r"lower bound \(90.0: 90\) is not below the upper bound \(quantile 0.9"):
        build_corpora(band_data(tmp_path, sources, held, min_ppl=90.0), TokenizerConfig(), tokenizer=byte_tokenizer)


# ---------------------------------------------------------------------------------------------- diversity
REAL = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Lists are mutable sequences, typically used to store collections of items.",
    "A generator function returns an iterator that yields values one at a time.",
]
NOVEL = "Completely different words: zebra quartz violin harbor; nothing shared here"


def test_the_diversity_selection_drops_near_duplicates_and_copies_and_keeps_novel_text(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    copy = REAL[1][:-1] + "!"  # the real text, one character changed: almost nothing new
    variants = [NOVEL + " x", NOVEL + " yy", NOVEL + " zzz"]  # near-duplicates of each other
    own = "Own text: mango kiwi lychee papaya guava fig plum"
    sources = [
        SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", REAL)),
        SourceConfig(name="a", kind="synthetic", path=jsonl(tmp_path, "a.jsonl", [copy, variants[0], own])),
        SourceConfig(name="b", kind="synthetic", path=jsonl(tmp_path, "b.jsonl", [variants[1], variants[2], "hi"])),
    ]

    def corpora_with(**diversity: Any) -> Any:
        filters = FilterConfig(diversity=DiversityConfig(**diversity))
        data = DataConfig(sources=sources, held_out=HeldOutConfig(fraction=0.0), filters=filters,
                          cache_dir=str(tmp_path / "cache"))  # fmt: skip
        validate_data(data)
        return build_corpora(data, TokenizerConfig(), tokenizer=byte_tokenizer)

    corpora = corpora_with(max_overlap=0.5, min_novelty=0.5)
    by = reports(corpora)
    assert (by["a"].not_novel, by["b"].not_novel) == (1, 0)
    assert by["a"].near_duplicates + by["b"].near_duplicates == 2  # one of the three variants is kept
    kept = [corpora.tokenizer.decode(c.example_ids(i).tolist(), skip_special_tokens=True)
            for c in corpora.train if c.kind == "synthetic" for i in range(len(c))]  # fmt: skip
    assert copy not in kept and sum(v in kept for v in variants) == 1
    assert "hi" in kept  # shorter than n: nothing to compare, kept
    assert own in kept
    summary = corpora.cleaning["diversity"]
    assert (summary["not_novel"], summary["near_duplicates"], summary["kept"]) == (1, 2, 3)
    assert corpora_with(max_overlap=0.5, min_novelty=0.5).cleaning["store"] == "cached"

    only_novelty = reports(corpora_with(min_novelty=0.5))
    assert [(r.not_novel, r.near_duplicates) for r in only_novelty.values()] == [(0, 0), (1, 0), (0, 0)]
    only_overlap = reports(corpora_with(max_overlap=0.5))
    assert sum(r.not_novel for r in only_overlap.values()) == 0
    assert sum(r.near_duplicates for r in only_overlap.values()) == 2

    report = {"unit": "tokens", "packing": "wrap", "seq_len": 64, "sources": [vars(r) for r in corpora.reports],
              "cleaning": corpora.cleaning, "held_out_examples": 0, "epochs": [], "skipped": []}  # fmt: skip
    text = format_report(report)
    assert "not novel" in text and "near dup" in text and "typical" not in text
    assert "diversity (5-grams, novelty >= 0.5, overlap <= 0.5): kept 3 of 6 synthetic examples" in text


def brute_sets(sequences: list[list[int]], n: int) -> list[set[tuple[int, ...]]]:
    return [{tuple(s[k : k + n]) for k in range(len(s) - n + 1)} for s in sequences]


def flat(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]), starts, lengths


def test_the_hashed_sets_match_sets_of_tuples(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(0)
    sequences = [[rng.randrange(6) for _ in range(rng.randrange(0, 30))] for _ in range(60)]
    real = [[rng.randrange(6) for _ in range(40)] for _ in range(5)]
    truth, real_truth = brute_sets(sequences, 3), set().union(*brute_sets(real, 3))
    sets = ngram_sets(*flat(sequences), 3)
    assert sets.sizes.tolist() == [len(s) for s in truth]
    monkeypatch.setattr(diversity_module, "_POSITIONS_PER_CHUNK", 50)  # many chunks: the same sets
    chunked = ngram_sets(*flat(sequences), 3)
    assert np.array_equal(chunked.hashes, sets.hashes) and np.array_equal(chunked.bounds, sets.bounds)
    scores = novelty(sets, np.unique(ngram_sets(*flat(real), 3).hashes))
    expected = [1 - len(s & real_truth) / len(s) if s else 1.0 for s in truth]
    assert scores == pytest.approx(expected)
    for i, j in [(0, 1), (2, 3), (4, 4), (5, 9)]:
        if truth[i] | truth[j]:
            exact = len(truth[i] & truth[j]) / len(truth[i] | truth[j])
            assert jaccard(sets.of(i), sets.of(j)) == pytest.approx(exact)


def test_near_duplicates_agree_with_the_exact_greedy_pass() -> None:
    rng = random.Random(1)
    originals = [[rng.randrange(500) for _ in range(60)] for _ in range(150)]
    sequences = list(originals)
    for k in range(0, 150, 3):  # a near copy of every third: 2 tokens changed (Jaccard about 0.8)
        copy = list(originals[k])
        for position in rng.sample(range(60), 2):
            copy[position] = rng.randrange(500)
        sequences.append(copy)
    sets = ngram_sets(*flat(sequences), 4)
    order = np.random.default_rng(0).permutation(len(sequences))
    dropped = near_duplicates(sets, order, 0.5)
    truth = brute_sets(sequences, 4)
    kept: list[int] = []
    expected = np.zeros(len(sequences), dtype=bool)
    for i in order:
        if any(len(truth[i] & truth[j]) / len(truth[i] | truth[j]) > 0.5 for j in kept):
            expected[i] = True
        else:
            kept.append(int(i))
    assert expected.sum() == 50
    assert np.array_equal(dropped, expected)
    assert np.array_equal(near_duplicates(sets, order, 0.5), dropped)  # deterministic


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"verifier": {"min_quantile": 0.9}}, r"verifier.min_quantile: must be below quantile \(0.9\), got 0.9"),
        ({"verifier": {"min_quantile": -0.1}}, r"data.filters.verifier.min_quantile: must be in \[0, 1\]"),
        ({"verifier": {"min_ppl": 0}}, "data.filters.verifier.min_ppl: must be > 0"),
        ({"verifier": {"min_ppl": 50, "max_ppl": 40}}, r"data.filters.verifier.min_ppl: must be below max_ppl \(40"),
        ({"diversity": {"ngram": 0}}, "data.filters.diversity.ngram: must be at least 1"),
        ({"diversity": {"max_overlap": 1.0}}, r"data.filters.diversity.max_overlap: must be in \(0, 1\)"),
        ({"diversity": {"min_novelty": 0}}, r"data.filters.diversity.min_novelty: must be in \(0, 1\]"),
        ({"diversity": {"max_overlaps": 0.5}}, "data.filters.diversity.max_overlaps"),  # a misspelt key
    ],
)
def test_bad_selection_settings_are_one_line_errors_naming_the_key(overrides: dict, message: str) -> None:
    raw = {"sources": [{"name": "docs", "path": "r.jsonl"}], "filters": overrides}
    with pytest.raises(ConfigError, match=message) as caught:
        validate_data(build_section(DataConfig, raw, "data"))
    assert "\n" not in str(caught.value)


def test_the_model_card_counts_what_the_selection_removed_only_when_it_removed_something() -> None:
    from synthmix.trainer.reporting.cards import model_card

    def card(gen: dict[str, Any]) -> str:
        sources = [{"name": "web", "kind": "real", "examples": 10, "tokens": 100}, gen]
        data = {"synthetic_ratio": 0.5, "unit": "examples", "sources": [{"name": "web"}, {"name": "gen"}]}
        lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj"]}
        config = {"model": {"name": "org/base"}, "lora": lora, "data": data}
        return model_card([{"event": "config", "config": config, "sources": sources}])

    selected = {"name": "gen", "kind": "synthetic", "examples": 6, "tokens": 60, "unverified": 1, "too_typical": 2,
                "not_novel": 1, "near_duplicates": 3}  # fmt: skip
    assert "| gen | synthetic | 6 | 60 | 0 | 0, 0, 0, 1 | 2, 1, 3 |" in card(selected)
    assert "| web | real | 10 | 100 | 0 | 0, 0, 0, 0 | 0, 0, 0 |" in card(selected)
    plain = card({"name": "gen", "kind": "synthetic", "examples": 6, "tokens": 60, "unverified": 1})
    assert "too typical" not in plain and "| gen | synthetic | 6 | 60 | 0 | 0, 0, 0, 1 |\n" in plain
