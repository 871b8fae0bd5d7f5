"""The collapse hook of a synthmix run as a `transformers.TrainerCallback`, for `Trainer` and TRL's `SFTTrainer`.

The same `CollapseMonitor` as a synthmix run (same indicators, the baseline at step 0, alert rules) evaluates at
step 0, at every epoch end, every `every_steps` steps and at the last step. Its indicators go through the
trainer's own `log` (so they reach every `report_to` integration) and into `OUTPUT_DIR/metrics.jsonl` as `eval`,
`reference` and `alert` events, and into `OUTPUT_DIR/report.html` (written at the end, and during training at
most every 5 minutes: reporting/live.py). A `stop` rule sets `control.should_training_stop`. Under several
processes the main process measures and the others wait; the values and alerts reach every process, so all log
the same and stop together. The baseline is saved beside each
of the trainer's checkpoints (`checkpoint-N/synthmix_collapse.json`), so a resumed run compares with the same
step-0 values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from synthmix.data_mixers.corpus import HeldOutExample
from synthmix.data_mixers.encoding import encode_chat, last_span_starts
from synthmix.errors import UserError
from synthmix.files import write_text
from synthmix.schema import build
from synthmix.trainer.collapse.monitor import CollapseMonitor
from synthmix.trainer.collapse.recording import record_eval
from synthmix.trainer.config import CollapseConfig, validate_collapse
from synthmix.trainer.distributed.accelerator import on_main_process
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.integrations.checkpoint_files import checkpoint_folder, restore_events, save_events
from synthmix.trainer.reporting.events import EventLog
from synthmix.trainer.reporting.live import LiveReport
from synthmix.trainer.reporting.samples import drop_samples_after, markdown_table, read_samples, samples_path, table

STATE_FILE = "synthmix_collapse.json"
"""Beside each checkpoint of the trainer: the monitor's baseline and reference, for a resumed run."""


class CollapseCallback(TrainerCallback):
    """Run synthmix's collapse monitor inside `Trainer` / `SFTTrainer`."""

    def __init__(
        self,
        held_out: Sequence[HeldOutExample | Sequence[int]],
        tokenizer: Any,
        trainer: Any = None,
        collapse: CollapseConfig | dict[str, Any] | None = None,
    ) -> None:
        """`held_out`: held-out real examples, never trained on (`synthmix sft` passes its store's; plain token
        ids are texts, which `from_texts` tokenizes);
        `trainer`: the `Trainer` whose `log` the indicators go through (without it they go only to
        metrics.jsonl); `collapse`: the `collapse` section of a synthmix config, a `CollapseConfig` or a dict
        (checked like a config file's: unknown keys are errors)."""
        if isinstance(collapse, CollapseConfig):
            config = collapse
        else:
            config = build(CollapseConfig, collapse or {}, "collapse")
        validate_collapse(config)
        self.config = config
        self.monitor = CollapseMonitor(config, tokenizer, held_out)
        self.trainer = trainer
        self.epoch_of: Callable[[int], int] | None = None
        """The epoch a step belongs to, when a `StreamCallback` knows better than the Trainer (for which the
        whole stream is one epoch); otherwise the Trainer's fractional epoch is logged."""
        self._log: EventLog | None = None
        self._report: LiveReport | None = None
        self._evaluated_step: int | None = None
        self._saved_step: int | None = None
        """The step this run last checkpointed (an eval at that step after the save updates its events copy)."""

    @classmethod
    def from_texts(cls, texts: list[str], tokenizer: Any, trainer: Any = None, **collapse: Any) -> CollapseCallback:
        """Held-out texts tokenized as training text is (the tokenizer's special tokens, then an eos);
        `collapse` keys as keyword arguments (`every_steps=50`, `rules=[...]`, `num_prompts=32`, ...)."""
        ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        return cls(ids, tokenizer, trainer, collapse)

    @classmethod
    def from_chats(
        cls, chats: list[list[dict[str, str]]], tokenizer: Any, trainer: Any = None, assistant_only_loss: bool = True,
        **collapse: Any,
    ) -> CollapseCallback:  # fmt: skip
        """Held-out conversations (lists of `{role, content}`), rendered with the tokenizer's chat template as
        training chats are: the hook prompts with each up to its last user turn and scores its reply; held-out
        perplexity counts the assistant's tokens only when `assistant_only_loss` (as your training's loss does)."""
        examples = []
        for i, chat in enumerate(chats):
            ids, mask = encode_chat(tokenizer, chat)
            reply_start = int(last_span_starts([mask])[0])
            examples.append(HeldOutExample(ids, mask if assistant_only_loss else None, reply_start, "chats", i))
        return cls(examples, tokenizer, trainer, collapse)

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        def write() -> None:
            folder = checkpoint_folder(args, state.global_step)
            write_text(folder / STATE_FILE, json.dumps(self.monitor.state_dict()))
            save_events(args, state)

        on_main_process(PartialState(), write)  # a full disk there is one error on every process, not a hang
        self._saved_step = state.global_step

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        """A resumed trainer starts past step 0: the baseline comes back from the checkpoint it resumed."""
        restore_events(args, state)
        drop_samples_after(Path(args.output_dir), state.global_step)
        path = checkpoint_folder(args, state.global_step) / STATE_FILE
        if path.is_file():
            try:
                self.monitor.load_state_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError) as err:
                raise TrainerError(f"{path}: unreadable ({err}); resume from another checkpoint") from None
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
        self._log = EventLog(Path(args.output_dir), enabled=state.is_world_process_zero)
        self._report = LiveReport(Path(args.output_dir), enabled=state.is_world_process_zero and self.config.report)
        if state.global_step > 0:
            on_main_process(PartialState(), lambda: self._restore(args, state))
        # The main process decides (only it reads the checkpoint), so every process takes part in the same evals.
        if broadcast_object_list([self.monitor.baseline is None])[0]:
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
        if self._report is not None:
            self._report.write()
        if self._log is not None:
            self._log.close()

    # ------------------------------------------------------------------------------------------ the eval
    def evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any, **fields: Any
    ) -> None:
        """Evaluate at this step unless it was evaluated already: the main process measures and logs (`fields`
        go into its eval event), the others wait for its values and alerts (collective: call on every process)."""
        step = state.global_step
        if self._evaluated_step == step:
            return
        self._evaluated_step = step
        measured: tuple[dict[str, float], list[dict[str, Any]]] | None = None
        problem: UserError | None = None
        if state.is_world_process_zero:
            try:
                measured = self._measure(args, state, model, fields)
            except UserError as err:  # a full disk: raised on every process below, so none waits for the others
                problem = err
        measured, problem = broadcast_object_list([(measured, problem)])[0]  # the others wait here for the main
        if problem is not None:
            raise problem
        values, alerts = measured
        if self.trainer is not None:
            self._log_through_trainer({f"collapse/{k}": v for k, v in values.items()}, control)
        if any(alert["action"] == "stop" for alert in alerts):
            control.should_training_stop = True

    def _measure(self, args: TrainingArguments, state: TrainerState, model: Any, fields: dict[str, Any]) -> Any:
        """On the main process: measure, log the events, rewrite the report; (values, alerts)."""
        assert self._log is not None
        step = state.global_step
        epoch = self.epoch_of(step) if self.epoch_of is not None else round(state.epoch or 0, 4)
        measured = record_eval(self.monitor, self._log, model, step, epoch, **fields)
        if self.trainer is not None:
            _samples_to_report_to(self.trainer, samples_path(Path(args.output_dir), step), step)
        if self._saved_step == step:  # the Trainer saved this step before its epoch or train end evaluated it
            save_events(args, state)
        if self._report is not None:
            self._report.after_eval()
        return measured

    def _log_through_trainer(self, values: dict[str, float], control: TrainerControl) -> None:
        """Through the trainer's logger, so every `report_to` integration sees them; on every process, as the
        Trainer itself logs. `Trainer.log` of the base class: TRL's `SFTTrainer.log` would also hand over (and
        clear) the step metrics it gathers for its own next loss log."""
        # `log` clears `should_log`, which decides whether this step's own loss log runs, and that log gathers
        # from every process: keep the flag as it was.
        should_log = control.should_log
        Trainer.log(self.trainer, values)
        control.should_log = should_log


def _samples_to_report_to(trainer: Any, path: Path, step: int) -> None:
    """One eval's samples to the trainer's `report_to` integrations that take them: a W&B table, an MLflow
    artifact, TensorBoard text (the others have the file)."""
    columns, rows = table(read_samples(path))
    for callback in trainer.callback_handler.callbacks:
        kind = type(callback).__name__
        if kind == "WandbCallback" and callback._initialized:
            callback._wandb.log({"collapse/samples": callback._wandb.Table(columns=columns, data=rows)})
        elif kind == "MLflowCallback" and callback._initialized:
            callback._ml_flow.log_artifact(str(path), "samples")
        elif kind == "TensorBoardCallback" and callback.tb_writer is not None:
            callback.tb_writer.add_text("collapse/samples", markdown_table(columns, rows), step)
