"""How this process takes part in the run: the Accelerator for the launch (one process, several CPU processes
on gloo, GPUs), its precision, and the few collectives the loop needs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object

from synthmix.errors import UserError

T = TypeVar("T")


def make_accelerator(
    mixed_precision: str, report_to: list[str] | None = None, output_dir: Path | None = None
) -> Accelerator:
    """The Accelerator of this launch, with `mixed_precision` ('auto' is bf16 on a capable GPU, else none) and
    the experiment trackers of `report_to` (TensorBoard events under OUTPUT_DIR/tensorboard)."""
    trackers = [name for name in report_to or [] if name != "none"]
    project = None
    if output_dir is not None:
        project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard"))
    return Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision),
        cpu=several_cpu_processes(),
        log_with=trackers or None,
        project_config=project,
    )


def several_cpu_processes() -> bool:
    """Whether torchrun (or `accelerate launch --multi_gpu`) started several processes on a machine without a
    GPU: accelerate joins them into one gloo group only when told it runs on CPU; otherwise every process
    would train alone on all the data and write the same run folder."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def resolve_mixed_precision(choice: str) -> str:
    """'auto' becomes bf16 on a GPU that supports it and 'no' elsewhere; other choices stay."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def autocast_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """The dtype autocast computes in (None without mixed precision)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))


def compute_dtype(accelerator: Accelerator, model: torch.nn.Module) -> torch.dtype:
    """The dtype activations are computed in: the autocast dtype, else the weights'."""
    return autocast_dtype(accelerator) or next(model.parameters()).dtype


def max_over_ranks(accelerator: Accelerator, value: int) -> int:
    """The largest `value` any process holds (collective)."""
    gathered = accelerator.gather(torch.tensor([value], device=accelerator.device, dtype=torch.long))
    return int(gathered.max())


def describe(accelerator: Accelerator, sharding: dict[str, Any] | None) -> dict[str, Any]:
    """What the launch is, for the run's `config` event: `distributed_type` is accelerate's name for it (FSDP
    when the model is sharded, which the trainer does itself; `process_group` is what accelerate set up)."""
    process_group = str(accelerator.distributed_type).removeprefix("DistributedType.")
    return {
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "distributed_type": "FSDP" if sharding is not None else process_group,
        "process_group": process_group,
        "sharding": sharding,
        "mixed_precision": str(accelerator.mixed_precision),
    }


def first_then_others(accelerator: Accelerator | PartialState, job: Callable[[], T], first: bool) -> T:
    """Run `job` on the processes where `first` is true, then on the others (which reuse what it built: the
    store, the tokenizer). A UserError where it ran first (a full disk, a bad source) is raised on every process
    instead of leaving the others waiting for it in a collective (collective: call on every rank)."""
    result: T | None = None
    problem: UserError | None = None
    if first:
        try:
            result = job()
        except UserError as err:
            problem = err
    failures = [p for p in gather_object([problem]) if p is not None] if accelerator.num_processes > 1 else []
    if problem is not None:
        raise problem
    if failures:
        raise failures[0]
    return result if first else job()  # type: ignore[return-value]


def on_main_process(accelerator: Accelerator, job: Callable[[], None]) -> None:
    """Run `job` (writing files) on the main process only; a UserError there (a full disk) is raised on every
    process, so none waits forever in the next collective (collective: call on every rank)."""
    problem: UserError | None = None
    if accelerator.is_main_process:
        try:
            job()
        except UserError as err:
            problem = err
    if accelerator.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise problem
