"""synthmix.trainer.reporting.cards: the model card of saved weights says what the run logged (sources, ratio per
epoch, final indicators vs the baseline, alerts); a generated corpus gets a data card."""

from __future__ import annotations

import pydoc_data.topics
from pathlib import Path

import yaml

from synthmix.trainer.config import SamplingConfig
from synthmix.trainer.generation.corpus import generate_corpus
from synthmix.trainer.reporting.cards import CARD, data_card_path, model_card


def header_and_body(card: str) -> tuple[dict, str]:
    _, header, body = card.split("---\n", 2)
    return yaml.safe_load(header), body


def test_the_adapter_folder_carries_a_card_of_what_the_run_logged(reference) -> None:
    card = (reference.output_dir / "adapter" / CARD).read_text()
    header, body = header_and_body(card)
    assert header["library_name"] == "peft" and "lora" in header["tags"] and "synthmix" in header["tags"]
    assert "base_model" not in header  # built from model.arch: no hub or folder to name
    assert "datasets" not in header  # local sources only: the header field takes hub dataset ids
    (config,) = [e for e in reference.events if e["event"] == "config"]
    for source in config["sources"]:
        assert f"| {source['name']} | {source['kind']} | {source['examples']:,} | {source['tokens']:,} |" in body
    for epoch in (e for e in reference.events if e["event"] == "epoch"):
        assert f"| {epoch['epoch']} | 0.3 | {epoch['realized_synthetic_ratio']:.4g} | tokens |" in body
    evals = [e for e in reference.events if e["event"] == "eval"]
    change = 100 * (evals[-1]["real_ppl"] - evals[0]["real_ppl"]) / evals[0]["real_ppl"]
    assert f"| real_ppl | {evals[0]['real_ppl']:.4g} | {evals[-1]['real_ppl']:.4g} | {change:+.1f}% |" in body
    assert "No collapse rule fired." in body and "PeftModel.from_pretrained" in body


def test_a_card_lists_the_alerts_the_base_model_and_the_last_record_of_a_resumed_epoch() -> None:
    events = [
        {"event": "config", "config": {"model": {"name": "org/base"}, "lora": {"r": 8, "alpha": 16,
         "target_modules": ["q_proj"]}, "data": {"synthetic_ratio": 0.5, "unit": "examples",
         "sources": [{"name": "web", "hub": "org/web-text"}, {"name": "gen"}]}},
         "sources": [{"name": "web", "kind": "real", "examples": 10, "tokens": 100},
                     {"name": "gen", "kind": "synthetic", "examples": 10, "tokens": 90, "unverified": 2}]},
        {"event": "eval", "step": 0, "real_ppl": 10.0},
        {"event": "epoch", "epoch": 1, "target_synthetic_ratio": 0.5, "realized_synthetic_ratio": 0.4,
         "unit": "examples"},
        {"event": "epoch", "epoch": 1, "target_synthetic_ratio": 0.5, "realized_synthetic_ratio": 0.5,
         "unit": "examples"},
        {"event": "eval", "step": 7, "real_ppl": 12.0},
        {"event": "alert", "step": 7, "action": "warn", "message": "real_ppl rose 20% vs baseline"},
    ]  # fmt: skip
    header, body = header_and_body(model_card(events))
    assert header["base_model"] == "org/base" and header["datasets"] == ["org/web-text"]  # hub datasets by name
    assert "| 1 | 0.5 | 0.5 | examples |" in body and "| 1 | 0.5 | 0.4 |" not in body
    assert "| real_ppl | 10 | 12 | +20.0% |" in body
    assert "- step 7, warn: real_ppl rose 20% vs baseline" in body
    assert "| gen | synthetic | 10 | 90 | 0 | 0, 0, 0, 2 |" in body
    full, _ = header_and_body(model_card(events, "model"))
    assert full["library_name"] == "transformers" and "lora" not in full["tags"]


def test_a_generated_corpus_gets_a_data_card(tmp_path: Path, tiny_tokenizer, tiny_model) -> None:
    texts = [t for t in pydoc_data.topics.topics.values() if len(t) > 200][:10]
    out = tmp_path / "synthetic.jsonl"
    sampling = SamplingConfig(max_new_tokens=4, seed=3)
    model = tiny_model(tiny_tokenizer)
    written = generate_corpus(model, tiny_tokenizer, texts, 6, 8, sampling, "tiny-model", "docs.jsonl", out)
    card = data_card_path(out).read_text()
    assert data_card_path(out).name == "synthetic.card.md"
    header, body = header_and_body(card)
    assert header["tags"] == ["synthetic", "synthmix"] and header["size_categories"] == ["n<1K"]
    assert f"{written:,} texts" in body and "**generator**: tiny-model" in body and "docs.jsonl" in body
    assert "| max_new_tokens | 4 |" in body and "| seed | 3 |" in body
