"""The training loop: one flat loop over optimizer steps, read top to bottom in `fit`.

`train` is the whole run: `setup` (`runtime/setup.py`: data, model, optimizer, schedule, then the start or the
resume), `fit`, and closing the run. Each turn of `fit` ends the epoch when its steps are done (its realized
ratio, the collapse hook and its actions, a checkpoint), stops when the budget, a stop rule or a preemption
signal says so, and otherwise trains one step: pack rows, forward, token-level loss (normalised by the global
number of loss tokens, so gradient accumulation and several processes give the same update as one big batch),
backward, clip, step, log; then the collapse hook and a checkpoint when each is due. When the hook runs and what
its alerts do is `runtime/evaluation.py`; what a run holds is `runtime/state.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from synthmix.data_mixers.config import KINDS
from synthmix.files import atomic_folder, write_text
from synthmix.trainer.config import RunConfig
from synthmix.trainer.distributed.accelerator import on_main_process
from synthmix.trainer.distributed.sharding import full_value, gradient_sync
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.attention import attention_inputs
from synthmix.trainer.modeling.loss import model_kwargs, per_token_nll
from synthmix.trainer.modeling.model import merged_copy
from synthmix.trainer.modeling.packing import PackedBatch, pack_rows
from synthmix.trainer.reporting.cards import CARD, model_card
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.evaluation import (
    apply_actions,
    eval_due,
    evaluate,
    realized_ratio,
)
from synthmix.trainer.runtime.preemption import Preempted
from synthmix.trainer.runtime.schedule import rows_per_step
from synthmix.trainer.runtime.setup import setup
from synthmix.trainer.runtime.state import Run
from synthmix.trainer.runtime.weights import TrainableWeights, full_model_state


def train(config: RunConfig, resume: str | None = None) -> Path:
    """Train as configured (continuing from a checkpoint when `resume` is `latest` or a path)."""
    run = setup(config, resume)
    try:
        fit(run)
    except BaseException:
        run.close(warn=False)  # the error on its way out is the message; a failed final flush is not news
        raise
    run.close()
    return run.output_dir


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(run: Run) -> None:
    """Write checkpoints/step-N with every part (every rank's RNG and stream position included)."""
    path = run.checkpointer.save(
        run.progress.step, run.checkpoint_parts(), run.checkpoint_meta(), files={METRICS: run.log.path}
    )
    run.log.event("checkpoint", step=run.progress.step, epoch=run.progress.epoch, path=str(path))
    run.checkpointed_step = run.progress.step


# ---------------------------------------------------------------------------------------------- the loop
def fit(run: Run) -> None:
    """Train from `run.progress` to the end, checkpointing as configured; on a preemption signal, stop after
    the step under way with a checkpoint and raise `Preempted`."""
    config, progress, accelerator = run.config, run.progress, run.accelerator
    bar = tqdm(
        total=run.total_steps,
        initial=progress.step,
        desc="train",
        dynamic_ncols=True,
        disable=not (accelerator.is_main_process and config.train.progress),
    )
    with run.signals:
        while True:
            # A preempted run ends its epoch (the hook, the epoch's checkpoint) after resuming.
            if progress.epoch_complete() and not run.preempted:
                end_epoch(run)
            if not run.more_steps() or run.stop_reason is not None or run.preempted:
                break
            if progress.step_in_epoch == 0:
                run.mixer.set_epoch(progress.epoch)
            stats = train_step(run)
            progress.record_step(stats, rows_per_step(config) * config.train.seq_len * accelerator.num_processes)
            if progress.step % config.train.log_every_steps == 0:
                run.log.event("train", step=progress.step, epoch=progress.epoch, **stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", epoch=progress.epoch)
            if eval_due(run):  # before the checkpoint of this step, which then holds its effects
                apply_actions(run, evaluate(run, realized_ratio(run)))
            if run.checkpointer.due(progress.step):
                save_checkpoint(run)
        bar.close()
        if config.collapse.enabled and progress.evaluated_step != progress.step and not run.preempted:
            # train.max_steps ended the run mid-epoch: its final state still gets measured (a stop rule fires
            # at an eval, so that step has one). No action is left to take: the run ends here.
            evaluate(run, realized_ratio(run))
        if run.checkpointed_step != progress.step:  # stopped between checkpoints: keep the run continuable
            save_checkpoint(run)
    if run.preempted:
        _end_preempted(run)
    finish(run)


def _end_preempted(run: Run) -> None:
    # Which signal: this process's, or another's (only some processes may have received one).
    names = [name for name in gather_object([run.signals.received]) if name]
    signal_name = names[0] if names else "a preemption signal"
    checkpoint = run.output_dir / "checkpoints" / f"step-{run.progress.step}"
    run.log.event(
        "end",
        step=run.progress.step,
        epoch=run.progress.epoch,
        status="preempted",
        reason=f"{signal_name} received; resume with --resume latest",
        checkpoint=str(checkpoint),
    )
    run.live_report.write()  # the page of where the run stopped, before the machine goes
    raise Preempted(signal_name, run.progress.step, checkpoint)


def train_step(run: Run) -> dict[str, Any]:
    """One optimizer step over `gradient_accumulation_steps` micro-batches; returns the step's metrics."""
    config, accelerator, model = run.config, run.accelerator, run.model
    train = config.train
    started = time.perf_counter()
    micro_batches = [_next_batch(run) for _ in range(train.gradient_accumulation_steps)]
    local_count = torch.tensor(float(sum(b.loss_tokens for b in micro_batches)), device=accelerator.device)
    global_count = accelerator.reduce(local_count, reduction="sum").clamp(min=1.0)
    sums = torch.zeros(4 * len(KINDS), device=accelerator.device, dtype=torch.float64)
    for i, batch in enumerate(micro_batches):
        batch, attention = attention_inputs(run.attention, batch.to(accelerator.device), run.compute_dtype)
        last = i == len(micro_batches) - 1
        with gradient_sync(accelerator, model, run.sharding is not None, enabled=last), accelerator.autocast():
            output = model(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                use_cache=False,
                **attention,
                **model_kwargs(run.loss),
            )
            nll = per_token_nll(run.loss, output, model, batch.labels)
            # DDP and FSDP average gradients over processes: scale by their number to get the global token mean.
            loss = nll.sum() / global_count * accelerator.num_processes
        accelerator.backward(loss)
        sums += batch.sums_by_kind(nll.detach())
    # The preemption flag rides on the step's one reduction, so every process learns of a signal at once.
    stop = torch.tensor([float(run.signals.requested)], device=accelerator.device, dtype=torch.float64)
    reduced = accelerator.reduce(torch.cat([sums, stop]), reduction="sum")
    sums, run.preempted = reduced[:-1], bool(reduced[-1] > 0)
    if not torch.isfinite(sums).all():
        kept = (
            f"the last good checkpoint is {run.output_dir / 'checkpoints' / f'step-{run.checkpointed_step}'}"
            if run.checkpointed_step is not None
            else "no checkpoint was written yet"
        )
        raise TrainerError(
            f"the loss is not finite at step {run.progress.step + 1}; stopping ({kept}; lower train.learning_rate?)"
        )
    grad_norm = None
    if train.max_grad_norm is not None:
        grad_norm = float(full_value(accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)))
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return _step_stats(sums, lr, grad_norm, time.perf_counter() - started)


def _next_batch(run: Run) -> PackedBatch:
    rows = [run.mixer.next_row() for _ in range(run.config.train.per_device_train_batch_size)]
    return pack_rows(rows, run.config.train.seq_len, run.tokenizer.pad_token_id)


def _step_stats(sums: torch.Tensor, lr: float, grad_norm: float | None, seconds: float) -> dict[str, Any]:
    nll_real, nll_syn, n_real, n_syn, tok_real, tok_syn, ex_real, ex_syn = sums.tolist()
    loss_tokens = n_real + n_syn
    return {
        "loss": (nll_real + nll_syn) / loss_tokens if loss_tokens else float("nan"),
        "loss_real": nll_real / n_real if n_real else None,
        "loss_synthetic": nll_syn / n_syn if n_syn else None,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_real": int(tok_real),
        "tokens_synthetic": int(tok_syn),
        "examples_real": int(ex_real),
        "examples_synthetic": int(ex_syn),
        "tokens_per_s": (tok_real + tok_syn) / seconds,
    }


# ---------------------------------------------------------------------------------------------- epoch ends
def end_epoch(run: Run) -> None:
    """Log the epoch's realized ratio, run the collapse hook and its actions, checkpoint, next epoch."""
    progress = run.progress
    tokens, examples = progress.epoch_tokens, progress.epoch_examples
    realized = realized_ratio(run)
    run.log.event(
        "epoch",
        step=progress.step,
        epoch=progress.epoch,
        realized_synthetic_ratio=realized,
        target_synthetic_ratio=run.mixer.target_ratio(progress.epoch),
        unit=run.config.data.unit,
        tokens_real=tokens["real"],
        tokens_synthetic=tokens["synthetic"],
        examples_real=examples["real"],
        examples_synthetic=examples["synthetic"],
        padding_efficiency=(tokens["real"] + tokens["synthetic"]) / max(progress.epoch_capacity, 1),
        packing=run.mixer.settings(progress.epoch).packing,
        overflow=run.mixer.plan(progress.epoch).overflow,
    )
    alerts = evaluate(run, realized) if run.config.collapse.enabled else []
    progress.next_epoch()
    apply_actions(run, alerts)
    save_checkpoint(run)


def finish(run: Run) -> None:
    """Save the adapter (peft format) or the full model, optionally the merged model, and log the end."""
    weights = TrainableWeights(run.unwrapped)
    state = weights.state_dict()  # collective: every process takes part in gathering the weights
    merge = run.config.train.merge_adapter and weights.folder_name == "adapter"
    whole = full_model_state(run.unwrapped) if merge else None  # collective too
    on_main_process(run.accelerator, lambda: _write_outputs(run, weights, state, whole))
    run.accelerator.wait_for_everyone()


def _write_outputs(
    run: Run, weights: TrainableWeights, state: dict[str, Any], whole: dict[str, torch.Tensor] | None
) -> None:
    folder = run.output_dir / weights.folder_name
    events = read_events(run.output_dir / METRICS)  # what the model card reports: what the run logged
    with atomic_folder(folder) as tmp:
        weights.save(tmp, state)
        write_text(tmp / CARD, model_card(events, weights.folder_name))
    if whole is not None:
        with atomic_folder(run.output_dir / "merged") as tmp:
            merged_copy(run.unwrapped, whole, run.config.model.trust_remote_code).save_pretrained(str(tmp))
            run.tokenizer.save_pretrained(str(tmp))
            write_text(tmp / CARD, model_card(events, "merged"))
    run.log.event(
        "end",
        step=run.progress.step,
        epoch=run.progress.epoch - 1,
        status="stopped" if run.stop_reason else "finished",
        reason=run.stop_reason,
        output=str(folder),
    )
    run.live_report.write()
