"""build_corpora on real files: duplicates, held-out text, contamination, filters, eos, empty sources.

The byte-level tokenizer makes token counts hand-computable: a text of n ASCII characters is n + 1 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers import Corpora, Corpus, DataConfig, MixerError, SourceConfig, build_corpora
from synthmix.data_mixers.config import FilterConfig, HeldOutConfig, TokenizerConfig


def jsonl(folder: Path, name: str, texts: list[str]) -> str:
    path = folder / name
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def build(tokenizer: PreTrainedTokenizerBase, sources: list[SourceConfig], **data: Any) -> Corpora:
    data.setdefault("held_out", HeldOutConfig(fraction=0.0))  # nothing held out unless a test asks for it
    cache = Path(sources[0].path or ".").parent / "cache"
    return build_corpora(
        DataConfig(sources=sources, cache_dir=str(cache), **data), TokenizerConfig(), tokenizer=tokenizer
    )


def texts(corpus: Corpus, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    return [tokenizer.decode(corpus.example_ids(i).tolist(), skip_special_tokens=True) for i in range(len(corpus))]


def held_texts(corpora: Corpora) -> list[str]:
    return [corpora.tokenizer.decode(e.ids.tolist(), skip_special_tokens=True) for e in corpora.held_out]


def by_name(corpora: Corpora) -> dict[str, Any]:
    return {c.name: c for c in corpora.train}


def test_exact_duplicates_are_removed_across_sources_and_real_wins(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    sources = [  # synthetic listed first: still, the copy in the real source is the one kept
        SourceConfig(name="gen", kind="synthetic", path=jsonl(tmp_path, "s.jsonl", ["shared", "fresh", "fresh"])),
        SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", ["one", "shared", "one", "two"])),
    ]
    corpora = build(byte_tokenizer, sources)
    train = by_name(corpora)
    assert texts(train["docs"], byte_tokenizer) == ["one", "shared", "two"]
    assert train["docs"].source_index.tolist() == [0, 1, 3]
    assert texts(train["gen"], byte_tokenizer) == ["fresh"]
    assert train["gen"].source_index.tolist() == [1]
    reports = {r.name: r for r in corpora.reports}
    assert (reports["docs"].duplicates, reports["gen"].duplicates) == (1, 2)
    kept = build(byte_tokenizer, sources, dedup=False)
    assert len(by_name(kept)["gen"]) == 3 and len(by_name(kept)["docs"]) == 4


def test_held_out_selection_is_stable_and_never_trained_on(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    lines = [f"real example {i}" for i in range(400)]
    synthetic = [f"synthetic {i}" for i in range(100)] + lines[:50]  # copies of real text, some held out

    def held_and_trained(real_lines: list[str]) -> tuple[list[str], set[str]]:
        sources = [
            SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", real_lines)),
            SourceConfig(name="gen", kind="synthetic", path=jsonl(tmp_path, "s.jsonl", synthetic)),
        ]
        corpora = build(byte_tokenizer, sources, held_out=HeldOutConfig(fraction=0.2))
        trained = {t for c in corpora.train for t in texts(c, byte_tokenizer)}
        return held_texts(corpora), trained

    held, trained = held_and_trained(lines)
    assert len(held) == 80 and set(held) <= set(lines)  # 20% of 400
    assert not set(held) & trained  # not in the real stream, nor as a synthetic copy
    assert set(lines) - set(held) <= trained
    held_again, _ = held_and_trained(lines[::-1])
    assert set(held_again) == set(held)  # membership is a function of the texts, not of their order


def test_contamination_with_an_explicit_held_out_source_is_dropped_or_an_error(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    held = [SourceConfig(name="eval", kind="real", path=jsonl(tmp_path, "eval.jsonl", ["leaked", "private"]))]
    sources = [
        SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", ["a", "leaked", "b"])),
        SourceConfig(name="gen", kind="synthetic", path=jsonl(tmp_path, "s.jsonl", ["c", "d", "private"])),
    ]
    corpora = build(byte_tokenizer, sources, held_out=HeldOutConfig(fraction=0.0, sources=held))
    assert {c.name: texts(c, byte_tokenizer) for c in corpora.train} == {"docs": ["a", "b"], "gen": ["c", "d"]}
    assert [r.contaminated for r in corpora.reports] == [1, 1]
    assert sorted(held_texts(corpora)) == ["leaked", "private"]
    with pytest.raises(MixerError) as caught:
        build(byte_tokenizer, sources, held_out=HeldOutConfig(fraction=0.0, sources=held), contamination="error")
    assert "source 'docs': example 1 equals a held-out example" in str(caught.value)
    assert "contamination: drop" in str(caught.value)


def test_quality_filters_apply_to_synthetic_text_only(tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase) -> None:
    # Tokens incl. the eos: "ab" 3, "abcdefg" 8, "abababab" 9 (bigram repetition 5/8 = 0.625), "x" * 20 21.
    samples = ["ab", "abcdefg", "abababab", "x" * 20]
    sources = [
        SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", samples)),
        SourceConfig(name="gen", kind="synthetic", path=jsonl(tmp_path, "s.jsonl", samples)),
    ]

    def kept(filters: FilterConfig) -> list[str]:
        corpora = build(byte_tokenizer, sources, filters=filters, dedup=False)
        assert texts(by_name(corpora)["docs"], byte_tokenizer) == samples  # real text is never filtered
        return texts(by_name(corpora)["gen"], byte_tokenizer)

    assert kept(FilterConfig(min_tokens=8)) == ["abcdefg", "abababab", "x" * 20]
    assert kept(FilterConfig(max_tokens=9)) == ["ab", "abcdefg", "abababab"]
    assert kept(FilterConfig(ngram=2, max_repeated_ngram_rate=0.625)) == ["ab", "abcdefg", "abababab"]
    assert kept(FilterConfig(ngram=2, max_repeated_ngram_rate=0.6)) == ["ab", "abcdefg"]


def test_a_source_emptied_by_cleaning_is_an_error_naming_it_and_why(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    sources = [
        SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", ["a real text", "another one"])),
        SourceConfig(name="gen", kind="synthetic", path=jsonl(tmp_path, "s.jsonl", ["ab", "cd", "a real text"])),
    ]
    with pytest.raises(MixerError) as caught:
        build(byte_tokenizer, sources, filters=FilterConfig(min_tokens=5))
    assert str(caught.value) == "source 'gen': no examples left after cleaning (1 duplicates, 2 filtered)"


def test_eos_is_appended_and_long_examples_are_cut(tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase) -> None:
    sources = [SourceConfig(name="docs", kind="real", path=jsonl(tmp_path, "r.jsonl", ["abc", "abcdefghij"]))]
    corpus = build(byte_tokenizer, sources).train[0]
    eos = byte_tokenizer.eos_token_id
    assert corpus.lengths.tolist() == [4, 11]
    assert [corpus.example_ids(i)[-1] for i in range(2)] == [eos, eos]
    assert build(byte_tokenizer, sources, add_eos=False).train[0].lengths.tolist() == [3, 10]
    capped = build(byte_tokenizer, sources, max_tokens_per_example=5).train[0]
    assert capped.lengths.tolist() == [4, 5]
    assert byte_tokenizer.decode(capped.example_ids(1).tolist()) == "abcde"


def test_chat_sources_carry_an_assistant_only_loss_mask(
    tmp_path: Path, byte_tokenizer: PreTrainedTokenizerBase
) -> None:
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n", encoding="utf-8")
    sources = [SourceConfig(name="chat", kind="real", path=str(path), messages_field="messages")]
    corpus = build(byte_tokenizer, sources, assistant_only_loss=True).train[0]
    mask = corpus.example_mask(0)
    assert mask is not None and len(mask) == corpus.n_tokens
    assert byte_tokenizer.decode(corpus.example_ids(0)[mask].tolist()) == "Hello.<|im_end|>\n"
    assert build(byte_tokenizer, sources).train[0].loss_mask is None  # default: train on every token
    assert np.array_equal(build(byte_tokenizer, sources).train[0].example_ids(0), corpus.example_ids(0))
