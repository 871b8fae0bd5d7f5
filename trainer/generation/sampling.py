"""Sampling text from a causal LM: one seeded, batched function shared by the collapse hook and corpus jobs.

`sample_continuations` leaves the caller's RNG state and the model's train/eval modes as it found them, so an
eval hook that samples mid-training does not change what a resumed run computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from synthmix.trainer.config import SamplingConfig
from synthmix.trainer.distributed.sharding import is_sharded
from synthmix.trainer.errors import TrainerError


class GenerationError(TrainerError):
    """Prompts or a model that cannot be sampled from, phrased for the user."""


def sample_continuations(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    progress: bool = False,
    stop_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Generated token ids (prompt excluded, stopped at eos, eos excluded) for each prompt, in order.
    `stop_ids`: more tokens that end a sample, as eos does (a chat template's end of turn)."""
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise GenerationError(f"prompt {i} is empty; every prompt needs at least one token")
    if not prompts:
        return []
    eos_ids = _eos_ids(model, tokenizer)
    eos_ids += [int(token) for token in stop_ids if token not in eos_ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [None])[0]
    if pad_id is None:
        raise GenerationError("the tokenizer has neither a pad token nor an eos token to pad prompts with")
    device = next(model.parameters()).device
    kwargs = _generate_kwargs(sampling, eos_ids, pad_id)
    sharded = is_sharded(model)
    # Sharded weights: every process generates (the same text, from the same seeds) and keeps stepping until
    # all are done, since each forward gathers the weights from all; inference tensors would outlive the
    # gathered buffers that FSDP reuses in training, so plain no_grad.
    kwargs["synced_gpus"] = sharded
    no_grad = torch.no_grad() if sharded else torch.inference_mode()
    # Sorting by length puts similar prompts in a batch, so little padding is computed.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    modes = [module.training for module in model.modules()]
    model.eval()
    bar = tqdm(total=len(prompts), disable=not progress, unit="sample", desc="sampling", leave=False)
    try:
        with _forked_rng(device), no_grad:
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
