"""What one training run holds in memory (`Run`, with the list of what its checkpoints hold) and where it stands
(`Progress`): built by `setup`, driven by `loop.fit`, read by the eval hook's scheduling in `evaluation`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import IO, Any

import torch
from accelerate import Accelerator
from peft import PeftModel

from synthmix.data_mixers.config import KINDS
from synthmix.data_mixers.corpus import HeldOutExample
from synthmix.data_mixers.mixer import Mixer
from synthmix.schema import to_dict
from synthmix.trainer.collapse.monitor import CollapseMonitor
from synthmix.trainer.config import RunConfig
from synthmix.trainer.distributed.sharding import is_sharded
from synthmix.trainer.modeling.attention import AttentionChoice
from synthmix.trainer.modeling.loss import LossChoice
from synthmix.trainer.reporting.events import EventLog
from synthmix.trainer.reporting.live import LiveReport
from synthmix.trainer.runtime.checkpoint import JSON, Checkpointer, Part, RngState
from synthmix.trainer.runtime.preemption import StopSignals
from synthmix.trainer.runtime.weights import (
    OptimizerState,
    ShardedTrainingState,
    TrainableWeights,
    WeightsCodec,
)


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in every checkpoint as progress.json."""

    step: int = 0
    epoch: int = 1
    step_in_epoch: int = 0
    steps_per_epoch: list[int] = dataclasses.field(default_factory=list)
    """Optimizer steps of each epoch: as run for past epochs, as planned for the others."""
    epoch_tokens: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    epoch_examples: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    epoch_capacity: int = 0
    """Token slots of every row every process trained on this epoch (padding included)."""
    evaluated_step: int | None = None
    """The step of the newest collapse eval, so the last step gets one unless it already had it."""

    def total_steps(self, max_steps: int | None) -> int:
        """Optimizer steps of the whole run as planned now, capped by `train.max_steps`."""
        planned = sum(self.steps_per_epoch)
        return min(planned, max_steps) if max_steps is not None else planned

    def epoch_complete(self) -> bool:
        """Every step of the epoch under way has run (its end, the eval and the checkpoint, has not yet)."""
        return self.epoch <= len(self.steps_per_epoch) and self.step_in_epoch >= self.steps_per_epoch[self.epoch - 1]

    def record_step(self, stats: dict[str, Any], capacity: int) -> None:
        """Count one optimizer step: its tokens and examples by kind, and the `capacity` token slots it filled."""
        self.step += 1
        self.step_in_epoch += 1
        for kind in KINDS:
            self.epoch_tokens[kind] += stats[f"tokens_{kind}"]
            self.epoch_examples[kind] += stats[f"examples_{kind}"]
        self.epoch_capacity += capacity

    def next_epoch(self) -> None:
        """Start the next epoch's counters."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_tokens = dict.fromkeys(KINDS, 0)
        self.epoch_examples = dict.fromkeys(KINDS, 0)
        self.epoch_capacity = 0

    def state_dict(self) -> dict[str, Any]:
        """Plain data for progress.json."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from progress.json (`evaluated_step` is absent from checkpoints written before it existed)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, state.get(field.name) if field.name == "evaluated_step" else state[field.name])


@dataclasses.dataclass
class Run:
    """Everything one training run holds, built by `setup` and driven by `fit`."""

    config: RunConfig
    accelerator: Accelerator
    output_dir: Path
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    mixer: Mixer
    tokenizer: Any
    held_out: list[HeldOutExample]
    """The held-out real examples (what the collapse hook scores and prompts with)."""
    log: EventLog
    checkpointer: Checkpointer
    compute_dtype: torch.dtype
    progress: Progress
    loss: LossChoice
    attention: AttentionChoice
    sharding: dict[str, Any] | None = None
    """How the model is sharded (FSDP2), as the config event records it; None when every process holds it whole."""
    monitor: CollapseMonitor | None = None
    stop_reason: str | None = None
    signals: StopSignals = dataclasses.field(default_factory=StopSignals)
    preempted: bool = False
    """A process received a preemption signal: the run stops after this step (every process agrees)."""
    checkpointed_step: int | None = None
    """The step of the newest checkpoint, so a run that stops between checkpoints writes a final one."""
    live_report: LiveReport = dataclasses.field(default_factory=lambda: LiveReport(Path(), enabled=False))
    """The run's report.html, rewritten by the main process (set by `setup`)."""
    folder_lock: IO[str] | None = None
    """The main process's lock on the run folder (see run_log.claim_run_folder); None on the other processes."""

    def close(self, warn: bool = True) -> None:
        """Finish the trackers and release the run folder; `warn` false when an error is already on its way out
        (see EventLog.close)."""
        try:
            self.log.close(warn=warn)
        finally:
            if self.folder_lock is not None:
                self.folder_lock.close()
                self.folder_lock = None

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run, as planned now (the learning-rate schedule's horizon)."""
        return self.progress.total_steps(self.config.train.max_steps)

    def more_steps(self) -> bool:
        """Whether a step is left: an epoch to train, under the step budget."""
        return self.progress.epoch <= self.config.train.epochs and self.progress.step < self.total_steps

    def checkpoint_parts(self) -> list[Part]:
        """What a checkpoint holds, in the order it is restored."""
        parts = [
            *self._weight_parts(),
            Part("scheduler", self.scheduler),
            Part("rng", RngState(), per_rank=True),
            Part("mixer", self.mixer, codec=JSON, per_rank=True),
            Part("progress", self.progress, codec=JSON),
        ]
        if self.accelerator.scaler is not None:
            parts.append(Part("scaler", self.accelerator.scaler))
        if self.monitor is not None:
            parts.append(Part("collapse", self.monitor, codec=JSON))
        return parts

    def _weight_parts(self) -> list[Part]:
        # A sharded full fine-tune keeps every process's shards apart (gathered, the whole model and its Adam
        # state would sit in one process); a LoRA adapter is small, and whole it loads with peft directly.
        if is_sharded(self.unwrapped) and not isinstance(self.unwrapped, PeftModel):
            return [Part("sharded", ShardedTrainingState(self.unwrapped, self.optimizer), sharded=True)]
        weights = TrainableWeights(self.unwrapped)
        return [
            Part("weights", weights, codec=WeightsCodec(weights), collective=True),
            Part("optimizer", OptimizerState(self.unwrapped, self.optimizer), collective=True),
        ]

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint's manifest says of the run: a resume must fit the world size and the data."""
        return {
            "world_size": self.accelerator.num_processes,
            "data_fingerprint": self.mixer.fingerprint(),
            "config": to_dict(self.config),
        }

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model without its DDP wrapper (what is saved and evaluated)."""
        return self.accelerator.unwrap_model(self.model)
