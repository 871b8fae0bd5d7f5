"""The training loop: one explicit Accelerate loop over the mixer's packed stream.

Read top to bottom: set-up (data, model, LoRA, optimizer, schedule), resume, then per step: pack rows,
forward, token-level loss (normalised by the global number of loss tokens, so gradient accumulation and
several processes give the same update as one big batch), backward, clip, step, log; at epoch ends: the
epoch's realized ratio, the collapse hook and its actions (when the hook runs and what its alerts do:
`trainer.evaluation`), and a checkpoint. What a run holds is `trainer.run_state`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from synthmix.data_mixers.config import KINDS
from synthmix.data_mixers.corpus import SourceReport, build_corpora
from synthmix.data_mixers.mixer import Mixer
from synthmix.files import atomic_folder, write_text
from synthmix.schema import to_dict
from synthmix.trainer.attention import attention_inputs, choose_attention
from synthmix.trainer.cards import CARD, model_card
from synthmix.trainer.checkpoint import JSON, Checkpointer, Part, RngState
from synthmix.trainer.collapse import CollapseMonitor
from synthmix.trainer.config import RunConfig, run_tokenizer, tokenizer_origin, validate
from synthmix.trainer.distributed import (
    autocast_dtype,
    compute_dtype,
    describe,
    first_then_others,
    make_accelerator,
    on_main_process,
)
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.evaluation import (
    apply_actions,
    eval_due,
    evaluate,
    realized_ratio,
    replan_steps,
    write_run_report,
)
from synthmix.trainer.loss import choose_loss, model_kwargs, per_token_nll
from synthmix.trainer.model import add_lora, build_model, check_positions, merged_copy, resolve_dtype
from synthmix.trainer.packing import PackedBatch, pack_rows
from synthmix.trainer.preemption import Preempted
from synthmix.trainer.run_log import METRICS, RunLog, claim_run_folder, read_events
from synthmix.trainer.run_state import Progress, Run
from synthmix.trainer.schedule import apply_hyperparameters, lr_factor, rows_per_step, steps_in_epoch
from synthmix.trainer.sharding import Sharding, full_value, gradient_sync, shard, sharding_for_launch
from synthmix.trainer.weights import OptimizerState, TrainableWeights, WeightsCodec, full_model_state


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


# ---------------------------------------------------------------------------------------------- set-up
def setup(config: RunConfig, resume: str | None) -> Run:
    """Build data, model, optimizer and schedule; restore a checkpoint when resuming."""
    validate(config)  # again: a job (the demo, the recursive loop) may have changed the config after loading
    sharding = sharding_for_launch(config.train.sharding)  # before the Accelerator: it clears accelerate's FSDP
    if sharding is not None and config.model.quantization.bits is not None:
        raise TrainerError("FSDP cannot shard a bitsandbytes-quantized base (model.quantization.bits); use DDP")
    accelerator = make_accelerator(config.train.mixed_precision, config.train.report_to, Path(config.output_dir))
    output_dir = Path(config.output_dir)
    checkpointer = Checkpointer(output_dir / "checkpoints", accelerator, config.checkpoint.keep_last)
    claimed: list[IO[str]] = []  # the main process's lock on the run folder, held until the run is closed
    on_main_process(accelerator, lambda: claimed.append(claim_run_folder(output_dir, resume, checkpointer.root)))
    try:
        return _build(config, resume, accelerator, checkpointer, sharding, claimed[0] if claimed else None)
    except BaseException:
        if claimed:
            claimed[0].close()
        raise


def _build(
    config: RunConfig,
    resume: str | None,
    accelerator: Accelerator,
    checkpointer: Checkpointer,
    sharding: Sharding | None,
    folder_lock: IO[str] | None,
) -> Run:
    output_dir = Path(config.output_dir)
    set_seed(config.seed)
    # One process builds the store, the others wait and map it (one per node when the cache is node-local).
    corpora = first_then_others(
        accelerator,
        lambda: build_corpora(
            config.data,
            run_tokenizer(config),
            progress=accelerator.is_main_process and config.train.progress,
            base_model=config.model.name,
        ),
        first=accelerator.is_main_process if config.data.cache_shared else accelerator.is_local_main_process,
    )
    dtype = resolve_dtype(config.model, accelerator.device.type == "cuda")
    attention = choose_attention(config.model.attn_implementation, accelerator.device)
    base = build_model(config.model, corpora.tokenizer, dtype, attention.kind, accelerator.device)
    model = add_lora(base, config.lora)
    model.train()  # from_pretrained returns a model in eval mode, which would turn dropout off
    check_positions(model, config)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    mixer = Mixer(corpora.train, config.data, config.seed, config.train.epochs, rank, world_size, config.train.seq_len)
    sharded = None
    if sharding is not None:  # before the optimizer, which must hold the shards
        sharded = shard(model, sharding, accelerator.device, accelerator.num_processes, autocast_dtype(accelerator))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    if config.train.compile:
        model = torch.compile(model)
    if sharded is None:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:  # the model stays as sharded: accelerate would wrap it in DDP
        optimizer = accelerator.prepare(optimizer)
    resume_from = checkpointer.find(resume) if resume else None
    progress = Progress(steps_per_epoch=[steps_in_epoch(mixer, e, config) for e in range(1, config.train.epochs + 1)])
    # The schedule's horizon is read at every step: it follows the plan as a resume or reduce_ratio changes it.
    horizon = lambda: progress.total_steps(config.train.max_steps)  # noqa: E731
    # Before the log, whose trackers start with it: a loss that cannot run here is an error with none to finish.
    loss = choose_loss(config.train.loss, accelerator.unwrap_model(model), accelerator.device)
    run = Run(
        config=config,
        accelerator=accelerator,
        output_dir=output_dir,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.train, horizon)),
        mixer=mixer,
        tokenizer=corpora.tokenizer,
        held_out=corpora.held_out,
        log=RunLog(
            output_dir,
            accelerator.is_main_process,
            resumed_step=checkpointer.step(resume_from),
            accelerator=accelerator,
            project=config.train.tracker_project,
            params=to_dict(config),
        ),
        checkpointer=checkpointer,
        compute_dtype=compute_dtype(accelerator, model),
        progress=progress,
        loss=loss,
        sharding=sharded,
        attention=attention,
        folder_lock=folder_lock,
    )
    try:
        # Sharded weights are gathered by every process's forward: then every process runs the hook.
        if config.collapse.enabled and (accelerator.is_main_process or sharded is not None):
            run.monitor = CollapseMonitor(config.collapse, corpora.tokenizer, corpora.held_out)
        if resume_from is not None:
            _resume(run, resume_from)
        else:
            _log_start(run, corpora.reports)
            if config.collapse.enabled:
                evaluate(run)
    except BaseException:
        run.close(warn=False)  # the trackers started with the log: none is left "running" by a failed start
        raise
    return run


def _log_start(run: Run, reports: list[SourceReport]) -> None:
    resolved = to_dict(run.config)
    if run.accelerator.is_main_process:
        write_text(run.output_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        with atomic_folder(run.output_dir / "tokenizer") as folder:
            run.tokenizer.save_pretrained(str(folder))
    run.log.event(
        "config",
        config=resolved,
        sources=[vars(r) for r in reports],
        trainable_parameters=sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        parameters=sum(p.numel() for p in run.model.parameters()),
        steps_per_epoch=run.progress.steps_per_epoch,
        tokenizer={
            "name": run.tokenizer.name_or_path,
            "from": tokenizer_origin(run.config),
            "tokens": len(run.tokenizer),
            "chat_template": run.config.data.chat_template or ("own" if run.tokenizer.chat_template else None),
        },
        loss={"kind": run.loss.kind, "reason": run.loss.reason},
        attention={"kind": run.attention.kind, "isolation": run.attention.isolation, "reason": run.attention.reason},
        quantization=_quantization(run.unwrapped),
        trackers=run.log.locations,
        **describe(run.accelerator, run.sharding),
    )


def _quantization(model: torch.nn.Module) -> dict[str, Any] | None:
    """What the base's bitsandbytes quantization is, as loaded (None when not quantized)."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    return config.to_dict() if config is not None and hasattr(config, "to_dict") else None


# ---------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_parts(run: Run) -> list[Part]:
    """What a checkpoint holds, in the order it is restored."""
    weights = TrainableWeights(run.unwrapped)
    parts = [
        Part("weights", weights, codec=WeightsCodec(weights), collective=True),
        Part("optimizer", OptimizerState(run.unwrapped, run.optimizer), collective=True),
        Part("scheduler", run.scheduler),
        Part("rng", RngState(), per_rank=True),
        Part("mixer", run.mixer, codec=JSON, per_rank=True),
        Part("progress", run.progress, codec=JSON),
    ]
    if run.accelerator.scaler is not None:
        parts.append(Part("scaler", run.accelerator.scaler))
    if run.monitor is not None:
        parts.append(Part("collapse", run.monitor, codec=JSON))
    return parts


def _checkpoint_meta(run: Run) -> dict[str, Any]:
    return {
        "world_size": run.accelerator.num_processes,
        "data_fingerprint": run.mixer.fingerprint(),
        "config": to_dict(run.config),
    }


def save_checkpoint(run: Run) -> None:
    """Write checkpoints/step-N with every part (every rank's RNG and stream position included)."""
    path = run.checkpointer.save(
        run.progress.step, _checkpoint_parts(run), _checkpoint_meta(run), files={METRICS: run.log.path}
    )
    run.log.event("checkpoint", step=run.progress.step, epoch=run.progress.epoch, path=str(path))
    run.checkpointed_step = run.progress.step


def _resume(run: Run, folder: Path) -> None:
    """Restore the checkpoint in `folder`, then apply this config's values where they may change."""
    meta = _checkpoint_meta(run)
    restored = run.checkpointer.restore(folder, _checkpoint_parts(run), meta, files={METRICS: run.log.path})
    epochs = run.config.train.epochs  # train.epochs may have changed: plan the epochs it adds
    planned = run.progress.steps_per_epoch[:epochs]
    planned += [steps_in_epoch(run.mixer, e, run.config) for e in range(len(planned) + 1, epochs + 1)]
    run.progress.steps_per_epoch = planned
    replan_steps(run)
    apply_hyperparameters(run.optimizer, run.scheduler, run.config.train)
    run.checkpointed_step = run.progress.step
    run.log.event(
        "resume", step=restored.step, epoch=run.progress.epoch, checkpoint=str(folder), changed=restored.changed
    )


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
        while _more_steps(run) and run.stop_reason is None and not run.preempted:
            if progress.step_in_epoch == 0:
                run.mixer.set_epoch(progress.epoch)
            while progress.step_in_epoch < progress.steps_per_epoch[progress.epoch - 1] and _more_steps(run):
                stats = train_step(run)
                progress.step += 1
                progress.step_in_epoch += 1
                for kind in KINDS:
                    progress.epoch_tokens[kind] += stats[f"tokens_{kind}"]
                    progress.epoch_examples[kind] += stats[f"examples_{kind}"]
                progress.epoch_capacity += rows_per_step(config) * config.train.seq_len * accelerator.num_processes
                if progress.step % config.train.log_every_steps == 0:
                    run.log.event("train", step=progress.step, epoch=progress.epoch, **stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", epoch=progress.epoch)
                if eval_due(run):  # before the checkpoint of this step, which then holds its effects
                    apply_actions(run, evaluate(run, realized_ratio(run)))
                every = config.checkpoint.every_steps
                if every and progress.step % every == 0:
                    save_checkpoint(run)
                if run.preempted or run.stop_reason is not None:
                    break
            # A preempted run ends its epoch (the hook, the epoch's checkpoint) after resuming.
            if progress.step_in_epoch >= progress.steps_per_epoch[progress.epoch - 1] and not run.preempted:
                end_epoch(run)
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


def _more_steps(run: Run) -> bool:
    return run.progress.epoch <= run.config.train.epochs and run.progress.step < run.total_steps


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
    progress.epoch += 1
    progress.step_in_epoch = 0
    progress.epoch_tokens = dict.fromkeys(KINDS, 0)
    progress.epoch_examples = dict.fromkeys(KINDS, 0)
    progress.epoch_capacity = 0
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
    if run.config.collapse.enabled and run.config.collapse.report:
        write_run_report(run)
