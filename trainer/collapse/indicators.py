"""Model-collapse indicators: pure functions of token ids, texts or logits.

No model and no I/O here: the `collapse` hook gathers samples, texts and logits and calls these. Samples are
lists of plain Python token ids (call `.tolist()` on tensors first); a sample's n-grams never cross into the
next sample. Every function returns a plain float so the result goes straight into metrics.jsonl.
"""

from __future__ import annotations

import gzip
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams

_BLEU_ORDER = 4


def _ngrams(tokens: Sequence[int], n: int) -> Iterator[tuple[int, ...]]:
    return zip(*(tokens[k:] for k in range(n)), strict=False)  # the shifted copies end early on purpose


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Unique n-grams / all n-grams, pooled over samples (n-grams stay within a sample); 0.0 if none."""
    _check_n(n)
    seen: set[tuple[int, ...]] = set()
    total = 0
    for sample in samples:
        grams = list(_ngrams(sample, n))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def unigram_entropy(tokens: Sequence[int]) -> float:
    """Shannon entropy in bits of the token distribution; 0.0 for no tokens."""
    total = len(tokens)
    # sum p * log2(1/p) rather than -sum p * log2(p), so one type gives +0.0, not -0.0.
    return sum(c / total * math.log2(total / c) for c in Counter(tokens).values()) if total else 0.0


def self_bleu(samples: Sequence[Sequence[int]], max_samples: int = 64, seed: int = 0) -> float:
    """Mean sentence BLEU (0..1) of each sample against all the others; 0.0 for fewer than 2 samples.

    With more than `max_samples` samples, only a seeded random subset of `max_samples` hypotheses is scored,
    each still against all other samples as references, so the cost is bounded while every sample can match.
    BLEU is sacrebleu's (tokenize="none", effective_order, exp smoothing) on ids joined with spaces; it is
    equal to `BLEU.sentence_score(hyp, others)`, but reference n-grams are counted once for all hypotheses
    instead of once per hypothesis (64 x 300 references took ~7 s that way).
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if len(samples) < 2:
        return 0.0
    counts, lengths = [], []
    for sample in samples:
        grams, length = extract_all_word_ngrams(" ".join(map(str, sample)), 1, _BLEU_ORDER)
        counts.append(grams)
        lengths.append(length)
    hypotheses = list(range(len(samples)))
    if len(samples) > max_samples:
        hypotheses = sorted(random.Random(seed).sample(hypotheses, max_samples))

    # Per n-gram: highest count, which sample has it, and the second-highest count. The clipping count
    # against "all samples but i" is then the highest, or the second-highest when sample i holds the highest.
    best: dict[tuple[str, ...], list[int]] = {}
    for i, grams in enumerate(counts):
        for gram, c in grams.items():
            entry = best.get(gram)
            if entry is None:
                best[gram] = [c, i, 0]
            elif c > entry[0]:
                entry[2], entry[0], entry[1] = entry[0], c, i
            elif c > entry[2]:
                entry[2] = c

    scores = []
    for i in hypotheses:
        correct = [0] * _BLEU_ORDER
        total = [0] * _BLEU_ORDER
        for gram, c in counts[i].items():
            top, holder, second = best[gram]
            total[len(gram) - 1] += c
            correct[len(gram) - 1] += min(c, second if holder == i else top)
        # sacrebleu's reference length: the closest other length, the shorter one on a tie.
        ref_len = min((abs(lengths[i] - ln), ln) for j, ln in enumerate(lengths) if j != i)[1]
        bleu = BLEU.compute_bleu(
            correct,
            total,
            lengths[i],
            ref_len,
            smooth_method="exp",
            effective_order=True,
            max_ngram_order=_BLEU_ORDER,
        )
        scores.append(min(1.0, bleu.score / 100.0))  # 100 * exp(0) / 100 can round to 1.0000000000000002
    return sum(scores) / len(scores)


def repetition_rate(samples: Sequence[Sequence[int]], n: int = 4) -> float:
    """Mean over samples (with >= 1 n-gram) of (n-grams - unique n-grams) / n-grams within the sample."""
    _check_n(n)
    rates = []
    for sample in samples:
        grams = list(_ngrams(sample, n))
        if grams:
            rates.append((len(grams) - len(set(grams))) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def length_stats(samples: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Mean and population standard deviation of sample lengths in tokens; (0.0, 0.0) for no samples."""
    if not samples:
        return 0.0, 0.0
    lengths = [len(s) for s in samples]
    mean = sum(lengths) / len(lengths)
    return mean, math.sqrt(sum((ln - mean) ** 2 for ln in lengths) / len(lengths))


def rare_tokens(reference_tokens: Sequence[int], tail_share: float = 0.1) -> frozenset[int]:
    """The real data's rare tail: the rarest types whose counts together are at most `tail_share` of tokens.

    Types are taken rarest first (ties by smaller id); the type that would push the cumulative count past
    `tail_share * total` is NOT included, so the tail never holds more than `tail_share` of the real mass and
    a frequent type is never called rare (the set is empty when even the rarest type is too big).
    """
    if not 0.0 <= tail_share <= 1.0:
        raise ValueError(f"tail_share must be in [0, 1], got {tail_share}")
    counts = Counter(reference_tokens)
    budget = tail_share * len(reference_tokens) + 1e-9  # tolerance: 0.29 * 100 is 28.999999999999996
    rare, cumulative = [], 0
    for token, c in sorted(counts.items(), key=lambda item: (item[1], item[0])):
        cumulative += c
        if cumulative > budget:
            break
        rare.append(token)
    return frozenset(rare)


def tail_mass(tokens: Sequence[int], rare: frozenset[int]) -> float:
    """Share of `tokens` that are in the `rare` set; 0.0 for no tokens."""
    return sum(1 for t in tokens if t in rare) / len(tokens) if tokens else 0.0


def js_divergence(p_tokens: Sequence[int], q_tokens: Sequence[int]) -> float:
    """Jensen-Shannon divergence in bits (in [0, 1]) between the unigram distributions of two token lists.

    Both empty gives 0.0; exactly one empty gives 1.0 (nothing in common, e.g. a model that emits nothing).
    """
    if not p_tokens or not q_tokens:
        return 0.0 if not p_tokens and not q_tokens else 1.0
    p_counts, q_counts = Counter(p_tokens), Counter(q_tokens)
    p_total, q_total = len(p_tokens), len(q_tokens)
    kl_pm = kl_qm = 0.0
    for token in sorted(p_counts.keys() | q_counts.keys()):
        p, q = p_counts[token] / p_total, q_counts[token] / q_total
        m = (p + q) / 2
        if p:
            kl_pm += p * math.log2(p / m)
        if q:
            kl_qm += q * math.log2(q / m)
    return min(1.0, max(0.0, (kl_pm + kl_qm) / 2))


def compression_ratio(texts: Sequence[str]) -> float:
    """gzip size / raw size of the texts joined with newlines (UTF-8, level 9, mtime 0); 0.0 if empty.

    Includes gzip's ~20-byte framing, so only compare values computed on similar amounts of text.
    """
    raw = "\n".join(texts).encode("utf-8")
    return len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw) if raw else 0.0


def next_token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean entropy in bits of softmax(logits) where mask is true (logits [B, T, V], mask [B, T]).

    Computed in float32 via log_softmax; 0.0 when no position is selected.
    """
    if logits.dim() != 3 or mask.shape != logits.shape[:2]:
        shapes = f"{tuple(logits.shape)} and {tuple(mask.shape)}"
        raise ValueError(f"expected logits [B, T, V] and mask [B, T], got {shapes}")
    selected = logits.detach()[mask.bool()].float()  # [K, V]: only the positions we average over
    if selected.shape[0] == 0:
        return 0.0
    log_p = torch.log_softmax(selected, dim=-1)
    p = log_p.exp()
    # -inf logits (banned tokens) give 0 * -inf = nan; their contribution is 0.
    p_log_p = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    return float(-p_log_p.sum(dim=-1).mean() / math.log(2))


def relative_change(value: float, anchor: float) -> float:
    """(value - anchor) / |anchor|, the absolute change from an anchor of 0; an infinite or NaN value stays so
    (an overflowing perplexity is an infinite rise). Alert rules and the sweep's verdict both measure with it."""
    if not math.isfinite(value):
        return value
    return (value - anchor) / abs(anchor) if anchor != 0 else value - anchor


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(nll_sum / n_tokens), with nll_sum in nats; inf when that overflows."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be > 0, got {n_tokens}")
    try:
        return math.exp(nll_sum / n_tokens)
    except OverflowError:
        return math.inf


def per_example_perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> list[float]:
    """exp(nll_i / n_i) for each example with at least one scored token (nats in, in order)."""
    if len(nll_sums) != len(token_counts):
        raise ValueError(f"{len(nll_sums)} nll sums but {len(token_counts)} token counts")
    return [perplexity(nll, n) for nll, n in zip(nll_sums, token_counts, strict=True) if n > 0]


def perplexity_quantiles(
    nll_sums: Sequence[float], token_counts: Sequence[int], percentiles: Sequence[float] = (50, 90, 99)
) -> dict[float, float]:
    """Percentiles of the per-example perplexities exp(nll_i / n_i) (nats), {percentile: value}.

    Linear interpolation between order statistics (numpy's default), so p99 of 10 examples lies between the
    two largest. Examples with no scored token are left out; empty input gives NaN.
    """
    per_example = per_example_perplexity(nll_sums, token_counts)
    if not per_example:
        return {p: math.nan for p in percentiles}
    values = np.percentile(np.array(per_example, dtype=np.float64), list(percentiles))
    return {p: float(v) for p, v in zip(percentiles, values, strict=True)}


def vendi_score(embeddings: torch.Tensor, center: torch.Tensor | None = None) -> float:
    """The Vendi score (Friedman & Dieng 2023) of n embeddings [n, d] under the cosine-similarity kernel.

    exp of the Shannon entropy (nats) of the eigenvalues of K / n, K[i, j] = cos(x_i, x_j): the effective number
    of distinct items, 1 for n identical vectors and n for n orthogonal ones. `center` [d] is subtracted first:
    a language model's hidden states share one large common direction (all cosines near 1), and removing a
    fixed center (the mean embedding of the real text) leaves the directions in which texts differ. Vectors
    that are zero (after centering) are left out, having no direction; 0.0 when none is left.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"expected embeddings [n, d], got shape {tuple(embeddings.shape)}")
    x = embeddings.detach().double()
    if center is not None:
        x = x - center.detach().double()
    norms = x.norm(dim=1)
    x = x[norms > 0] / norms[norms > 0, None]
    if x.shape[0] == 0:
        return 0.0
    eigenvalues = torch.linalg.eigvalsh(x @ x.T / x.shape[0]).clamp(min=0)
    eigenvalues = eigenvalues[eigenvalues > 0]
    return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))


def sample_indicators(
    samples: Sequence[Sequence[int]],
    texts: Sequence[str],
    rare: frozenset[int],
    reference_tokens: Sequence[int],
    self_bleu_samples: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """All sample-side indicators; applied to held-out real text itself it gives the reference values.
    `self_bleu_samples` and `seed` choose the hypotheses self_bleu scores (see `self_bleu`)."""
    tokens = [t for sample in samples for t in sample]
    mean_length, std_length = length_stats(samples)
    return {
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "distinct_3": distinct_n(samples, 3),
        "unigram_entropy": unigram_entropy(tokens),
        "self_bleu": self_bleu(samples, self_bleu_samples, seed),
        "repetition_rate": repetition_rate(samples),
        "mean_length": mean_length,
        "std_length": std_length,
        "tail_mass": tail_mass(tokens, rare),
        "js_divergence": js_divergence(tokens, reference_tokens),
        "compression_ratio": compression_ratio(texts),
    }
