"""synthmix inside the trainers people already run (transformers' `Trainer`, TRL's `SFTTrainer`).

    from trainer.integrations import CollapseCallback, attach_stream

    trainer = SFTTrainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(CollapseCallback.from_texts(held_out_texts, tokenizer, trainer, every_steps=50))
    trainer.train()

`CollapseCallback`: the same `CollapseMonitor` as a synthmix run (same indicators, the baseline at step 0, alert
rules) evaluates at step 0, at every epoch end, every `every_steps` steps and at the last step. Its indicators go
through the trainer's own `log` (so they reach every `report_to` integration) and into `OUTPUT_DIR/metrics.jsonl`
as `eval`, `reference` and `alert` events, with `OUTPUT_DIR/report.html` rewritten after each eval. A `stop` rule
sets `control.should_training_stop`. Under several processes the main process measures and the others wait; the
values and alerts reach every process, so all log the same and stop together. The baseline is saved beside each
of the trainer's checkpoints (`checkpoint-N/synthmix_collapse.json`), so a resumed run compares with the same
step-0 values.

`attach_stream` + `StreamCallback`: the exact mix (`data_mixers.torch_dataset.MixedStream`) as the trainer's
dataset, with its epochs (the realized ratio logged, an eval and a checkpoint at each) and exact resume.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from data_mixers.errors import MixerError
from data_mixers.torch_dataset import KindCounter, MixedStream
from synthmix.files import write_text
from synthmix.schema import build
from trainer.collapse import CollapseMonitor
from trainer.config import CollapseConfig, validate_collapse
from trainer.errors import TrainerError
from trainer.evaluation import record_eval
from trainer.run_log import RunLog

T = TypeVar("T")
STATE_FILE = "synthmix_collapse.json"
"""Beside each checkpoint of the trainer: the monitor's baseline and reference, for a resumed run."""


class CollapseCallback(TrainerCallback):
    """Run synthmix's collapse monitor inside `Trainer` / `SFTTrainer`."""

    def __init__(
        self,
        held_out_ids: list[list[int]],
        tokenizer: Any,
        trainer: Any = None,
        collapse: CollapseConfig | dict[str, Any] | None = None,
    ) -> None:
        """`held_out_ids`: token ids of held-out real texts, never trained on (`from_texts` tokenizes texts);
        `trainer`: the `Trainer` whose `log` the indicators go through (without it they go only to
        metrics.jsonl); `collapse`: the `collapse` section of a synthmix config, a `CollapseConfig` or a dict
        (checked like a config file's: unknown keys are errors)."""
        if isinstance(collapse, CollapseConfig):
            config = collapse
        else:
            config = build(CollapseConfig, collapse or {}, "collapse")
        validate_collapse(config)
        self.config = config
        self.monitor = CollapseMonitor(config, tokenizer, held_out_ids)
        self.trainer = trainer
        self._log: RunLog | None = None
        self._evaluated_step: int | None = None

    @classmethod
    def from_texts(cls, texts: list[str], tokenizer: Any, trainer: Any = None, **collapse: Any) -> CollapseCallback:
        """Held-out texts tokenized as training text is (the tokenizer's special tokens, then an eos);
        `collapse` keys as keyword arguments (`every_steps=50`, `rules=[...]`, `num_prompts=32`, ...)."""
        ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        return cls(ids, tokenizer, trainer, collapse)

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_text(folder / STATE_FILE, json.dumps(self.monitor.state_dict()))

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        """A resumed trainer starts past step 0: the baseline comes back from the checkpoint it resumed."""
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FILE
        if path.is_file():
            self.monitor.load_state_dict(json.loads(path.read_text()))
        else:
            warnings.warn(
                f"{path}: missing, so this resumed run measures a new collapse baseline at step {state.global_step}",
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------------ events
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        trainer = self.trainer
        if trainer is not None and (getattr(trainer, "is_fsdp_enabled", False) or trainer.is_deepspeed_enabled):
            raise TrainerError(
                "CollapseCallback measures on the main process only, and sharded weights (FSDP, DeepSpeed) need "
                "every process in each forward: train unsharded, or with `synthmix train` (which shards with FSDP2)"
            )
        self._log = RunLog(Path(args.output_dir), enabled=state.is_world_process_zero)
        if state.global_step > 0 and state.is_world_process_zero:
            self._restore(args, state)
        # The main process decides (only it reads the checkpoint), so every process takes part in the same evals.
        if _from_main_process(self.monitor.baseline is None):
            self.evaluate(args, state, control, kw["model"])
        else:
            self._evaluated_step = state.global_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        every = self.config.every_steps
        if every and state.global_step % every == 0:
            self.evaluate(args, state, control, kw["model"])

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.evaluate(args, state, control, kw["model"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.evaluate(args, state, control, kw["model"])  # max_steps inside an epoch: the last step too
        if self._log is not None:
            self._log.close()

    # ------------------------------------------------------------------------------------------ the eval
    def evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any, **fields: Any
    ) -> None:
        """Evaluate at this step unless it was evaluated already: the main process measures and logs (`fields`
        go into its eval event), the others wait for its values and alerts (collective: call on every process)."""
        if self._evaluated_step == state.global_step:
            return
        self._evaluated_step = state.global_step
        measured: tuple[dict[str, float], list[dict[str, Any]]] | None = None
        if state.is_world_process_zero:
            assert self._log is not None
            epoch = round(state.epoch or 0, 4)
            measured = record_eval(self.monitor, self._log, model, state.global_step, epoch, **fields)
            if self.config.report:
                from trainer.report import write_report

                write_report([Path(args.output_dir)])
        values, alerts = _from_main_process(measured)
        if self.trainer is not None:  # through the trainer's logger: every report_to integration sees them
            # On every process, as the Trainer itself logs. `log` also clears `should_log`, which decides whether
            # this step's own loss log runs, and that log gathers from every process: keep the flag as it was.
            should_log = control.should_log
            self.trainer.log({f"collapse/{k}": v for k, v in values.items()})
            control.should_log = should_log
        if any(alert["action"] == "stop" for alert in alerts):
            control.should_training_stop = True


def _from_main_process(value: T) -> T:
    """The main process's `value` on every process (the others wait here for the main process's measurement)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


STREAM_STATE_FILE = "synthmix_stream.json"
"""Beside each `Trainer` checkpoint: the stream's state at that checkpoint's step, and the epoch's counts so far."""


# ---------------------------------------------------------------------------------------------- the mix as a dataset
class StreamCallback(TrainerCallback):
    """The stream's epochs inside a `Trainer`: checkpoints it with the Trainer's checkpoints and resumes it
    exactly, and at the step that ends each of its epochs logs the epoch's realized ratio, evaluates (every
    `CollapseCallback` of the trainer) and checkpoints, as a synthmix run does. The Trainer sees the whole
    stream as one epoch of its own, so its own epoch end comes only at the last step.

    transformers' Trainer saves no dataloader state and, on resume, fast-forwards by re-reading every batch it
    trained on. This callback writes `checkpoint-N/synthmix_stream.json` (the stream after N steps) and, when the
    run resumes with `ignore_data_skip=True`, loads it before the first batch is drawn: the stream continues at
    the next row, nothing rebuilt or replayed."""

    def __init__(self, stream: MixedStream, counter: KindCounter, trainer: Any) -> None:
        self.stream, self.counter, self.trainer = stream, counter, trainer
        self.epoch_ends = stream.epoch_end_steps()
        self._carried = np.zeros(4, np.int64)
        """The epoch's counts over every process before this run resumed (from the checkpoint)."""
        self._log: RunLog | None = None
        self._rng_from: Path | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._log = RunLog(Path(args.output_dir), enabled=state.is_world_process_zero)
        if state.global_step == 0:
            return
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STREAM_STATE_FILE
        if not path.is_file():
            raise MixerError(f"{path}: missing, so the stream cannot resume at step {state.global_step}")
        saved = json.loads(path.read_text())
        self.stream.load_state_dict(saved["stream"])
        self._carried = np.asarray(saved["epoch_counts"], np.int64)
        self._rng_from = path.parent

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # With ignore_data_skip and a resume inside its epoch (always: the stream is one Trainer epoch) the Trainer
        # does not restore the RNG, and dropout would differ from the uninterrupted run's. Restored here, after the
        # dataloader's iterator drew its seed from it and before the first forward, as the Trainer does it.
        if self._rng_from is not None:
            self.trainer._load_rng_state(str(self._rng_from))
            self._rng_from = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = state.global_step
        if step not in self.epoch_ends:
            return
        epoch = self.epoch_ends.index(step) + 1
        counts = self._epoch_counts(step)
        self.counter.forget(step)
        self._carried = np.zeros(4, np.int64)
        settings = self.stream.epoch_settings(epoch)
        ratio = {"realized_synthetic_ratio": _synthetic_share(counts, settings["unit"]),
                 "target_synthetic_ratio": settings["target_ratio"]}  # fmt: skip
        assert self._log is not None
        self._log.event("epoch", step=step, epoch=epoch, **ratio, unit=settings["unit"],
                        **dict(zip(COUNT_NAMES, counts.tolist())), packing=settings["packing"])  # fmt: skip
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, CollapseCallback):
                callback.evaluate(args, state, control, kw["model"], **ratio)
        control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        counts = self._epoch_counts(state.global_step)  # collective: every process saves
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            stream = self.stream.state_at(state.global_step * self.stream.rows_per_step)
            write_text(folder / STREAM_STATE_FILE, json.dumps({"stream": stream, "epoch_counts": counts.tolist()}))

    def _epoch_counts(self, step: int) -> np.ndarray:
        """The epoch under way's counts (`COUNT_NAMES`) over every process, through `step` (collective)."""
        accelerator = self.trainer.accelerator
        local = torch.as_tensor(self.counter.counted(step), device=accelerator.device)
        return accelerator.reduce(local, "sum").cpu().numpy() + self._carried


COUNT_NAMES = ("tokens_real", "tokens_synthetic", "examples_real", "examples_synthetic")


def _synthetic_share(counts: np.ndarray, unit: str) -> float | None:
    real, synthetic = counts[:2] if unit == "tokens" else counts[2:]
    return float(synthetic / (real + synthetic)) if real + synthetic else None


def attach_stream(trainer: Any, stream: MixedStream) -> None:
    """Train `trainer` (a transformers `Trainer` or TRL `SFTTrainer`) on `stream`: it becomes the train dataset,
    its rows carry provenance that `KindCounter` (wrapped around the trainer's collator) counts and strips,
    batches are never dispatched from the main process (each process draws its own, as `layout` expects), the
    Trainer does not fast-forward on resume (the stream resumes itself) and `StreamCallback` takes care of the
    stream's epochs and checkpoints. TRL's SFTTrainer accepts only `datasets` objects at construction, so build
    it on `stream.example()` and attach the stream afterwards."""
    args = trainer.args
    steps = stream.total_steps()
    if args.max_steps <= 0 or args.max_steps > steps:
        args.max_steps = steps
    expected = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if expected != stream.rows_per_step:
        raise MixerError(f"rows_per_step: the stream has {stream.rows_per_step}, the trainer takes {expected} rows "
                         "per step (per_device_train_batch_size x gradient_accumulation_steps)")  # fmt: skip
    if args.dataloader_num_workers:
        raise MixerError(f"dataloader_num_workers: must be 0 with the stream, got {args.dataloader_num_workers} "
                         "(the collator counts its rows by kind; a worker process would count them apart)")  # fmt: skip
    stream.provenance = True
    counter = KindCounter(trainer.data_collator, stream.rows_per_step)
    trainer.train_dataset, trainer.data_collator = stream, counter
    args.remove_unused_columns = False  # the provenance reaches the counter, which strips it
    trainer.accelerator.dataloader_config.dispatch_batches = False
    args.ignore_data_skip = True
    trainer.add_callback(StreamCallback(stream, counter, trainer))
