"""The pure checks behind cleaning: n-gram repetition, filters, held-out selection, duplicate keys."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_mixers.config import FilterConfig
from data_mixers.hygiene import first_occurrences, item_key, passes_filters, repeated_ngram_rate, select_held_out


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


def test_filters_bound_length_and_repetition_inclusively() -> None:
    ids = np.array([1, 2, 1, 2, 1, 2])  # 6 tokens, bigram repetition 0.6
    assert passes_filters(ids, FilterConfig(min_tokens=6, max_tokens=6))
    assert not passes_filters(ids, FilterConfig(min_tokens=7))
    assert not passes_filters(ids, FilterConfig(max_tokens=5))
    assert passes_filters(ids, FilterConfig(ngram=2, max_repeated_ngram_rate=0.6))
    assert not passes_filters(ids, FilterConfig(ngram=2, max_repeated_ngram_rate=0.59))


def test_held_out_selection_depends_on_the_texts_not_their_order() -> None:
    keys = [f"example number {i}" for i in range(2000)]
    chosen = [keys[i] for i in select_held_out(keys, 0.1, None)]
    assert len(chosen) == 200
    shuffled = random.Random(0).sample(keys, len(keys))
    assert {shuffled[i] for i in select_held_out(shuffled, 0.1, None)} == set(chosen)
    capped = [keys[i] for i in select_held_out(keys, 0.1, 20)]
    assert len(capped) == 20 and set(capped) <= set(chosen)  # the cap keeps a subset of the same ranking
    assert len(select_held_out(keys[:3], 0.1, None)) == 1  # a tiny corpus still holds one example out
    assert len(select_held_out(keys, 0.0, None)) == 0


def test_first_occurrences_keep_the_first_copy_and_remember_it() -> None:
    seen: set[str] = {"b"}
    assert first_occurrences(["a", "b", "a", "c"], seen).tolist() == [True, False, False, True]
    assert seen == {"a", "b", "c"}


def test_a_chat_is_identified_by_its_content_not_by_key_order() -> None:
    one = [{"role": "user", "content": "hi"}]
    other = [{"content": "hi", "role": "user"}]
    assert item_key(one) == item_key(other) != item_key([{"role": "user", "content": "hi!"}])
    assert item_key("plain text") == "plain text"
