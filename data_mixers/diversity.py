"""The diversity selection (data.filters.diversity): synthetic examples dropped when they are near-duplicates of
another synthetic example, or when they add next to nothing to the real training text.

A generator trained on its own output narrows: its samples repeat each other and the most typical passages of
its training text. Both are measured over sets of token n-grams, each n-gram hashed to 64 bits (a polynomial of
its ids, then mixed), never over texts:
- novelty: the share of an example's distinct n-grams that no real training example contains (`min_novelty`);
- overlap: the Jaccard similarity of two examples' n-gram sets (`max_overlap`). Examples are taken in the order
  of their content hashes (fixed, and independent of file order); each is dropped when it overlaps more than
  `max_overlap` with one kept before it. Candidates come from MinHash signatures with LSH banding (no pass over
  all pairs), and an exact Jaccard of the two sets decides, so a pair found is judged exactly; a pair LSH does
  not propose is kept (at the threshold itself LSH proposes at least 80% of pairs, above it nearly all).

Examples shorter than n tokens have no n-gram: they are kept, and neither compared nor scored.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from synthmix.data_mixers.config import DiversityConfig

NUM_PERM = 128
"""MinHash functions per signature (and so per LSH band layout: bands x rows = NUM_PERM)."""
_NGRAM_BASE = np.uint64(1_000_003)
_POSITIONS_PER_CHUNK = 1 << 21
_ESTIMATE_MARGIN = 0.2
"""Candidates whose MinHash estimate of the Jaccard is this far below the threshold skip the exact check (about
4.5 standard deviations of the estimate with 128 functions)."""
_MAX = np.iinfo(np.uint64).max


@dataclasses.dataclass
class NgramSets:
    """The distinct hashed n-grams of a list of examples: example i's sorted set is
    `hashes[bounds[i] : bounds[i + 1]]`."""

    hashes: np.ndarray
    bounds: np.ndarray

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Distinct n-grams of each example."""
        return np.diff(self.bounds)

    def owners(self) -> np.ndarray:
        """The example each hash belongs to."""
        return np.repeat(np.arange(len(self)), self.sizes)

    def of(self, i: int) -> np.ndarray:
        """Example i's sorted distinct n-gram hashes."""
        return self.hashes[self.bounds[i] : self.bounds[i + 1]]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: every output bit depends on every input bit (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def ngram_sets(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n: int) -> NgramSets:
    """The distinct hashed n-grams of every example `ids[starts[i] : starts[i] + lengths[i]]`, vectorised over
    examples in chunks of bounded memory."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    counts = np.maximum(lengths - n + 1, 0)
    # Chunk boundaries: consecutive examples whose n-grams together stay under the chunk size.
    ends = np.cumsum(counts)
    pieces, chunk_start = [], 0
    while chunk_start < len(starts):
        base = ends[chunk_start - 1] if chunk_start else 0
        chunk_end = max(int(np.searchsorted(ends, base + _POSITIONS_PER_CHUNK, side="right")), chunk_start + 1)
        pieces.append(_chunk_sets(ids, starts, counts, n, chunk_start, chunk_end))
        chunk_start = chunk_end
    hashes = np.concatenate([h for h, _ in pieces]) if pieces else np.zeros(0, np.uint64)
    sizes = np.concatenate([s for _, s in pieces]) if pieces else np.zeros(0, np.int64)
    return NgramSets(hashes, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def _chunk_sets(
    ids: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int, first: int, last: int
) -> tuple[np.ndarray, np.ndarray]:
    member_counts = counts[first:last]
    total = int(member_counts.sum())
    if total == 0:
        return np.zeros(0, np.uint64), np.zeros(last - first, np.int64)
    owner = np.repeat(np.arange(last - first), member_counts)
    offset = np.cumsum(member_counts) - member_counts
    positions = starts[first:last][owner] + (np.arange(total) - offset[owner])
    hashes = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            hashes = hashes * _NGRAM_BASE + np.asarray(ids[positions + k], dtype=np.uint64)
    hashes = _mix(hashes)
    order = np.lexsort((hashes, owner))
    owner, hashes = owner[order], hashes[order]
    distinct = np.ones(total, dtype=bool)
    distinct[1:] = (owner[1:] != owner[:-1]) | (hashes[1:] != hashes[:-1])
    return hashes[distinct], np.bincount(owner[distinct], minlength=last - first).astype(np.int64)


def concat_sets(parts: list[NgramSets]) -> NgramSets:
    """Several lists of examples' sets as one list, in order."""
    if not parts:
        return NgramSets(np.zeros(0, np.uint64), np.zeros(1, np.int64))
    sizes = np.concatenate([p.sizes for p in parts])
    hashes = np.concatenate([p.hashes for p in parts])
    return NgramSets(hashes, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def novelty(sets: NgramSets, real: np.ndarray) -> np.ndarray:
    """Per example, the share of its distinct n-grams absent from `real` (sorted distinct hashes); 1 for an
    example without n-grams (nothing to judge)."""
    if len(real) and len(sets.hashes):
        position = np.minimum(np.searchsorted(real, sets.hashes), len(real) - 1)
        known = real[position] == sets.hashes
    else:
        known = np.zeros(len(sets.hashes), dtype=bool)
    sizes = sets.sizes
    seen = np.bincount(sets.owners()[known], minlength=len(sets)).astype(np.float64)
    return np.where(sizes > 0, 1.0 - seen / np.maximum(sizes, 1), 1.0)


def minhash_signatures(sets: NgramSets, num_perm: int = NUM_PERM, seed: int = 0) -> np.ndarray:
    """(examples, num_perm) MinHash signatures: per hash function, the smallest value over the example's set
    (the largest uint64 for an empty set). Each function is a salted multiply-xorshift of the mixed hashes."""
    rng = np.random.default_rng(seed)
    salts = rng.integers(0, _MAX, size=num_perm, dtype=np.uint64, endpoint=True)
    multipliers = rng.integers(0, _MAX, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    signatures = np.full((len(sets), num_perm), _MAX, dtype=np.uint64)
    filled = np.flatnonzero(sets.sizes > 0)
    if filled.size == 0:
        return signatures
    segment_starts = sets.bounds[:-1][filled]
    with np.errstate(over="ignore"):
        for k in range(num_perm):
            values = (sets.hashes ^ salts[k]) * multipliers[k]
            values ^= values >> np.uint64(32)
            signatures[filled, k] = np.minimum.reduceat(values, segment_starts)
    return signatures


def rows_per_band(threshold: float, num_perm: int = NUM_PERM) -> int:
    """The LSH band height: the largest r (a power of two dividing num_perm) for which a pair at the threshold
    shares at least one band with probability 0.8 or more. Taller bands propose fewer dissimilar pairs."""
    rows = 1
    for r in (2, 4, 8, 16, 32):
        bands = num_perm // r
        if num_perm % r == 0 and 1 - (1 - threshold**r) ** bands >= 0.8:
            rows = r
    return rows


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted distinct hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    shared = np.intersect1d(a, b, assume_unique=True).size
    return shared / (len(a) + len(b) - shared)


def near_duplicates(sets: NgramSets, order: np.ndarray, threshold: float, seed: int = 0) -> np.ndarray:
    """Mask of the examples dropped by the greedy pass: in `order`, an example is dropped when its Jaccard
    similarity with an example kept before it is above `threshold`; only kept examples enter the LSH buckets,
    so a cluster of near-duplicates costs one comparison per member."""
    dropped = np.zeros(len(sets), dtype=bool)
    if len(sets) < 2:
        return dropped
    signatures = minhash_signatures(sets, seed=seed)
    rows = rows_per_band(threshold)
    bands = NUM_PERM // rows
    # One key per (example, band): the band's rows hashed together, salted by the band's index.
    keys = np.zeros((len(sets), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = keys * _NGRAM_BASE + signatures[:, r::rows][:, :bands]
        keys = _mix(keys ^ _mix(np.arange(bands, dtype=np.uint64) + np.uint64(1)))
    key_lists = keys.tolist()
    empty = sets.sizes == 0
    buckets: dict[int, list[int]] = {}
    for i in (int(i) for i in order):
        if empty[i]:
            continue
        candidates: set[int] = set()
        for key in key_lists[i]:
            bucket = buckets.get(key)
            if bucket is not None:
                candidates.update(bucket)
        if candidates:
            others = np.fromiter(sorted(candidates), dtype=np.int64, count=len(candidates))
            estimate = (signatures[others] == signatures[i]).mean(axis=1)
            mine = sets.of(i)
            for j in others[estimate >= threshold - _ESTIMATE_MARGIN]:
                if jaccard(mine, sets.of(int(j))) > threshold:
                    dropped[i] = True
                    break
        if not dropped[i]:
            for key in key_lists[i]:
                buckets.setdefault(key, []).append(i)
    return dropped


@dataclasses.dataclass
class Selection:
    """What the diversity selection says of one synthetic source's examples (disjoint masks)."""

    not_novel: np.ndarray
    """Too little of the example is new against the real training text: counted as `not_novel`."""
    near_duplicate: np.ndarray
    """Overlaps an example kept before it: counted as `near_duplicates`."""


def select_diverse(
    synthetic: list[NgramSets], keys: list[np.ndarray], real: NgramSets, config: DiversityConfig
) -> tuple[list[Selection], dict[str, Any]]:
    """The selection over every synthetic source together (`keys`: each example's 128-bit content hash, which
    orders the greedy pass): first the novelty limit, then the near-duplicate pass over what it kept."""
    started = time.perf_counter()
    everything = concat_sets(synthetic)
    sizes = [len(s) for s in synthetic]
    not_novel = np.zeros(len(everything), dtype=bool)
    real_set = np.unique(real.hashes) if config.min_novelty is not None else None
    scores = novelty(everything, real_set) if real_set is not None else None
    if scores is not None:
        not_novel = scores < config.min_novelty
    near = np.zeros(len(everything), dtype=bool)
    if config.max_overlap is not None:
        all_keys = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
        order = np.lexsort((all_keys[:, 1], all_keys[:, 0]))
        order = order[~not_novel[order]]
        near = near_duplicates(everything, order, config.max_overlap)
    splits = np.cumsum(sizes)[:-1]
    pairs = zip(np.split(not_novel, splits), np.split(near, splits), strict=True) if synthetic else []
    selections = [Selection(a, b) for a, b in pairs]
    meta = {
        "ngram": config.ngram,
        "max_overlap": config.max_overlap,
        "min_novelty": config.min_novelty,
        "synthetic_compared": len(everything),
        "real_ngrams": None if real_set is None else len(real_set),
        "novelty_median": float(np.median(scores)) if scores is not None and len(scores) else None,
        "not_novel": int(not_novel.sum()),
        "near_duplicates": int(near.sum()),
        "kept": int((~(not_novel | near)).sum()),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return selections, meta
