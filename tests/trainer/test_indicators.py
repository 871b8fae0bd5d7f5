"""Collapse indicators against hand-computed values, edge cases and properties."""

import gzip
import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import BLEU

from synthmix.trainer.collapse.indicators import (
    compression_ratio,
    distinct_n,
    js_divergence,
    length_stats,
    next_token_entropy,
    per_example_perplexity,
    perplexity,
    perplexity_quantiles,
    rare_tokens,
    repetition_rate,
    sample_indicators,
    self_bleu,
    tail_mass,
    unigram_entropy,
    vendi_score,
)
from synthmix.trainer.config import INDICATOR_DIRECTION

SAMPLE_KEYS = {
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "unigram_entropy",
    "self_bleu",
    "repetition_rate",
    "mean_length",
    "std_length",
    "tail_mass",
    "js_divergence",
    "compression_ratio",
}

tokens_st = st.lists(st.integers(0, 20), max_size=40)
samples_st = st.lists(st.lists(st.integers(0, 6), max_size=12), max_size=8)


def _sentence_bleus(samples):
    """Reference implementation: sacrebleu's own sentence_score of each sample against all the others."""
    bleu = BLEU(tokenize="none", effective_order=True)
    strings = [" ".join(map(str, s)) for s in samples]
    return [bleu.sentence_score(h, strings[:i] + strings[i + 1 :]).score / 100 for i, h in enumerate(strings)]


# --- distinct_n ---------------------------------------------------------------------------------------------


def test_distinct_n_hand_computed():
    samples = [[1, 2, 1, 2], [1, 2]]
    # unigrams: 6 in all, types {1, 2} -> 2/6
    assert distinct_n(samples, 1) == pytest.approx(1 / 3)
    # bigrams: (1,2) (2,1) (1,2) | (1,2) -> 4 in all, 2 unique; the (2,1) across the boundary is not counted
    assert distinct_n(samples, 2) == pytest.approx(2 / 4)
    # trigrams: (1,2,1) (2,1,2) | none -> 2/2
    assert distinct_n(samples, 3) == 1.0


def test_distinct_n_edges():
    assert distinct_n([], 1) == 0.0
    assert distinct_n([[]], 1) == 0.0
    assert distinct_n([[5]], 2) == 0.0  # a single token has no bigram
    assert distinct_n([[5]], 1) == 1.0
    with pytest.raises(ValueError):
        distinct_n([[1, 2]], 0)


@given(samples_st, st.integers(1, 4))
def test_distinct_n_in_unit_interval(samples, n):
    assert 0.0 <= distinct_n(samples, n) <= 1.0


# --- unigram_entropy ----------------------------------------------------------------------------------------


def test_unigram_entropy_hand_computed():
    # p = (1/2, 1/4, 1/4): 1/2*1 + 1/4*2 + 1/4*2 = 1.5 bits
    assert unigram_entropy([1, 1, 2, 3]) == pytest.approx(1.5)
    assert unigram_entropy([7, 7, 7]) == 0.0
    assert math.copysign(1.0, unigram_entropy([7])) == 1.0  # +0.0, not -0.0, in metrics.jsonl
    assert unigram_entropy([]) == 0.0


@given(st.integers(1, 64), st.integers(1, 5))
def test_unigram_entropy_uniform_is_log2_vocab(vocab, repeats):
    assert unigram_entropy(list(range(vocab)) * repeats) == pytest.approx(math.log2(vocab))


@given(tokens_st)
def test_unigram_entropy_bounded_by_log2_types(tokens):
    bound = math.log2(len(set(tokens))) if tokens else 0.0
    assert 0.0 <= unigram_entropy(tokens) <= bound + 1e-12


# --- self_bleu ----------------------------------------------------------------------------------------------


def test_self_bleu_hand_computed():
    assert self_bleu([[1, 2, 3, 4], [1, 2, 3, 4]]) == 1.0
    assert self_bleu([[1, 2, 3, 4], [5, 6, 7, 8]]) == 0.0  # no n-gram in common
    # [1,2,3,4] vs [1,2,3,5] (and back, same counts): precisions 3/4, 2/3, 1/2, and 0/1 for 4-grams, which
    # exp smoothing turns into 1/(2*1); same length so no brevity penalty:
    # (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = (1/8) ** (1/4) = 2 ** -0.75 ~ 0.5946
    assert self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]]) == pytest.approx(2**-0.75)


def test_self_bleu_edges():
    assert self_bleu([]) == 0.0
    assert self_bleu([[1, 2, 3]]) == 0.0
    assert self_bleu([[], []]) == 0.0
    with pytest.raises(ValueError):
        self_bleu([[1], [2]], max_samples=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), max_size=12), min_size=2, max_size=8))
def test_self_bleu_equals_sacrebleu_sentence_score(samples):
    expected = _sentence_bleus(samples)
    assert self_bleu(samples) == pytest.approx(min(1.0, sum(expected) / len(expected)), abs=1e-12)
    assert 0.0 <= self_bleu(samples) <= 1.0


def test_self_bleu_subsample_scores_hypotheses_against_all_others():
    rng = random.Random(1)
    samples = [[rng.randrange(8) for _ in range(rng.randrange(3, 10))] for _ in range(10)]
    per_sample = _sentence_bleus(samples)  # each against the 9 others
    score = self_bleu(samples, max_samples=3, seed=5)
    # the mean of some 3 of the full per-sample scores: only hypotheses are subsampled, never references
    means = [sum(c) / 3 for c in itertools.combinations(per_sample, 3)]
    assert any(score == pytest.approx(m, abs=1e-12) for m in means)
    assert self_bleu(samples, max_samples=3, seed=5) == score  # seeded: reproducible
    assert self_bleu(samples, max_samples=10) == pytest.approx(sum(per_sample) / 10)


# --- repetition_rate ----------------------------------------------------------------------------------------


def test_repetition_rate_hand_computed():
    # [1,2,1,2,1]: bigrams (1,2)(2,1)(1,2)(2,1), 4 total, 2 unique -> 2/4
    # [3,4,5]: 0/2; [9]: no bigram, so it is left out of the mean
    assert repetition_rate([[1, 2, 1, 2, 1], [3, 4, 5], [9]], n=2) == pytest.approx((0.5 + 0.0) / 2)
    # default n=4: [1]*6 has three 4-grams, all (1,1,1,1) -> (3 - 1) / 3
    assert repetition_rate([[1] * 6]) == pytest.approx(2 / 3)


def test_repetition_rate_edges():
    assert repetition_rate([]) == 0.0
    assert repetition_rate([[1, 2, 3]]) == 0.0  # shorter than n
    with pytest.raises(ValueError):
        repetition_rate([[1]], n=0)


@given(samples_st, st.integers(1, 4))
def test_repetition_rate_in_unit_interval(samples, n):
    assert 0.0 <= repetition_rate(samples, n) < 1.0


# --- length_stats -------------------------------------------------------------------------------------------


def test_length_stats_hand_computed():
    # lengths 2 and 4: mean 3, population std sqrt(((2-3)^2 + (4-3)^2) / 2) = 1
    assert length_stats([[1, 1], [1, 1, 1, 1]]) == pytest.approx((3.0, 1.0))
    # lengths 1, 2, 3, 6: mean 3, squares 4 + 1 + 0 + 9 = 14, std sqrt(14 / 4)
    assert length_stats([[0], [0] * 2, [0] * 3, [0] * 6]) == pytest.approx((3.0, math.sqrt(3.5)))
    assert length_stats([[1, 2, 3]]) == (3.0, 0.0)
    assert length_stats([]) == (0.0, 0.0)


# --- rare_tokens / tail_mass --------------------------------------------------------------------------------

REFERENCE = [5, 5, 5, 5, 5, 5, 3, 3, 9, 7]  # 10 tokens; counts 7:1, 9:1, 3:2, 5:6 (rarest first, ties by id)


@pytest.mark.parametrize(
    ("tail_share", "expected"),
    [
        (0.0, set()),
        (0.05, set()),  # budget 0.5 token: even the rarest type (1 token) would cross it
        (0.1, {7}),  # budget 1: 7 (cum 1); 9 ties with 7 on count, loses on id
        (0.2, {7, 9}),  # budget 2: cum 1, 2
        (0.3, {7, 9}),  # budget 3: 3 would bring cum to 4 > 3, and the crossing type is left out
        (0.4, {7, 9, 3}),  # budget 4: cum 1, 2, 4
        (1.0, {7, 9, 3, 5}),
    ],
)
def test_rare_tokens_hand_computed(tail_share, expected):
    assert rare_tokens(REFERENCE, tail_share) == frozenset(expected)


def test_rare_tokens_edges():
    # 0.29 * 100 is 28.999999999999996 in floats; 29 tokens of 100 must still count as reaching 0.29
    assert rare_tokens([0] * 29 + [1] * 71, 0.29) == frozenset({0})
    assert rare_tokens([], 0.1) == frozenset()
    assert rare_tokens([1, 1, 2, 2], 0.1) == frozenset()  # no frequent type is ever called rare
    with pytest.raises(ValueError):
        rare_tokens(REFERENCE, 1.5)


@given(tokens_st, st.floats(0.0, 1.0))
def test_rare_tail_never_exceeds_its_share(reference, tail_share):
    rare = rare_tokens(reference, tail_share)
    assert tail_mass(reference, rare) <= tail_share + 1e-9
    assert rare <= set(reference)


def test_tail_mass_hand_computed():
    # 7 and 9 are rare, 5 and 5 are not -> 2/4
    assert tail_mass([7, 9, 5, 5], frozenset({7, 9})) == 0.5
    assert tail_mass([5, 5], frozenset({7})) == 0.0
    assert tail_mass([], frozenset({7})) == 0.0


# --- js_divergence ------------------------------------------------------------------------------------------


def test_js_divergence_hand_computed():
    assert js_divergence([0, 0], [1]) == 1.0  # disjoint supports: the maximum, 1 bit
    # P = (1/2, 1/2), Q = (1, 0), M = (3/4, 1/4)
    # KL(P||M) = 1/2 log2(2/3) + 1/2 log2(2) = 1 - 1/2 log2 3; KL(Q||M) = log2(4/3) = 2 - log2 3
    # JS = (3 - 3/2 log2 3) / 2 = 1.5 - 0.75 log2 3 ~ 0.3113
    assert js_divergence([0, 1], [0]) == pytest.approx(1.5 - 0.75 * math.log2(3))
    assert js_divergence([1, 2], [2, 2, 1, 1]) == 0.0  # same distribution, different counts


def test_js_divergence_empty():
    assert js_divergence([], []) == 0.0
    assert js_divergence([], [1, 2]) == 1.0
    assert js_divergence([1], []) == 1.0


@given(tokens_st, tokens_st)
def test_js_divergence_symmetric_and_bounded(p, q):
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p), abs=1e-12)
    assert 0.0 <= js_divergence(p, q) <= 1.0


@given(tokens_st)
def test_js_divergence_zero_for_identical(p):
    assert js_divergence(p, p) == 0.0
    assert js_divergence(p, p + p) == pytest.approx(0.0, abs=1e-12)


# --- compression_ratio --------------------------------------------------------------------------------------


def test_compression_ratio_hand_computed():
    # b"a": 10-byte gzip header + 3-byte fixed-Huffman deflate block + 8-byte trailer = 21 bytes over 1
    assert compression_ratio(["a"]) == 21.0
    raw = b"ab\ncd"  # joined with "\n", UTF-8
    assert compression_ratio(["ab", "cd"]) == len(gzip.compress(raw, compresslevel=9, mtime=0)) / 5
    assert compression_ratio([]) == 0.0
    assert compression_ratio([""]) == 0.0


def test_compression_ratio_lower_for_repetitive_text():
    rng = random.Random(0)
    varied = [" ".join(f"w{rng.randrange(1000)}" for _ in range(50)) for _ in range(40)]
    repeated = [varied[0]] * 40
    assert compression_ratio(repeated) < compression_ratio(varied)
    assert compression_ratio(varied) == compression_ratio(list(varied))  # deterministic (mtime=0)


# --- next_token_entropy / perplexity ------------------------------------------------------------------------


def test_next_token_entropy_hand_computed():
    inf, nan = float("inf"), float("nan")
    uniform_4 = [0.0, 0.0, 0.0, 0.0]  # 2 bits
    uniform_2 = [0.0, 0.0, -inf, -inf]  # two banned tokens: 1 bit, not nan
    masked_out = [nan] * 4  # must not leak into the mean
    logits = torch.tensor([[uniform_4, uniform_2, masked_out]])
    mask = torch.tensor([[True, True, False]])
    # (2 + 1) / 2
    assert next_token_entropy(logits, mask) == pytest.approx(1.5)
    # huge logits stay stable under log_softmax; bf16 input is computed in float32
    big = torch.tensor([[[1000.0, 1000.0, 0.0, 0.0]]])
    one = torch.ones(1, 1, dtype=torch.bool)
    assert next_token_entropy(big, one) == pytest.approx(1.0, abs=1e-6)
    assert next_token_entropy(big.bfloat16(), one) == pytest.approx(1.0, abs=1e-6)


def test_next_token_entropy_edges():
    logits = torch.zeros(2, 3, 8)
    assert next_token_entropy(logits, torch.zeros(2, 3, dtype=torch.bool)) == 0.0
    assert next_token_entropy(logits, torch.ones(2, 3, dtype=torch.long)) == pytest.approx(3.0)  # log2 8
    with pytest.raises(ValueError):
        next_token_entropy(logits, torch.ones(2, 4, dtype=torch.bool))


def test_perplexity_hand_computed():
    assert perplexity(4 * math.log(2), 2) == pytest.approx(4.0)  # exp(2 ln 2)
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


# --- sample_indicators and directions -----------------------------------------------------------------------


def _zipf_tokens(rng, n, vocab=400):
    return rng.choices(range(vocab), weights=[1 / (rank + 1) for rank in range(vocab)], k=n)


def _texts(samples):
    return [" ".join(f"w{t}" for t in s) for s in samples]


def test_sample_indicators_keys_and_real_reference():
    rng = random.Random(0)
    real = [_zipf_tokens(rng, rng.randrange(20, 60)) for _ in range(30)]
    real_tokens = [t for s in real for t in s]
    values = sample_indicators(real, _texts(real), rare_tokens(real_tokens), real_tokens)
    assert set(values) == SAMPLE_KEYS
    assert all(isinstance(v, float) for v in values.values())
    assert values["js_divergence"] == 0.0  # the real text against itself
    assert 0.0 < values["tail_mass"] <= 0.1


def test_indicator_direction_covers_every_indicator():
    held_out = {"real_ppl", "real_ppl_p50", "real_ppl_p90", "real_ppl_p99", "next_token_entropy"}
    model_scored = {"sample_base_ppl_mean", "sample_base_ppl_p90", "vendi_score"}
    assert set(INDICATOR_DIRECTION) == SAMPLE_KEYS | held_out | model_scored
    assert set(INDICATOR_DIRECTION.values()) <= {-1, 0, 1}
    assert INDICATOR_DIRECTION["real_ppl"] == -1
    assert INDICATOR_DIRECTION["distinct_2"] == 1
    assert INDICATOR_DIRECTION["self_bleu"] == -1
    assert INDICATOR_DIRECTION["compression_ratio"] == 1
    assert INDICATOR_DIRECTION["mean_length"] == 0


def test_degenerate_samples_score_as_collapsed_on_every_directed_indicator():
    rng = random.Random(0)
    reference = _zipf_tokens(rng, 5000)
    varied = [_zipf_tokens(rng, rng.randrange(15, 45)) for _ in range(40)]
    degenerate = [[0, 1, 2, 3, 4] * 6 for _ in range(40)]  # one looping sentence of frequent tokens
    rare = rare_tokens(reference)
    healthy = sample_indicators(varied, _texts(varied), rare, reference)
    collapsed = sample_indicators(degenerate, _texts(degenerate), rare, reference)

    assert collapsed["distinct_2"] < healthy["distinct_2"]
    assert collapsed["self_bleu"] > healthy["self_bleu"]
    assert collapsed["repetition_rate"] > healthy["repetition_rate"]
    for name, direction in INDICATOR_DIRECTION.items():
        if name in SAMPLE_KEYS and direction:
            assert direction * (healthy[name] - collapsed[name]) > 0, name


# ---------------------------------------------------------------------------------------------- tail indicators
def test_per_example_perplexity_is_exp_of_each_mean_nll_and_skips_empty_examples():
    got = per_example_perplexity([0.0, 2 * math.log(4), 5.0], [3, 2, 0])
    assert got == [1.0, pytest.approx(4.0)]
    with pytest.raises(ValueError, match="2 nll sums but 1 token counts"):
        per_example_perplexity([1.0, 2.0], [1])


def test_perplexity_quantiles_interpolate_between_order_statistics():
    # Per-example perplexities 1, 2, ..., 10 (nll = log k over one token each).
    nll = [math.log(k) for k in range(1, 11)]
    q = perplexity_quantiles(nll, [1] * 10, (50, 90, 99))
    # numpy's linear rule: rank (n-1)·p = 4.5 -> 5.5; 8.1 -> 9.1; 8.91 -> 9.91.
    assert q == {50: pytest.approx(5.5), 90: pytest.approx(9.1), 99: pytest.approx(9.91)}
    assert perplexity_quantiles([math.log(7)], [1], (50, 99)) == {50: pytest.approx(7.0), 99: pytest.approx(7.0)}
    assert all(math.isnan(v) for v in perplexity_quantiles([1.0], [0], (50,)).values())


def test_a_worse_tail_moves_p99_and_not_p50():
    typical = [math.log(10)] * 99
    assert perplexity_quantiles(typical + [math.log(10)], [1] * 100)[50] == pytest.approx(10)
    worse = perplexity_quantiles(typical + [math.log(1000)], [1] * 100)
    assert worse[50] == pytest.approx(10) and worse[90] == pytest.approx(10)
    assert worse[99] == pytest.approx(10 + 0.01 * 990)  # rank 98.01: 1% of the way to the last value


def test_vendi_score_counts_distinct_directions():
    e = torch.eye(3)
    assert vendi_score(e) == pytest.approx(3.0)  # orthogonal: three distinct items
    assert vendi_score(torch.ones(4, 5)) == pytest.approx(1.0)  # identical: one
    assert vendi_score(torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 2.0]])) == pytest.approx(
        math.exp(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    )  # two copies of one direction (length does not count) and one other: eigenvalues 2/3 and 1/3
    # Two unit vectors at cosine c: K/n has eigenvalues (1 ± c)/2.
    c = 0.6
    pair = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]])
    lam = [(1 + c) / 2, (1 - c) / 2]
    assert vendi_score(pair) == pytest.approx(math.exp(-sum(x * math.log(x) for x in lam)))


def test_vendi_score_subtracts_the_center_first():
    common = torch.tensor([[5.0, 1.0, 0.0], [5.0, 0.0, 1.0]])  # one large shared direction: cosine 25/26
    lam = [(1 + 25 / 26) / 2, (1 - 25 / 26) / 2]
    assert vendi_score(common) == pytest.approx(math.exp(-sum(x * math.log(x) for x in lam)))
    assert vendi_score(common, center=torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(2.0)  # orthogonal once centered
    assert vendi_score(common, center=common[0]) == pytest.approx(1.0)  # the first is the center: no direction left


def test_vendi_score_leaves_out_zero_vectors_and_rejects_bad_shapes():
    assert vendi_score(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) == pytest.approx(2.0)
    assert vendi_score(torch.zeros(2, 3)) == 0.0
    assert vendi_score(torch.zeros(0, 3)) == 0.0
    with pytest.raises(ValueError, match=r"expected embeddings \[n, d\]"):
        vendi_score(torch.ones(3))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 1000))
def test_vendi_score_lies_between_one_and_the_number_of_items(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    score = vendi_score(x)
    assert 1.0 - 1e-9 <= score <= min(n, d) + 1e-9
