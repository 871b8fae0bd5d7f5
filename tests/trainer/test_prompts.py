"""synthmix.trainer.generation.prompts: fixed prompts drawn by a seeded shuffle, keeping the tokenizer's BOS."""

from __future__ import annotations

import pydoc_data.topics

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from synthmix.trainer.generation.prompts import prompts_from_texts
from synthmix.trainer.generation.sampling import GenerationError

TEXTS = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:40]


def test_prompts_from_texts_is_seeded_and_skips_short_texts(tokenizer):
    texts = ["tiny", *TEXTS[:10], "x y"]
    prompts = prompts_from_texts(tokenizer, texts, n=6, prompt_tokens=8, seed=0)
    assert prompts == prompts_from_texts(tokenizer, texts, n=6, prompt_tokens=8, seed=0)
    assert prompts != prompts_from_texts(tokenizer, texts, n=6, prompt_tokens=8, seed=1)
    assert len(prompts) == 6 and all(len(p) == 8 for p in prompts)
    starts = {tuple(tokenizer(t)["input_ids"][:8]) for t in TEXTS[:10]}
    assert {tuple(p) for p in prompts} <= starts


def test_prompts_keep_the_tokenizers_bos(tokenizer):
    from tokenizers.processors import TemplateProcessing

    bpe = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    pad = tokenizer.pad_token_id
    bpe.post_processor = TemplateProcessing(single="<|pad|> $A", special_tokens=[("<|pad|>", pad)])
    with_bos = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|pad|>", eos_token="<|endoftext|>")
    prompts = prompts_from_texts(with_bos, TEXTS, n=4, prompt_tokens=5, seed=0)
    assert all(len(p) == 6 and p[0] == pad and pad not in p[1:] for p in prompts)


def test_prompts_reuse_texts_when_n_exceeds_them(tokenizer):
    prompts = prompts_from_texts(tokenizer, TEXTS[:3], n=7, prompt_tokens=4, seed=0)
    assert len(prompts) == 7 and len({tuple(p) for p in prompts}) == 3
    with pytest.raises(GenerationError, match="prompt_tokens=4"):
        prompts_from_texts(tokenizer, ["a", "b c"], n=2, prompt_tokens=4, seed=0)
