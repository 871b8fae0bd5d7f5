"""How this process takes part in the run: the Accelerator for the launch (one process, several CPU processes
on gloo, GPUs), its precision, and the few collectives the loop needs."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator


def make_accelerator(mixed_precision: str) -> Accelerator:
    """The Accelerator of this launch, with `mixed_precision` ('auto' is bf16 on a capable GPU, else none)."""
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision), cpu=_several_cpu_processes())


def _several_cpu_processes() -> bool:
    """Whether torchrun (or `accelerate launch --multi_gpu`) started several processes on a machine without a
    GPU: accelerate joins them into one gloo group only when told it runs on CPU; otherwise every process
    would train alone on all the data and write the same run folder."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def resolve_mixed_precision(choice: str) -> str:
    """'auto' becomes bf16 on a GPU that supports it and 'no' elsewhere; other choices stay."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def compute_dtype(accelerator: Accelerator, model: torch.nn.Module) -> torch.dtype:
    """The dtype activations are computed in: the autocast dtype, else the weights'."""
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    return autocast or next(model.parameters()).dtype


def max_over_ranks(accelerator: Accelerator, value: int) -> int:
    """The largest `value` any process holds (collective)."""
    gathered = accelerator.gather(torch.tensor([value], device=accelerator.device, dtype=torch.long))
    return int(gathered.max())


def describe(accelerator: Accelerator) -> dict[str, Any]:
    """What the launch is, for the run's `config` event."""
    return {
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "distributed_type": str(accelerator.distributed_type).removeprefix("DistributedType."),
        "mixed_precision": str(accelerator.mixed_precision),
    }
