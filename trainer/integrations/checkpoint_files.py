"""What synthmix keeps beside a transformers `Trainer`'s checkpoints (`OUTPUT_DIR/checkpoint-N/`): the run's
events as they stood at the checkpoint, so that a resumed run's metrics.jsonl holds each event once."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from synthmix.files import write_text
from synthmix.trainer.reporting.events import METRICS, EventLog

EVENTS_FILE = "synthmix_metrics.jsonl"
"""Beside each checkpoint: OUTPUT_DIR/metrics.jsonl as it stood when the checkpoint was written."""


def checkpoint_folder(args: Any, step: int) -> Path:
    """The Trainer's checkpoint folder of `step` in `args.output_dir`."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def save_events(args: Any, state: Any) -> None:
    """On the main process: metrics.jsonl as it stands (empty when nothing was logged yet), beside the checkpoint
    of this step."""
    events = Path(args.output_dir) / METRICS
    if state.is_world_process_zero:
        text = events.read_text() if events.is_file() else ""
        write_text(checkpoint_folder(args, state.global_step) / EVENTS_FILE, text)


def restore_events(args: Any, state: Any) -> None:
    """On the main process of a resumed run: metrics.jsonl back to what it held at the checkpoint (the events the
    interrupted run wrote after it are written again as training repeats those steps), then a `resume` event.
    Once per resume, whichever callback asks first (each callback that logs events asks)."""
    folder = checkpoint_folder(args, state.global_step)
    if not state.is_world_process_zero or getattr(state, RESTORED, None) == state.global_step:
        return
    setattr(state, RESTORED, state.global_step)  # not a field of TrainerState: never saved with it
    if (folder / EVENTS_FILE).is_file():
        write_text(Path(args.output_dir) / METRICS, (folder / EVENTS_FILE).read_text())
        EventLog(Path(args.output_dir), enabled=True).event("resume", step=state.global_step, checkpoint=str(folder))
    else:
        warnings.warn(f"{folder / EVENTS_FILE}: missing, so metrics.jsonl keeps what the interrupted run logged "
                      "after this checkpoint", stacklevel=3)  # fmt: skip


RESTORED = "_synthmix_events_restored"
