"""Shared fixtures of the data_mixers tests: data only, no behaviour under test lives here."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from synthmix.data_mixers.tokenizer import train_bpe


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with no merges (256 bytes + 4 specials): one token per UTF-8 byte, plus the eos.

    Token counts can then be worked out by hand: "abc" is 3 tokens, 4 with the eos.
    """
    tokenizer = train_bpe(["abc"], vocab_size=260)
    assert len(tokenizer) == 260
    return tokenizer
