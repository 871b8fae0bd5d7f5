"""synthmix.trainer.generation.corpus: a corpus of samples with provenance, written whole or not at all."""

from __future__ import annotations

import json
import pydoc_data.topics

import pytest

from synthmix.trainer.config import SamplingConfig
from synthmix.trainer.generation.corpus import generate_corpus
from synthmix.trainer.reporting.cards import data_card_path

TEXTS = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:40]
SAMPLE = SamplingConfig(max_new_tokens=12, batch_size=5, seed=1)


@pytest.fixture(scope="module")
def model(tiny_tokenizer, tiny_model):
    return tiny_model(tiny_tokenizer)


def test_generate_corpus_writes_provenance(model, tokenizer, tmp_path):
    out = tmp_path / "corpus" / "synthetic.jsonl"
    config = SamplingConfig(max_new_tokens=10, batch_size=4, seed=5)
    written = generate_corpus(model, tokenizer, TEXTS, 9, 6, config, "tiny-llama", "real.jsonl", out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == len(lines) == 9
    for line in lines:
        assert set(line) == {"text", "generator", "prompt_source", "sampling"}
        assert line["generator"] == "tiny-llama"
        assert line["prompt_source"]["file"] == "real.jsonl"
        assert line["sampling"] == vars(config)
        prompt = tokenizer.decode(tokenizer(TEXTS[line["prompt_source"]["index"]])["input_ids"][:6])
        assert line["text"].startswith(prompt)
    assert sorted(out.parent.iterdir()) == sorted([out, data_card_path(out)])  # no temporary file is left
    again = tmp_path / "again.jsonl"
    generate_corpus(model, tokenizer, TEXTS, 9, 6, config, "tiny-llama", "real.jsonl", again)
    assert again.read_bytes() == out.read_bytes()


def test_generate_corpus_leaves_no_partial_file(model, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "synthetic.jsonl"
    out.write_text("previous corpus\n", encoding="utf-8")
    calls = []

    def failing_decode(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return "text"

    monkeypatch.setattr(tokenizer, "decode", failing_decode)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(model, tokenizer, TEXTS, 8, 6, SAMPLE, "m", "real.jsonl", out)
    assert out.read_text(encoding="utf-8") == "previous corpus\n"
    assert list(tmp_path.iterdir()) == [out]
