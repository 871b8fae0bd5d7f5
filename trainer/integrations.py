"""synthmix inside the trainers people already run: the collapse hook as a `transformers.TrainerCallback`.

    from trainer.integrations import CollapseCallback

    trainer = SFTTrainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(CollapseCallback.from_texts(held_out_texts, tokenizer, trainer, every_steps=50))
    trainer.train()

The same `CollapseMonitor` as a synthmix run (same indicators, the baseline at step 0, alert rules) evaluates
at step 0, at every epoch end, every `every_steps` steps and at the last step. Its indicators go through the
trainer's own `log` (so they reach every `report_to` integration) and into `OUTPUT_DIR/metrics.jsonl` as `eval`,
`reference` and `alert` events, with `OUTPUT_DIR/report.html` rewritten after each eval. A `stop` rule sets
`control.should_training_stop`. Under several processes the main process measures and the others wait; the
alerts reach every process, so all stop together. The baseline is saved beside each of the trainer's
checkpoints (`checkpoint-N/synthmix_collapse.json`), so a resumed run compares with the same step-0 values.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from data_mixers.errors import MixerError
from data_mixers.torch_dataset import MixedStream
from synthmix.files import write_text
from synthmix.schema import build
from trainer.collapse import CollapseMonitor
from trainer.config import CollapseConfig, validate_collapse
from trainer.errors import TrainerError
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
            self._evaluate(args, state, control, kw["model"])
        else:
            self._evaluated_step = state.global_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        every = self.config.every_steps
        if every and state.global_step % every == 0:
            self._evaluate(args, state, control, kw["model"])

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._evaluate(args, state, control, kw["model"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._evaluate(args, state, control, kw["model"])  # max_steps inside an epoch: the last step too
        if self._log is not None:
            self._log.close()

    # ------------------------------------------------------------------------------------------ the eval
    def _evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any) -> None:
        if self._evaluated_step == state.global_step:
            return
        self._evaluated_step = state.global_step
        alerts: list[dict[str, Any]] = []
        if state.is_world_process_zero:
            alerts = self._measure(args, state, model)
        alerts = _from_main_process(alerts)  # the others waited here
        if any(alert["action"] == "stop" for alert in alerts):
            control.should_training_stop = True

    def _measure(self, args: TrainingArguments, state: TrainerState, model: Any) -> list[dict[str, Any]]:
        assert self._log is not None
        monitor, step = self.monitor, state.global_step
        started = time.perf_counter()
        values = monitor.measure(model)
        epoch = round(state.epoch or 0, 4)
        alerts: list[dict[str, Any]] = []
        if monitor.baseline is None:
            monitor.baseline = values
            self._log.event("reference", step=0, **monitor.reference)
        else:
            alerts = monitor.alerts(values, step, epoch)
        sampling = dataclasses.asdict(self.config.sampling)
        self._log.event("eval", step=step, epoch=epoch, **values, sampling=sampling,
                        seconds=round(time.perf_counter() - started, 3))  # fmt: skip
        for alert in alerts:
            self._log.event("alert", **alert)
            print(f"collapse alert: {alert['message']}", flush=True)
        if self.trainer is not None:  # through the trainer's logger: every report_to integration sees them
            self.trainer.log({f"collapse/{k}": v for k, v in values.items()})
        if self.config.report:
            from trainer.report import write_report

            write_report([Path(args.output_dir)])
        return alerts


def _from_main_process(value: T) -> T:
    """The main process's `value` on every process (the others wait here for the main process's measurement)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


STREAM_STATE_FILE = "synthmix_stream.json"
"""Beside each `Trainer` checkpoint: the stream's state at that checkpoint's step."""


# ---------------------------------------------------------------------------------------------- the mix as a dataset
class StreamCallback(TrainerCallback):
    """Checkpoints a `MixedStream` with `Trainer`'s own checkpoints and resumes it exactly.

    transformers' Trainer saves no dataloader state and, on resume, fast-forwards by re-reading every batch it
    trained on. This callback writes `checkpoint-N/synthmix_stream.json` (the stream after N steps) and, when the
    run resumes with `ignore_data_skip=True`, loads it before the first batch is drawn: the stream continues at
    the next row, nothing rebuilt or replayed. Without `ignore_data_skip` the Trainer's own fast-forward runs
    instead (still exact, but it rebuilds every skipped row)."""

    def __init__(self, stream: MixedStream) -> None:
        self.stream = stream

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_text(folder / STREAM_STATE_FILE, json.dumps(self.stream.state_at(self.rows_at(state.global_step))))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == 0 or not args.ignore_data_skip:
            return
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STREAM_STATE_FILE
        if not path.is_file():
            raise MixerError(f"{path}: missing, so the stream cannot resume at step {state.global_step}; resume "
                             "without ignore_data_skip to let the Trainer fast-forward")  # fmt: skip
        self.stream.load_state_dict(json.loads(path.read_text()))

    def rows_at(self, step: int) -> int:
        """Rows per rank the stream has given after optimizer step `step`."""
        return step * self.stream.rows_per_step


def attach_stream(trainer: Any, stream: MixedStream) -> None:
    """Train `trainer` (a transformers `Trainer` or TRL `SFTTrainer`) on `stream`: it becomes the train dataset,
    batches are never dispatched from the main process (each process draws its own, as `layout` expects), the
    Trainer does not fast-forward on resume (the stream resumes itself) and `StreamCallback` checkpoints it.
    TRL's SFTTrainer accepts only `datasets` objects at construction, so build it on `stream.example()` and
    attach the stream afterwards."""
    args = trainer.args
    steps = stream.total_steps()
    if args.max_steps <= 0 or args.max_steps > steps:
        args.max_steps = steps
    expected = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if expected != stream.rows_per_step:
        raise MixerError(f"rows_per_step: the stream has {stream.rows_per_step}, the trainer takes {expected} rows "
                         "per step (per_device_train_batch_size x gradient_accumulation_steps)")  # fmt: skip
    trainer.train_dataset = stream
    trainer.accelerator.dataloader_config.dispatch_batches = False
    args.ignore_data_skip = True
    trainer.add_callback(StreamCallback(stream))
