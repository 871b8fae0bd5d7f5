"""Pure checks on examples: exact duplicates, held-out selection, contamination and quality filters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from data_mixers.config import FilterConfig

Item = str | list[dict[str, str]]


def item_key(item: Item) -> str:
    """The identity of an example for duplicate and contamination checks (exact text, or the exact chat)."""
    return item if isinstance(item, str) else json.dumps(item, sort_keys=True, ensure_ascii=False)


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) from an example's key, so held-out membership never depends on order."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def select_held_out(keys: Sequence[str], fraction: float, cap: int | None) -> np.ndarray:
    """Indices of the held-out examples: the round(fraction * n) (at least 1, at most `cap`) whose hash is
    smallest, so membership depends on the texts, never on their order."""
    if fraction <= 0 or not keys:
        return np.zeros(0, dtype=np.int64)
    count = max(1, round(fraction * len(keys)))
    if cap is not None:
        count = min(count, cap)
    hashes = np.array([unit_hash(k) for k in keys])
    return np.sort(np.argsort(hashes, kind="stable")[:count])


def first_occurrences(keys: Sequence[str], seen: set[str]) -> np.ndarray:
    """Mask of examples whose key is not in `seen` nor earlier in `keys`; adds the kept keys to `seen`."""
    keep = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return keep


def repeated_ngram_rate(ids: np.ndarray, n: int) -> float:
    """Share of an example's n-grams that repeat an earlier n-gram of the same example."""
    count = len(ids) - n + 1
    if count <= 1:
        return 0.0
    grams = np.lib.stride_tricks.sliding_window_view(np.asarray(ids), n)
    unique = len(np.unique(grams, axis=0))
    return (count - unique) / count


def passes_filters(ids: np.ndarray, filters: FilterConfig) -> bool:
    """Whether a synthetic example meets the length bounds and the repeated-n-gram limit."""
    if len(ids) < filters.min_tokens:
        return False
    if filters.max_tokens is not None and len(ids) > filters.max_tokens:
        return False
    if filters.max_repeated_ngram_rate is not None:
        return repeated_ngram_rate(ids, filters.ngram) <= filters.max_repeated_ngram_rate
    return True
