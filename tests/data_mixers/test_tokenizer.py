"""The run's tokenizer: trained once (streamed) and cached by a key of its training text, its fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

import synthmix.data_mixers.tokenizer as tokenizer_module
from synthmix.data_mixers import MixerError
from synthmix.data_mixers.config import TokenizerConfig
from synthmix.data_mixers.tokenizer import load_tokenizer, token_dtype, tokenizer_fingerprint, train_bpe

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sure: two plus two is four.", "Hello there, how are you?"]


def test_trained_tokenizer_is_cached_and_never_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, cache = TokenizerConfig(vocab_size=300), tmp_path / "cache"
    first = load_tokenizer(config, lambda: iter(TEXTS), "the texts", cache)
    folders = sorted((tmp_path / "cache").iterdir())
    assert [f.name.startswith("tokenizer-") for f in folders] == [True]  # one folder, no temporary left over
    saved = folders[0] / "tokenizer.json"
    written = saved.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached tokenizer was trained again")

    monkeypatch.setattr(tokenizer_module, "train_bpe", fail)
    second = load_tokenizer(config, lambda: fail(), "the texts", cache)  # found by its key: the text is not read
    assert sorted((tmp_path / "cache").iterdir()) == folders
    assert saved.stat().st_mtime_ns == written
    assert second.get_vocab() == first.get_vocab()
    assert second(TEXTS[0])["input_ids"] == first(TEXTS[0])["input_ids"]
    assert tokenizer_fingerprint(second) == tokenizer_fingerprint(first)


def test_the_cache_key_is_the_text_fingerprint_and_the_settings(tmp_path: Path) -> None:
    def folder(fingerprint: str, vocab_size: int = 300) -> set[str]:
        cache = tmp_path / f"cache-{len(list(tmp_path.iterdir()))}"
        load_tokenizer(TokenizerConfig(vocab_size=vocab_size), lambda: iter(TEXTS), fingerprint, cache)
        return {f.name for f in cache.iterdir()}

    assert folder("a") == folder("a")  # the same key in another cache: the same name
    assert folder("a") != folder("b")
    assert folder("a") != folder("a", vocab_size=290)


def test_training_needs_real_text(tmp_path: Path) -> None:
    with pytest.raises(MixerError, match="real sources; they are empty"):
        load_tokenizer(TokenizerConfig(), lambda: iter([]), "nothing", tmp_path)


def test_the_fingerprint_changes_with_the_vocabulary_and_the_template() -> None:
    one, other = train_bpe(TEXTS, 300), train_bpe(TEXTS + ["more words here"], 300)
    assert tokenizer_fingerprint(one) != tokenizer_fingerprint(other)
    before = tokenizer_fingerprint(one)
    one.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(one) != before
    assert token_dtype(one) == "uint16"
