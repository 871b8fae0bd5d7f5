"""Sampling text from a causal LM: one seeded, batched function shared by the collapse hook and corpus jobs.

`sample_continuations` leaves the caller's RNG state and the model's train/eval modes as it found them, so an
eval hook that samples mid-training does not change what a resumed run computes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trainer.errors import TrainerError


class GenerationError(TrainerError):
    """A sampling setting or prompt set that cannot be used, phrased for the user (names the field)."""


@dataclasses.dataclass
class SamplingConfig:
    """How text is sampled from a model."""

    max_new_tokens: int = 64
    """Most tokens generated after each prompt (generation also stops at the end-of-sequence token)."""
    temperature: float = 1.0
    """Softmax temperature; 1.0 is plain ancestral sampling (collapse hides behind truncated sampling), 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches this; 1.0 is off."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 is off."""
    num_beams: int = 1
    """Beams; more than 1 is beam search (deterministic when `do_sample` is false, as in Shumailov et al.)."""
    do_sample: bool = True
    """Sample; false is greedy decoding (or beam search when `num_beams` > 1)."""
    batch_size: int = 32
    """Prompts generated together; part of the seed's meaning, since each batch draws from its own seed."""
    seed: int = 0
    """Batch b samples with torch seed `seed + b`, so the same prompts and settings give the same text."""

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0 (0 is off)"),
            ("num_beams", self.num_beams >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise GenerationError(f"sampling {name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the most likely token (or beam) instead of sampling."""
        return not self.do_sample or self.temperature == 0


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: SamplingConfig) -> None:
    """Command-line flags for every SamplingConfig field but the seed (its default differs per tool)."""
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 means greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="0 is off")
    parser.add_argument("--num-beams", type=int, default=defaults.num_beams)
    parser.add_argument(
        "--do-sample",
        action=argparse.BooleanOptionalAction,
        default=defaults.do_sample,
        help="--no-do-sample decodes greedily, or with beam search when --num-beams > 1",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)


def sampling_from_args(args: argparse.Namespace, seed: int) -> SamplingConfig:
    """The SamplingConfig the flags of `add_sampling_arguments` describe."""
    return SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        batch_size=args.batch_size,
        seed=seed,
    )


def sample_continuations(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    progress: bool = False,
) -> list[list[int]]:
    """Generated token ids (prompt excluded, stopped at eos, eos excluded) for each prompt, in order."""
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise GenerationError(f"prompt {i} is empty; every prompt needs at least one token")
    if not prompts:
        return []
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [None])[0]
    if pad_id is None:
        raise GenerationError("the tokenizer has neither a pad token nor an eos token to pad prompts with")
    device = next(model.parameters()).device
    kwargs = _generate_kwargs(sampling, eos_ids, pad_id)
    # Sorting by length puts similar prompts in a batch, so little padding is computed.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    modes = [module.training for module in model.modules()]
    model.eval()
    bar = tqdm(total=len(prompts), disable=not progress, unit="sample", desc="sampling", leave=False)
    try:
        with _forked_rng(device), torch.inference_mode():
            for batch_index, start in enumerate(range(0, len(order), sampling.batch_size)):
                rows = order[start : start + sampling.batch_size]
                input_ids, attention_mask = _left_pad([prompts[i] for i in rows], pad_id, device)
                _seed(device, sampling.seed + batch_index)
                # Keyword arguments only: PeftModel.generate accepts nothing positional.
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                for i, ids in zip(rows, out[:, input_ids.shape[1] :].tolist(), strict=True):
                    results[i] = _cut_at_eos(ids, eos_ids)
                bar.update(len(rows))
    finally:
        bar.close()
        # Restored module by module: a caller may have frozen some submodules in eval mode on purpose.
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode
    return results


def prompts_from_texts(tokenizer: Any, texts: list[str], n: int, prompt_tokens: int, seed: int) -> list[list[int]]:
    """`n` fixed prompts: the first `prompt_tokens` tokens of texts drawn by a seeded shuffle.

    Texts shorter than `prompt_tokens + 1` tokens are skipped; when fewer than `n` texts qualify, the shuffled
    list is reused from its start. The tokenizer's own leading special tokens (a BOS) are kept in front.
    """
    return [ids for _, ids in choose_prompts(tokenizer, texts, n, prompt_tokens, seed)]


def choose_prompts(
    tokenizer: Any, texts: list[str], n: int, prompt_tokens: int, seed: int
) -> list[tuple[int, list[int]]]:
    """Like `prompts_from_texts`, with each prompt's index in `texts` (for provenance)."""
    if n < 1:
        raise GenerationError(f"n must be at least 1, got {n}")
    if prompt_tokens < 1:
        raise GenerationError(f"prompt_tokens must be at least 1, got {prompt_tokens}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    prefix = _leading_special_tokens(tokenizer)
    chosen: list[tuple[int, list[int]]] = []
    chunk = 256
    for start in range(0, len(order), chunk):
        indices = order[start : start + chunk]
        # Truncation keeps only what the length test and the prompt need.
        encoded = tokenizer(
            [texts[i] for i in indices],
            add_special_tokens=False,
            truncation=True,
            max_length=prompt_tokens + 1,
        )["input_ids"]
        for i, ids in zip(indices, encoded, strict=True):
            if len(ids) > prompt_tokens:
                chosen.append((i, prefix + ids[:prompt_tokens]))
        if len(chosen) >= n:
            return chosen[:n]
    if not chosen:
        raise GenerationError(f"none of the {len(texts)} texts has more than prompt_tokens={prompt_tokens} tokens")
    return [chosen[k % len(chosen)] for k in range(n)]


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
    `out_path` and renamed into place.
    """
    chosen = choose_prompts(tokenizer, texts, n, prompt_tokens, sampling.seed)
    prompts = [ids for _, ids in chosen]
    continuations = sample_continuations(model, tokenizer, prompts, sampling, progress=progress)
    settings = dataclasses.asdict(sampling)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(out_path) as handle:
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
    return len(chosen)


def _generate_kwargs(sampling: SamplingConfig, eos_ids: list[int], pad_id: int) -> dict[str, Any]:
    # Every setting that changes the output is given explicitly, so a hub model's generation_config.json
    # (often temperature 0.6, top_p 0.9, a repetition penalty) cannot change the text behind the
    # recorded SamplingConfig.
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "min_new_tokens": None,
        "min_length": 0,
        "do_sample": not sampling.greedy,
        "num_beams": sampling.num_beams,
        "num_return_sequences": 1,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "bad_words_ids": None,
        "suppress_tokens": None,
        "begin_suppress_tokens": None,
        "sequence_bias": None,
        "forced_bos_token_id": None,
        "forced_eos_token_id": None,
        "stop_strings": None,
        "max_time": None,
        "eos_token_id": eos_ids or None,
        "pad_token_id": pad_id,
        "use_cache": True,
    }
    if sampling.num_beams > 1:
        kwargs.update(length_penalty=1.0, early_stopping=False)
    if not sampling.greedy:
        kwargs.update(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=None,
            top_h=None,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
        )
    return kwargs


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's eos plus any the model's generation config lists (e.g. Llama 3's end-of-turn)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [tokenizer.eos_token_id, configured]:
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids


def _leading_special_tokens(tokenizer: Any) -> list[int]:
    """Special tokens the tokenizer puts before text (Llama's BOS; none for GPT-2 or a local BPE)."""
    probe = "a b"
    full = tokenizer(probe)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    prefix_length = len(full) - len(plain)
    if prefix_length > 0 and full[prefix_length:] == plain:
        return list(full[:prefix_length])
    return []


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Save the CPU RNG and the model's accelerator RNG, and put them back on exit."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            yield
        return
    backend = getattr(torch, device.type)
    index = device.index if device.index is not None else backend.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        yield


def _seed(device: torch.device, seed: int) -> None:
    # Only the generators that _forked_rng saved are seeded (torch.manual_seed would also reseed every
    # other GPU, whose state nobody restores).
    torch.default_generator.manual_seed(seed)
    if device.type != "cpu":
        backend = getattr(torch, device.type)
        with backend.device(device):
            backend.manual_seed(seed)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Any]:
    """A text handle on a temporary file beside `path`, renamed onto `path` only if the block completes."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
