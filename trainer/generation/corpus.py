"""A synthetic corpus written from a model's samples: one JSONL line per sample, with its provenance."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from synthmix.files import atomic_file, write_text
from synthmix.trainer.generation.prompts import choose_prompts
from synthmix.trainer.generation.sampling import SamplingConfig, sample_continuations
from synthmix.trainer.reporting.cards import data_card, data_card_path


def generate_corpus(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    n: int,
    prompt_tokens: int,
    sampling: SamplingConfig,
    generator_name: str,
    prompt_file: str,
    out_path: Path,
    progress: bool = False,
) -> int:
    """Write `n` samples (prompt + continuation) to JSONL with their provenance; returns the lines written.

    Prompts are drawn with `sampling.seed`. The file appears only when complete: it is written beside
    `out_path` and renamed into place; its data card (generator, prompts, sampling, count, date) goes beside it
    as `NAME.card.md`.
    """
    chosen = choose_prompts(tokenizer, texts, n, prompt_tokens, sampling.seed)
    prompts = [ids for _, ids in chosen]
    continuations = sample_continuations(model, tokenizer, prompts, sampling, progress=progress)
    settings = dataclasses.asdict(sampling)
    with atomic_file(out_path) as handle:
        for (index, prompt), continuation in zip(chosen, continuations, strict=True):
            # Decoded together, so a character split across the prompt boundary comes out whole.
            text = tokenizer.decode(prompt + continuation, skip_special_tokens=True)
            record = {
                "text": text,
                "generator": generator_name,
                "prompt_source": {"file": prompt_file, "index": index},
                "sampling": settings,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    card = data_card(len(chosen), generator_name, prompt_file, prompt_tokens, settings, out_path.name)
    write_text(data_card_path(out_path), card)
    return len(chosen)
