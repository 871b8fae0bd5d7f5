"""Pure checks on examples, over arrays: held-out selection, exact duplicates, contamination, quality filters.

Examples are identified by the 128-bit hash of their exact content (`encoding.key_hashes`), so these work on
millions of examples without holding their texts: dedup keeps hashes, not texts.
"""

from __future__ import annotations

import numpy as np

from synthmix.data_mixers.config import FilterConfig

_NGRAM_BASE = np.uint64(1_000_003)
_POSITIONS_PER_CHUNK = 1 << 21


def unit_hashes(keys: np.ndarray) -> np.ndarray:
    """A stable number in [0, 1) per example, from its content hash, so held-out membership never depends on
    the order of the examples."""
    return keys[:, 0].astype(np.float64) / 2.0**64


def select_held_out(keys: np.ndarray, fraction: float, cap: int | None) -> np.ndarray:
    """Indices of the held-out examples: the round(fraction * n) (at least 1, at most `cap`) whose hash is
    smallest, so membership depends on the contents, never on their order."""
    if fraction <= 0 or len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    count = max(1, round(fraction * len(keys)))
    if cap is not None:
        count = min(count, cap)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # by hash; ties (equal contents) by the second word
    return np.sort(order[:count])


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of every distinct key, in the given order (later copies are duplicates)."""
    keep = np.zeros(len(keys), dtype=bool)
    if len(keys):
        _, first = np.unique(np.ascontiguousarray(keys).view("V16").ravel(), return_index=True)
        keep[first] = True
    return keep


def contained_in(keys: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mask of the keys that also appear in `reference` (e.g. training examples equal to a held-out one)."""
    if len(keys) == 0 or len(reference) == 0:
        return np.zeros(len(keys), dtype=bool)
    as_void = lambda a: np.ascontiguousarray(a).view("V16").ravel()  # noqa: E731
    return np.isin(as_void(keys), as_void(reference))


def repeated_ngram_rates(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """Per example, the share of its n-grams that repeat an earlier n-gram of the same example.

    Vectorised over examples: every n-gram is hashed to 64 bits (a polynomial of its ids, so collisions are
    negligible), tagged with its example, and the distinct (example, hash) pairs are counted; examples are
    taken in chunks so memory stays bounded.
    """
    rates = np.zeros(len(starts), dtype=np.float64)
    counts = np.maximum(lengths - n + 1, 0)
    chunk: list[int] = []
    size = 0
    for i in range(len(starts) + 1):
        if i == len(starts) or (size + counts[i] > _POSITIONS_PER_CHUNK and chunk):
            _rates_of_chunk(ids, starts, counts, n, np.asarray(chunk, dtype=np.int64), rates)
            chunk, size = [], 0
        if i < len(starts):
            chunk.append(i)
            size += int(counts[i])
    return rates


def _rates_of_chunk(
    ids: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int, members: np.ndarray, out: np.ndarray
) -> None:
    member_counts = counts[members]
    total = int(member_counts.sum())
    if total == 0:
        return
    owner = np.repeat(np.arange(len(members)), member_counts)
    first = np.cumsum(member_counts) - member_counts
    positions = starts[members][owner] + (np.arange(total) - first[owner])
    hashes = np.zeros(total, dtype=np.uint64)
    for k in range(n):
        hashes = hashes * _NGRAM_BASE + np.asarray(ids[positions + k], dtype=np.uint64)
    pairs = np.stack([owner.astype(np.uint64), hashes], axis=1)
    distinct = np.unique(pairs.view("V16").ravel())
    distinct_owner = np.frombuffer(distinct.tobytes(), dtype=np.uint64).reshape(-1, 2)[:, 0].astype(np.int64)
    unique_per = np.bincount(distinct_owner, minlength=len(members))
    repeats = np.where(member_counts > 1, (member_counts - unique_per) / np.maximum(member_counts, 1), 0.0)
    out[members] = repeats


def repeated_ngram_rate(ids: np.ndarray, n: int) -> float:
    """Share of one example's n-grams that repeat an earlier n-gram of it (see `repeated_ngram_rates`)."""
    ids = np.asarray(ids)
    return float(repeated_ngram_rates(ids, np.array([0]), np.array([len(ids)]), n)[0])


def filter_mask(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, filters: FilterConfig) -> np.ndarray:
    """Which examples meet the length bounds and the repeated-n-gram limit (bounds inclusive)."""
    passing = lengths >= filters.min_tokens
    if filters.max_tokens is not None:
        passing &= lengths <= filters.max_tokens
    if filters.max_repeated_ngram_rate is not None and passing.any():
        chosen = np.flatnonzero(passing)
        rates = repeated_ngram_rates(ids, starts[chosen], lengths[chosen], filters.ngram)
        passing[chosen] = rates <= filters.max_repeated_ngram_rate
    return passing
