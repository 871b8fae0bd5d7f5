"""The plan of steps and the learning rate: how many optimizer steps an epoch takes (planned again after a resume
or a lower ratio), and the factor on the peak learning rate at each step (warm-up, then decay to 0 at the last
planned step)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from synthmix.data_mixers.mixer import Mixer
from synthmix.trainer.config import RunConfig, TrainConfig
from synthmix.trainer.distributed.accelerator import max_over_ranks

if TYPE_CHECKING:
    from synthmix.trainer.runtime.state import Run


def rows_per_step(config: RunConfig) -> int:
    """Rows one process takes from the stream per optimizer step."""
    return config.train.per_device_train_batch_size * config.train.gradient_accumulation_steps


def steps_in_epoch(mixer: Mixer, epoch: int, config: RunConfig) -> int:
    """Optimizer steps that cover the largest rank's share of `epoch` (smaller shares are padded)."""
    return max(1, math.ceil(max(mixer.shard_rows(epoch)) / rows_per_step(config)))


def lr_factor(train: TrainConfig, horizon: Callable[[], int]) -> Callable[[int], float]:
    """The factor on the peak learning rate at each step, for `LambdaLR`. The horizon (the run's planned steps)
    is read at every step, so it follows the plan: a `reduce_ratio` that shortens later epochs, or a resume
    with other batch settings, moves the end of the decay with it."""
    warmup, kind = train.warmup_steps, train.lr_scheduler

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, horizon() - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, train: TrainConfig
) -> None:
    """After a resume: the optimizer's and scheduler's states carry the learning rate and weight decay they were
    saved with; the config's values win (as the `resume` event says), at the schedule's current position."""
    scheduler.base_lrs = [train.learning_rate for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = train.learning_rate
        group["lr"] = train.learning_rate * factor(scheduler.last_epoch)
        group["weight_decay"] = train.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def replan_steps(run: Run) -> None:
    """Steps of the epoch under way and of those to come, after a resume or a change of the ratio scale.

    The epoch under way ends when every rank has taken its whole share, however the batch settings changed
    since it started: its remaining steps are counted from the largest rank's remaining rows.
    """
    progress, config = run.progress, run.config
    for epoch in range(progress.epoch, config.train.epochs + 1):
        progress.steps_per_epoch[epoch - 1] = steps_in_epoch(run.mixer, epoch, config)
    if progress.step_in_epoch > 0 and progress.epoch <= config.train.epochs:
        left = math.ceil(max_over_ranks(run.accelerator, run.mixer.rows_left()) / rows_per_step(config))
        progress.steps_per_epoch[progress.epoch - 1] = progress.step_in_epoch + left
