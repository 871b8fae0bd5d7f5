"""Tokenization in batches: eos on plain text, the loss masks of chats and prompt-completion pairs (plain and
conversational), and the content hashes that identify examples."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers import MixerError
from synthmix.data_mixers.encoding import EncodeSettings, encode_batch, encode_chat
from synthmix.data_mixers.sources import PromptCompletion
from synthmix.data_mixers.tokenizer import train_bpe

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sure: two plus two is four.", "Hello there, how are you?"]
ALL = EncodeSettings(add_eos=True, assistant_only_loss=True, completion_only_loss=True)


def test_eos_is_appended_once(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    eos = byte_tokenizer.eos_token_id

    def encode(texts: list[str], add_eos: bool) -> list[list[int]]:
        settings = EncodeSettings(add_eos=add_eos, assistant_only_loss=False, completion_only_loss=False)
        return [ids.tolist() for ids in encode_batch(byte_tokenizer, texts, "text", settings).ids]

    (with_eos,) = encode(["hello"], add_eos=True)
    assert with_eos == byte_tokenizer("hello")["input_ids"] + [eos] and len(with_eos) == 6
    assert encode(["hello"], add_eos=False)[0] == with_eos[:-1]
    assert encode(["hello<|endoftext|>"], add_eos=True)[0] == with_eos  # no second eos


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


@pytest.fixture(scope="module")
def chat_tokenizer() -> PreTrainedTokenizerBase:
    return train_bpe(TEXTS * 20 + ["assistant user system"] * 20, vocab_size=320)


def test_a_prompt_completion_pair_trains_on_the_completion_and_its_eos(chat_tokenizer) -> None:
    pair = PromptCompletion("Two plus two is", " four.")
    encoded = encode_batch(chat_tokenizer, [pair], "prompt_completion", ALL)
    (ids,), (mask,) = encoded.ids, encoded.masks
    assert ids.tolist() == chat_tokenizer("Two plus two is four.")["input_ids"] + [chat_tokenizer.eos_token_id]
    assert masked_runs(ids, mask, chat_tokenizer) == [" four.<|endoftext|>"]
    every = EncodeSettings(add_eos=True, assistant_only_loss=False, completion_only_loss=False)
    assert encode_batch(chat_tokenizer, [pair], "prompt_completion", every).masks is None


def test_a_conversational_pair_trains_on_the_rendered_completion(chat_tokenizer) -> None:
    pair = PromptCompletion([{"role": "user", "content": "Two plus two?"}], [{"role": "assistant", "content": "Four."}])
    encoded = encode_batch(chat_tokenizer, [pair], "prompt_completion", ALL)
    (ids,), (mask,) = encoded.ids, encoded.masks
    assert masked_runs(ids, mask, chat_tokenizer) == ["Four.<|im_end|>\n"]
    assert chat_tokenizer.decode(ids[~mask].tolist()).endswith("<|im_start|>assistant\n")


def test_a_batch_gives_each_example_its_content_hash(chat_tokenizer) -> None:
    encoded = encode_batch(chat_tokenizer, ["a", "b", "a"], "text", ALL)
    assert encoded.keys.shape == (3, 2) and encoded.keys.dtype == np.uint64
    assert (encoded.keys[0] == encoded.keys[2]).all() and not (encoded.keys[0] == encoded.keys[1]).all()
