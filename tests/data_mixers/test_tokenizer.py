"""The run's tokenizer: trained once and cached by content, eos on plain text, assistant-only chat masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

import data_mixers.tokenizer as tokenizer_module
from data_mixers import MixerError
from data_mixers.config import TokenizerConfig
from data_mixers.tokenizer import encode_chat, encode_texts, load_tokenizer, train_bpe

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sure: two plus two is four.", "Hello there, how are you?"]


def test_trained_tokenizer_is_cached_and_never_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TokenizerConfig(vocab_size=300, cache_dir=str(tmp_path / "cache"))
    first = load_tokenizer(config, TEXTS)
    folders = sorted((tmp_path / "cache").iterdir())
    assert [f.name.startswith("tokenizer-") for f in folders] == [True]  # one folder, no temporary left over
    saved = folders[0] / "tokenizer.json"
    written = saved.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached tokenizer was trained again")

    monkeypatch.setattr(tokenizer_module, "train_bpe", fail)
    second = load_tokenizer(config, TEXTS)
    assert sorted((tmp_path / "cache").iterdir()) == folders
    assert saved.stat().st_mtime_ns == written
    assert second.get_vocab() == first.get_vocab()
    assert second(TEXTS[0])["input_ids"] == first(TEXTS[0])["input_ids"]


def test_cache_folder_is_a_fingerprint_of_the_text_and_settings(tmp_path: Path) -> None:
    def folder(texts: list[str], vocab_size: int = 300) -> set[str]:
        cache = tmp_path / f"cache-{len(list(tmp_path.iterdir()))}"
        load_tokenizer(TokenizerConfig(vocab_size=vocab_size, cache_dir=str(cache)), texts)
        return {f.name for f in cache.iterdir()}

    assert folder(TEXTS) == folder(list(TEXTS))  # same text, in another cache: the same name
    assert folder(TEXTS) != folder(TEXTS + ["one more text"])
    assert folder(TEXTS) != folder(TEXTS, vocab_size=290)


def test_training_needs_real_text(tmp_path: Path) -> None:
    with pytest.raises(MixerError, match="real sources; they are empty"):
        load_tokenizer(TokenizerConfig(cache_dir=str(tmp_path)), [])


def test_eos_is_appended_once(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    eos = byte_tokenizer.eos_token_id
    (with_eos,) = encode_texts(byte_tokenizer, ["hello"], add_eos=True)
    assert with_eos.tolist() == byte_tokenizer("hello")["input_ids"] + [eos] and len(with_eos) == 6
    assert encode_texts(byte_tokenizer, ["hello"], add_eos=False)[0].tolist() == with_eos[:-1].tolist()
    (already,) = encode_texts(byte_tokenizer, ["hello<|endoftext|>"], add_eos=True)
    assert already.tolist() == with_eos.tolist()  # a text that ends with eos does not get a second one


def masked_runs(ids: np.ndarray, mask: np.ndarray, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Each maximal run of masked tokens, decoded."""
    runs, current = [], []
    for token, keep in zip(ids.tolist(), mask.tolist()):
        if keep:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_assistant_only_mask_covers_exactly_the_replies() -> None:
    tokenizer = train_bpe(TEXTS * 20 + ["assistant user system"] * 20, vocab_size=320)  # merges across words
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there, how are you?"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "two plus two?"},
        {"role": "assistant", "content": " Sure: two plus two is four."},
    ]
    ids, mask = encode_chat(tokenizer, chat)
    assert ids.tolist() == tokenizer(tokenizer.apply_chat_template(chat, tokenize=False))["input_ids"]
    # The reply, its end-of-turn marker and the template's newline: what the model must learn to produce.
    assert masked_runs(ids, mask, tokenizer) == [
        "Hello there.<|im_end|>\n",
        " Sure: two plus two is four.<|im_end|>\n",
    ]
    prompt = tokenizer.decode(ids[~mask].tolist())
    assert prompt.endswith("<|im_start|>assistant\n") and "Be brief." in prompt and "Hello there." not in prompt


def test_chat_needs_a_chat_template() -> None:
    plain = train_bpe(["abc"], vocab_size=260)
    plain.chat_template = None
    with pytest.raises(MixerError, match="chat template"):
        encode_chat(plain, [{"role": "user", "content": "hi"}])
