"""The exact mix (`data_mixers.torch_dataset.MixedStream`) as the dataset of a transformers `Trainer` or TRL's
`SFTTrainer`: `attach_stream` wires it, `StreamCallback` gives its epochs what a synthmix run gives them (the
realized ratio, the collapse eval, a checkpoint) and resumes it exactly."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from transformers import DefaultFlowCallback, TrainerCallback

from synthmix.data_mixers.config import DataConfig
from synthmix.data_mixers.corpus import Corpora
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.torch_dataset import KindCounter, MixedStream
from synthmix.files import write_text
from synthmix.trainer.distributed.accelerator import on_main_process
from synthmix.trainer.integrations.checkpoint_files import checkpoint_folder, restore_events, save_events
from synthmix.trainer.integrations.collapse_callback import CollapseCallback
from synthmix.trainer.reporting.events import EventLog

STREAM_STATE_FILE = "synthmix_stream.json"
"""Beside each `Trainer` checkpoint: the stream's state at that checkpoint's step, and the epoch's counts so far."""
COUNT_NAMES = ("tokens_real", "tokens_synthetic", "examples_real", "examples_synthetic")


class StreamCallback(TrainerCallback):
    """The stream's epochs inside a `Trainer`, and its exact resume.

    The Trainer sees the whole stream as one epoch of its own, so at the step that ends each of the stream's
    epochs this callback sums the epoch's counts (`KindCounter`) over every process, logs an `epoch` event, has
    every `CollapseCallback` of the trainer evaluate, and asks for a checkpoint, as a synthmix run does.

    transformers' Trainer saves no dataloader state and, on resume, fast-forwards by re-reading every batch it
    trained on; `attach_stream` turns that off (`ignore_data_skip`). This callback writes
    `checkpoint-N/synthmix_stream.json` (the stream after N steps and the epoch's counts so far) and loads it when
    the run resumes: the stream continues at the next row, nothing rebuilt or replayed."""

    def __init__(self, stream: MixedStream, counter: KindCounter, trainer: Any) -> None:
        self.stream, self.counter, self.trainer = stream, counter, trainer
        self.epoch_ends = stream.epoch_end_steps()
        self.planned_steps = stream.total_steps()
        """The stream's steps as `attach_stream` planned them (the Trainer's `max_steps`, unless smaller)."""
        self._carried = np.zeros(len(COUNT_NAMES), np.int64)
        """The epoch's counts over every process before this run resumed (from the checkpoint)."""
        self._log: EventLog | None = None
        self._rng_from: str | None = None

    # ------------------------------------------------------------------------------------------ resume
    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._log = EventLog(Path(args.output_dir), enabled=state.is_world_process_zero)
        if state.global_step > 0:
            self._resume(args, state)
        for callback in self._collapse_callbacks():
            callback.epoch_of = self.epoch_at

    def _resume(self, args: Any, state: Any) -> None:
        folder = checkpoint_folder(args, state.global_step)
        saved = _read_state(folder / STREAM_STATE_FILE, state.global_step)
        self.stream.load_state_dict(saved["stream"])
        self._carried = np.asarray(saved["epoch_counts"], np.int64)
        self.epoch_ends = self.stream.epoch_end_steps()  # the epoch under way as it was planned, the rest as now
        if self.stream.total_steps() != self.planned_steps:
            raise MixerError(
                f"{folder}: resumed, the stream takes {self.stream.total_steps()} steps, the Trainer was set up for "
                f"{self.planned_steps} (data settings changed since the checkpoint); resume with the settings it "
                "was saved with"
            )
        on_main_process(PartialState(), lambda: restore_events(args, state))
        # The Trainer restored the RNG before its dataloader's iterator started, and the iterator draws its seed
        # from it: restored once more before the first forward (as the Trainer's own skipping resume does), so
        # dropout matches the uninterrupted run's.
        self._rng_from = str(folder)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._rng_from is not None:
            self.trainer._load_rng_state(self._rng_from)
            self._rng_from = None

    # ------------------------------------------------------------------------------------------ epoch ends
    def epoch_at(self, step: int) -> int:
        """The stream's epoch that `step` trains (0: before the first step, the baseline)."""
        return 0 if step == 0 else next((e for e, end in self.epoch_ends.items() if step <= end), self.stream.epochs)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = state.global_step
        epoch = next((e for e, end in self.epoch_ends.items() if end == step), None)
        if epoch is None:
            return
        counts = self._epoch_counts(step)
        self.counter.forget(step)
        self._carried[:] = 0
        settings = self.stream.epoch_settings(epoch)
        ratio = {"realized_synthetic_ratio": _synthetic_share(counts, settings["unit"]),
                 "target_synthetic_ratio": settings["target_ratio"]}  # fmt: skip
        capacity = self.stream.epoch_rows(epoch) * self.stream.world_size * self.stream.seq_len
        fields = {"step": step, "epoch": epoch, **ratio, "unit": settings["unit"],
                  **dict(zip(COUNT_NAMES, counts.tolist())), "padding_efficiency": counts[:2].sum() / capacity,
                  "packing": settings["packing"]}  # fmt: skip
        log = self._log
        assert log is not None
        on_main_process(PartialState(), lambda: log.event("epoch", **fields))
        for callback in self._collapse_callbacks():
            callback.evaluate(args, state, control, kw["model"], **ratio)
        control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        counts = self._epoch_counts(state.global_step)  # collective: every process saves

        def write() -> None:
            stream = self.stream.state_at(state.global_step * self.stream.rows_per_step)
            saved = {"stream": stream, "epoch_counts": counts.tolist()}
            write_text(checkpoint_folder(args, state.global_step) / STREAM_STATE_FILE, json.dumps(saved))
            save_events(args, state)

        on_main_process(PartialState(), write)  # a full disk there is one error on every process, not a hang

    def _epoch_counts(self, step: int) -> np.ndarray:
        """The epoch under way's counts (`COUNT_NAMES`) over every process, through `step` (collective)."""
        accelerator = self.trainer.accelerator
        local = torch.as_tensor(self.counter.counted(step), device=accelerator.device)
        return accelerator.reduce(local, "sum").cpu().numpy() + self._carried

    def _collapse_callbacks(self) -> list[CollapseCallback]:
        return [c for c in self.trainer.callback_handler.callbacks if isinstance(c, CollapseCallback)]


def _read_state(path: Path, step: int) -> dict[str, Any]:
    """The stream file of a checkpoint; one written before the epoch counts were kept holds the stream only."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise MixerError(
            f"{path}: missing, so the stream cannot resume at step {step} (a checkpoint written by "
            "another version, or cut short while it was saved); resume from an earlier one"
        ) from None
    except (OSError, ValueError) as err:
        raise MixerError(f"{path}: unreadable ({err}); resume from another checkpoint") from None
    if "stream" not in saved:
        saved = {"stream": saved, "epoch_counts": [0] * len(COUNT_NAMES)}
        warnings.warn(f"{path}: no epoch counts; the ratio of the epoch under way is counted from step {step}",
                      stacklevel=3)  # fmt: skip
    return saved


def _synthetic_share(counts: np.ndarray, unit: str) -> float | None:
    real, synthetic = counts[:2] if unit == "tokens" else counts[2:]
    return float(synthetic / (real + synthetic)) if real + synthetic else None


def mixed_stream(corpora: Corpora, data: DataConfig, args: Any, *, seq_len: int, epochs: int) -> MixedStream:
    """The exact mix of `corpora`, planned for the launch that `args` (a `TrainingArguments` or TRL `SFTConfig`)
    trains under: its processes, per-device batch, accumulation and seed; what `attach_stream` expects. Make
    `args` first: it sets up the launch's processes."""
    processes, batch = PartialState(), args.per_device_train_batch_size
    return MixedStream(
        corpora.train, data, seed=args.seed, epochs=epochs, seq_len=seq_len, pad_id=corpora.tokenizer.pad_token_id,
        rows_per_step=batch * args.gradient_accumulation_steps, rank=processes.process_index,
        world_size=processes.num_processes, layout="global" if processes.num_processes > 1 else "rank", block=batch,
    )  # fmt: skip


def attach_stream(trainer: Any, stream: MixedStream) -> None:
    """Train `trainer` (a transformers `Trainer` or TRL `SFTTrainer`) on `stream`: it becomes the train dataset,
    its rows carry provenance that `KindCounter` (wrapped around the trainer's collator) counts and strips,
    batches are never dispatched from the main process (each process draws its own, as `layout` expects), the
    Trainer does not fast-forward on resume (the stream resumes itself) and `StreamCallback` takes care of the
    stream's epochs and checkpoints. TRL's SFTTrainer accepts only `datasets` objects at construction, so build
    it on `stream.example()` and attach the stream afterwards."""
    _check_fits(trainer, stream)
    args = trainer.args
    if args.max_steps <= 0 or args.max_steps > stream.total_steps():
        args.max_steps = stream.total_steps()
    stream.provenance = True
    counter = KindCounter(trainer.data_collator, stream.rows_per_step)
    trainer.train_dataset, trainer.data_collator = stream, counter
    args.remove_unused_columns = False  # the provenance reaches the counter, which strips it
    trainer.accelerator.dataloader_config.dispatch_batches = False
    args.ignore_data_skip = True
    # Right after the Trainer's own flow callback: at an epoch's end the eval must carry the epoch's ratio, so this
    # callback must come before any CollapseCallback's own evaluation of the same step.
    callbacks = trainer.callback_handler.callbacks
    after = next((i + 1 for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)), 0)
    callbacks.insert(after, StreamCallback(stream, counter, trainer))


def _check_fits(trainer: Any, stream: MixedStream) -> None:
    """The stream must be planned for this launch, or the rows and steps would silently not match."""
    args, processes = trainer.args, trainer.accelerator.num_processes
    problems = []
    if args.n_gpu > 1:
        problems.append(f"{args.n_gpu} GPUs in one process (DataParallel): launch one process per GPU")
    if stream.world_size != processes:
        problems.append(f"world_size: the stream was planned for {stream.world_size} processes, the launch has "
                        f"{processes}")  # fmt: skip
    if processes > 1 and stream.layout != "global":
        problems.append('layout: must be "global" with several processes (accelerate splits the stream)')
    expected = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if expected != stream.rows_per_step:
        problems.append(f"rows_per_step: the stream has {stream.rows_per_step}, the trainer takes {expected} rows "
                        "per step (per_device_train_batch_size x gradient_accumulation_steps)")  # fmt: skip
    if args.dataloader_num_workers:
        problems.append(f"dataloader_num_workers: must be 0 with the stream, got {args.dataloader_num_workers} "
                        "(the collator counts its rows by kind; a worker process would count them apart)")  # fmt: skip
    if args.auto_find_batch_size:
        problems.append("auto_find_batch_size: must be off (a smaller batch would no longer match the stream)")
    if trainer.accelerator.split_batches:
        problems.append("split_batches: must be off (each process draws its own batches of the stream)")
    if any(isinstance(c, StreamCallback) for c in trainer.callback_handler.callbacks):
        problems.append("this trainer has a stream attached already")
    if not hasattr(trainer, "_load_rng_state"):
        problems.append("this transformers' Trainer has no _load_rng_state, which an exact resume needs")
    if problems:
        raise MixerError("; ".join(problems))
