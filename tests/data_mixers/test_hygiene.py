"""The pure checks behind cleaning, over arrays: n-gram repetition, filters, held-out selection, duplicates and
contamination by content hash."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthmix.data_mixers.config import FilterConfig
from synthmix.data_mixers.encoding import item_key, key_hashes
from synthmix.data_mixers.hygiene import (
    contained_in,
    filter_mask,
    first_occurrences,
    repeated_ngram_rate,
    repeated_ngram_rates,
    select_held_out,
)
from synthmix.data_mixers.sources import PromptCompletion


@pytest.mark.parametrize(
    "ids,n,expected",
    [
        ([1, 2, 1, 2, 1, 2], 2, 3 / 5),  # bigrams 12 21 12 21 12: 5, of which 2 distinct, so 3 repeat
        ([1, 2, 1, 2, 1, 2], 3, 2 / 4),  # trigrams 121 212 121 212
        ([7, 7, 7, 7], 1, 3 / 4),
        ([1, 2, 3, 4, 5], 2, 0.0),
        ([1, 2], 2, 0.0),  # a single n-gram cannot repeat
        ([1], 4, 0.0),
    ],
)
def test_repeated_ngram_rate_by_hand(ids: list[int], n: int, expected: float) -> None:
    assert repeated_ngram_rate(np.array(ids), n) == pytest.approx(expected)


def _naive_rate(ids: list[int], n: int) -> float:
    grams = [tuple(ids[k : k + n]) for k in range(len(ids) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if len(grams) > 1 else 0.0


@settings(max_examples=60, deadline=None)
@given(
    examples=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=30), min_size=1, max_size=12),
    n=st.integers(1, 4),
)
def test_the_vectorised_rates_equal_a_per_example_count(examples: list[list[int]], n: int) -> None:
    ids = np.array([t for e in examples for t in e], dtype=np.int32)
    lengths = np.array([len(e) for e in examples])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rates = repeated_ngram_rates(ids, starts, lengths, n)
    assert rates.tolist() == pytest.approx([_naive_rate(e, n) for e in examples])


def test_filters_bound_length_and_repetition_inclusively() -> None:
    ids = np.array([1, 2, 1, 2, 1, 2])  # 6 tokens, bigram repetition 0.6
    one = (ids, np.array([0]), np.array([6]))
    assert filter_mask(*one, FilterConfig(min_tokens=6, max_tokens=6)).tolist() == [True]
    assert filter_mask(*one, FilterConfig(min_tokens=7)).tolist() == [False]
    assert filter_mask(*one, FilterConfig(max_tokens=5)).tolist() == [False]
    assert filter_mask(*one, FilterConfig(ngram=2, max_repeated_ngram_rate=0.6)).tolist() == [True]
    assert filter_mask(*one, FilterConfig(ngram=2, max_repeated_ngram_rate=0.59)).tolist() == [False]


def test_held_out_selection_depends_on_the_texts_not_their_order() -> None:
    texts = [f"example number {i}" for i in range(2000)]
    chosen = {texts[i] for i in select_held_out(key_hashes(texts), 0.1, None)}
    assert len(chosen) == 200
    shuffled = random.Random(0).sample(texts, len(texts))
    assert {shuffled[i] for i in select_held_out(key_hashes(shuffled), 0.1, None)} == chosen
    capped = {texts[i] for i in select_held_out(key_hashes(texts), 0.1, 20)}
    assert len(capped) == 20 and capped <= chosen  # the cap keeps a subset of the same ranking
    assert len(select_held_out(key_hashes(texts[:3]), 0.1, None)) == 1  # a tiny corpus still holds one out
    assert len(select_held_out(key_hashes(texts), 0.0, None)) == 0


def test_first_occurrences_keep_the_first_copy() -> None:
    keys = key_hashes(["a", "b", "a", "c", "b"])
    assert first_occurrences(keys).tolist() == [True, True, False, True, False]
    assert first_occurrences(np.zeros((0, 2), np.uint64)).tolist() == []


def test_contamination_finds_the_examples_equal_to_a_held_out_one() -> None:
    assert contained_in(key_hashes(["a", "b", "c"]), key_hashes(["c", "z"])).tolist() == [False, False, True]


def test_an_example_is_identified_by_its_content_not_by_key_order() -> None:
    one = [{"role": "user", "content": "hi"}]
    other = [{"content": "hi", "role": "user"}]
    assert item_key(one) == item_key(other) != item_key([{"role": "user", "content": "hi!"}])
    assert item_key("plain text") == "plain text"
    assert item_key(PromptCompletion("a", "b")) != item_key(PromptCompletion("ab", ""))
    assert np.array_equal(key_hashes([one]), key_hashes([other]))
