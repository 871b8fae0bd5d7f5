"""The training loop: one explicit Accelerate loop over the mixer's packed stream.

Read top to bottom: set-up (data, model, LoRA, optimizer, schedule), resume, then per step: pack rows,
forward, token-level loss (normalised by the global number of loss tokens, so gradient accumulation and
several processes give the same update as one big batch), backward, clip, step, log; at epoch ends: the
epoch's realized ratio and a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm

from data_mixers.config import to_dict
from data_mixers.corpus import build_corpora
from data_mixers.mixer import Mixer
from trainer.checkpoint import (
    capture_rng,
    find_checkpoint,
    load_torch,
    remove_stale_temporaries,
    restore_rng,
    write_checkpoint,
    write_json,
)
from trainer.collapse import CollapseMonitor
from trainer.config import RunConfig
from trainer.errors import TrainerError
from trainer.model import add_lora, build_model, resolve_dtype
from trainer.packing import IGNORE, KIND_CODES, PackedBatch, pack_rows, token_losses
from trainer.run_log import METRICS, RunLog

KINDS = tuple(KIND_CODES)


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in every checkpoint as run.json."""

    step: int = 0
    epoch: int = 1
    step_in_epoch: int = 0
    epoch_tokens: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    epoch_examples: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def state_dict(self) -> dict[str, Any]:
        """Plain data for run.json."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from run.json."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, state[field.name])


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
    held_out: list[str]
    log: RunLog
    progress: Progress
    steps_per_epoch: list[int]
    compute_dtype: torch.dtype
    monitor: CollapseMonitor | None = None
    stop_reason: str | None = None
    checkpointed_step: int | None = None
    """The step of the newest checkpoint, so a run that stops between checkpoints writes a final one."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run, as planned at start."""
        planned = sum(self.steps_per_epoch)
        cap = self.config.train.max_steps
        return min(planned, cap) if cap is not None else planned


def train(config: RunConfig, resume: str | None = None) -> Path:
    """Train as configured (continuing from a checkpoint when `resume` is `latest` or a path)."""
    run = setup(config, resume)
    try:
        fit(run)
    finally:
        run.log.close()
    return run.output_dir


# ---------------------------------------------------------------------------------------------- set-up
def setup(config: RunConfig, resume: str | None) -> Run:
    """Build data, model, optimizer and schedule; restore a checkpoint when resuming."""
    accelerator = Accelerator(mixed_precision=_mixed_precision(config), cpu=_multi_cpu())
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        _prepare_output_dir(output_dir, resume)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    with accelerator.main_process_first():
        corpora = build_corpora(config.data, config.tokenizer)
    on_gpu = accelerator.device.type == "cuda"
    model = add_lora(build_model(config.model, corpora.tokenizer, resolve_dtype(config.model, on_gpu)), config.lora)
    mixer = Mixer(
        corpora.train,
        config.data,
        config.seed,
        config.train.epochs,
        accelerator.process_index,
        accelerator.num_processes,
    )
    steps_per_epoch = [_steps_in_epoch(mixer, e, config) for e in range(1, config.train.epochs + 1)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    if config.train.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    run = Run(
        config,
        accelerator,
        output_dir,
        model,
        optimizer,
        None,
        mixer,
        corpora.tokenizer,  # type: ignore[arg-type]
        corpora.held_out,
        None,
        Progress(),
        steps_per_epoch,
        _compute_dtype(accelerator, model),  # type: ignore[arg-type]
    )
    # The schedule is fixed by the plan at start, so a resumed run (even after reduce_ratio) decays the same way.
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, run.total_steps))
    if config.collapse.enabled and accelerator.is_main_process:
        run.monitor = CollapseMonitor(config.collapse, corpora.tokenizer, corpora.held_out)
    checkpoint = find_checkpoint(output_dir / "checkpoints", resume) if resume else None
    if checkpoint is not None:
        _load_checkpoint(run, checkpoint)
        _replan_steps(run)
        run.checkpointed_step = run.progress.step
    run.log = RunLog(output_dir, accelerator.is_main_process, purge_step=run.progress.step if checkpoint else None)
    if checkpoint is None:
        _log_start(run, corpora.reports)
        if config.collapse.enabled:
            evaluate(run)
    else:
        run.log.event(
            "resume",
            step=run.progress.step,
            epoch=run.progress.epoch,
            checkpoint=str(checkpoint),
            changed=_config_changes(checkpoint, config),
        )
    return run


def _multi_cpu() -> bool:
    """Whether torchrun (or `accelerate launch --multi_gpu`) started several processes on a machine without a
    GPU: accelerate joins them into one gloo group only when told it runs on CPU; otherwise every process
    would train alone on all the data and write the same run folder."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _mixed_precision(config: RunConfig) -> str:
    choice = config.train.mixed_precision
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _compute_dtype(accelerator: Accelerator, model: torch.nn.Module) -> torch.dtype:
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    return autocast or next(model.parameters()).dtype


def _prepare_output_dir(output_dir: Path, resume: str | None) -> None:
    checkpoints = output_dir / "checkpoints"
    if resume is None and (output_dir / METRICS).exists():
        raise TrainerError(
            f"output_dir {output_dir} already holds a run; pass --resume latest to continue it, "
            "or choose another output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    if checkpoints.is_dir():
        remove_stale_temporaries(checkpoints)


def _steps_in_epoch(mixer: Mixer, epoch: int, config: RunConfig) -> int:
    """Optimizer steps that cover the largest rank's share of `epoch` (smaller shares are padded)."""
    train = config.train
    tokens_per_step = train.seq_len * train.per_device_train_batch_size * train.gradient_accumulation_steps
    return max(1, math.ceil(max(mixer.shard_tokens(epoch)) / tokens_per_step))


def _lr_lambda(config: RunConfig, total_steps: int):
    warmup, kind = config.train.warmup_steps, config.train.lr_scheduler

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _log_start(run: Run, reports: list) -> None:
    resolved = to_dict(run.config)
    if run.accelerator.is_main_process:
        (run.output_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        run.tokenizer.save_pretrained(str(run.output_dir / "tokenizer"))
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in run.model.parameters())
    run.log.event(
        "config",
        config=resolved,
        sources=[vars(r) for r in reports],
        world_size=run.accelerator.num_processes,
        device=str(run.accelerator.device),
        trainable_parameters=trainable,
        parameters=total,
        steps_per_epoch=run.steps_per_epoch,
    )


# ---------------------------------------------------------------------------------------------- the loop
def fit(run: Run) -> None:
    """Train from `run.progress` to the end, checkpointing as configured."""
    config, progress, accelerator = run.config, run.progress, run.accelerator
    bar = tqdm(
        total=run.total_steps,
        initial=progress.step,
        desc="train",
        dynamic_ncols=True,
        disable=not (accelerator.is_main_process and config.train.progress),
    )
    while progress.epoch <= config.train.epochs and progress.step < run.total_steps and run.stop_reason is None:
        if progress.step_in_epoch == 0:
            run.mixer.set_epoch(progress.epoch)
        while progress.step_in_epoch < run.steps_per_epoch[progress.epoch - 1] and progress.step < run.total_steps:
            stats = train_step(run)
            progress.step += 1
            progress.step_in_epoch += 1
            for kind in KINDS:
                progress.epoch_tokens[kind] += stats[f"tokens_{kind}"]
                progress.epoch_examples[kind] += stats[f"examples_{kind}"]
            if progress.step % config.train.log_every_steps == 0:
                run.log.event("train", step=progress.step, epoch=progress.epoch, **stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", epoch=progress.epoch)
            every = config.checkpoint.every_steps
            if every and progress.step % every == 0:
                save_checkpoint(run)
        if progress.step_in_epoch >= run.steps_per_epoch[progress.epoch - 1]:
            end_epoch(run)
    bar.close()
    if run.checkpointed_step != progress.step:  # max_steps fell between checkpoints: keep the run continuable
        save_checkpoint(run)
    finish(run)


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
        batch = batch.to(accelerator.device)
        last = i == len(micro_batches) - 1
        with accelerator.no_sync(model) if not last else contextlib.nullcontext(), accelerator.autocast():
            logits = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask(run.compute_dtype),
                position_ids=batch.position_ids,
                use_cache=False,
            ).logits
            nll = token_losses(logits, batch.labels)
            # DDP averages gradients over processes, so scale by their number to get the global token mean.
            loss = nll.sum() / global_count * accelerator.num_processes
        accelerator.backward(loss)
        sums += _sums_by_kind(nll.detach(), batch)
    sums = accelerator.reduce(sums, reduction="sum")
    if not torch.isfinite(sums).all():
        raise TrainerError(
            f"the loss is not finite at step {run.progress.step + 1}; stopping with the last "
            f"good checkpoint in {run.output_dir / 'checkpoints'} (lower train.learning_rate?)"
        )
    grad_norm = None
    if train.max_grad_norm is not None:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm))
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return _step_stats(sums, lr, grad_norm, time.perf_counter() - started)


def _next_batch(run: Run) -> PackedBatch:
    seq_len = run.config.train.seq_len
    rows = [run.mixer.take_tokens(seq_len) for _ in range(run.config.train.per_device_train_batch_size)]
    return pack_rows(rows, seq_len, run.tokenizer.pad_token_id)


def _sums_by_kind(nll: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """[nll, loss tokens, tokens, examples started], each for real then synthetic."""
    kinds = batch.kinds[:, 1:]
    has_loss = batch.labels[:, 1:] != IGNORE
    values = []
    for code in KIND_CODES.values():
        values.append(nll[kinds == code].double().sum())
    for code in KIND_CODES.values():
        values.append((has_loss & (kinds == code)).sum().double())
    for code in KIND_CODES.values():
        values.append((batch.kinds == code).sum().double())
    values.extend(batch.examples_started.double())
    return torch.stack(values)


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


def end_epoch(run: Run) -> None:
    """Log the epoch's realized ratio, run the collapse hook and its actions, checkpoint, next epoch."""
    progress = run.progress
    tokens, examples = progress.epoch_tokens, progress.epoch_examples
    counted = tokens if run.config.data.unit == "tokens" else examples
    total = counted["real"] + counted["synthetic"]
    realized = counted["synthetic"] / total if total else None  # in data.unit, like the target
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
    )
    alerts = evaluate(run, realized) if run.config.collapse.enabled else []
    progress.epoch += 1
    progress.step_in_epoch = 0
    progress.epoch_tokens = dict.fromkeys(KINDS, 0)
    progress.epoch_examples = dict.fromkeys(KINDS, 0)
    apply_actions(run, alerts)
    save_checkpoint(run)


def evaluate(run: Run, realized_ratio: float | None = None) -> list[dict[str, Any]]:
    """Measure the collapse indicators on the main process (step 0: the baseline and the reference);
    every process gets the alerts, so actions apply everywhere."""
    alerts: list[dict[str, Any]] = []
    progress, monitor = run.progress, run.monitor
    if monitor is not None:
        started = time.perf_counter()
        values = monitor.measure(run.accelerator.unwrap_model(run.model))
        epoch = progress.epoch if progress.step else 0
        if monitor.baseline is None:
            monitor.baseline = values
            run.log.event("reference", step=0, **monitor.reference)
        else:
            alerts = monitor.alerts(values, progress.step, epoch)
        run.log.event(
            "eval",
            step=progress.step,
            epoch=epoch,
            **values,
            realized_synthetic_ratio=realized_ratio,
            target_synthetic_ratio=run.mixer.target_ratio(max(epoch, 1)),
            sampling=dataclasses.asdict(run.config.collapse.sampling),
            seconds=round(time.perf_counter() - started, 3),
        )
        for alert in alerts:
            run.log.event("alert", **alert)
            print(f"collapse alert: {alert['message']}", flush=True)
        if run.config.collapse.report:
            _write_report(run)
    return broadcast_object_list([alerts])[0]


def apply_actions(run: Run, alerts: list[dict[str, Any]]) -> None:
    """`stop` ends the run after this epoch's checkpoint; `reduce_ratio` lowers the ratio of later epochs."""
    actions = {alert["action"] for alert in alerts}
    if "reduce_ratio" in actions:
        run.mixer.reduce_ratio(run.config.collapse.reduce_factor)
        _replan_steps(run)
        run.log.event(
            "ratio_reduced",
            step=run.progress.step,
            epoch=run.progress.epoch,
            scale=run.mixer.ratio_scale,
            next_target=run.mixer.target_ratio(run.progress.epoch),
        )
    if "stop" in actions:
        run.stop_reason = "; ".join(a["message"] for a in alerts if a["action"] == "stop")


def _replan_steps(run: Run) -> None:
    """Steps of the epochs still to come, after the ratio scale changed (or was restored)."""
    for epoch in range(run.progress.epoch, run.config.train.epochs + 1):
        run.steps_per_epoch[epoch - 1] = _steps_in_epoch(run.mixer, epoch, run.config)


def _write_report(run: Run) -> None:
    from trainer.report import write_report

    write_report([run.output_dir])


def finish(run: Run) -> None:
    """Save the adapter (peft format) or the full model, optionally the merged model, and log the end."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model)
        folder = "adapter" if isinstance(model, PeftModel) else "model"
        _save_pretrained_atomically(model, run.output_dir / folder)
        if run.config.train.merge_adapter and isinstance(model, PeftModel):
            merged = model.merge_and_unload()
            _save_pretrained_atomically(merged, run.output_dir / "merged")
            run.tokenizer.save_pretrained(str(run.output_dir / "merged"))
        status = "stopped" if run.stop_reason else "finished"
        run.log.event(
            "end",
            step=run.progress.step,
            epoch=run.progress.epoch - 1,
            status=status,
            reason=run.stop_reason,
            output=str(run.output_dir / folder),
        )
        if run.config.collapse.enabled and run.config.collapse.report:
            _write_report(run)
    accelerator.wait_for_everyone()


def _save_pretrained_atomically(model: Any, folder: Path) -> None:
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(run: Run) -> None:
    """Write checkpoints/step-N on the main process with every rank's RNG and stream position."""
    accelerator = run.accelerator
    rng_states = gather_object([capture_rng()])
    mixer_states = gather_object([run.mixer.state_dict()])
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model)

        def write_files(folder: Path) -> None:
            model.save_pretrained(str(folder / ("adapter" if isinstance(model, PeftModel) else "model")))
            torch.save(run.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(run.scheduler.state_dict(), folder / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), folder / "scaler.pt")
            torch.save(rng_states, folder / "rng.pt")
            write_json(folder / "mixer.json", mixer_states)
            write_json(folder / "run.json", {**run.progress.state_dict(), "config": to_dict(run.config)})
            if run.monitor is not None:
                write_json(folder / "collapse.json", run.monitor.state_dict())
            if run.log.path.exists():
                shutil.copyfile(run.log.path, folder / METRICS)

        path = write_checkpoint(
            run.output_dir / "checkpoints", run.progress.step, write_files, run.config.checkpoint.keep_last
        )
        run.log.event("checkpoint", step=run.progress.step, epoch=run.progress.epoch, path=str(path))
    run.checkpointed_step = run.progress.step
    accelerator.wait_for_everyone()


def _load_checkpoint(run: Run, folder: Path) -> None:
    accelerator = run.accelerator
    model = accelerator.unwrap_model(run.model)
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
    else:
        model.load_state_dict(load_file(str(folder / "model" / "model.safetensors")), strict=False)
    run.optimizer.load_state_dict(load_torch(folder / "optimizer.pt"))
    run.scheduler.load_state_dict(load_torch(folder / "scheduler.pt"))
    _apply_configured_hyperparameters(run)
    if accelerator.scaler is not None and (folder / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(load_torch(folder / "scaler.pt"))
    rng_states = load_torch(folder / "rng.pt")
    mixer_states = _read_json(folder / "mixer.json")
    if len(mixer_states) != accelerator.num_processes:
        raise TrainerError(
            f"checkpoint {folder} was written by {len(mixer_states)} processes; "
            f"this launch has {accelerator.num_processes}"
        )
    restore_rng(rng_states[accelerator.process_index])
    run.mixer.load_state_dict(mixer_states[accelerator.process_index])
    run.progress.load_state_dict(_read_json(folder / "run.json"))
    if run.monitor is not None and (folder / "collapse.json").exists():
        run.monitor.load_state_dict(_read_json(folder / "collapse.json"))
    if accelerator.is_main_process and (folder / METRICS).exists():
        shutil.copyfile(folder / METRICS, run.output_dir / METRICS)  # drop events logged after the checkpoint
    accelerator.wait_for_everyone()


def _apply_configured_hyperparameters(run: Run) -> None:
    """The optimizer's and scheduler's states carry the learning rate and weight decay they were saved with;
    the config's values win (as the `resume` event says), at the schedule's current position."""
    train = run.config.train
    run.scheduler.base_lrs = [train.learning_rate for _ in run.optimizer.param_groups]
    for group, factor in zip(run.optimizer.param_groups, run.scheduler.lr_lambdas):
        group["initial_lr"] = train.learning_rate
        group["lr"] = train.learning_rate * factor(run.scheduler.last_epoch)
        group["weight_decay"] = train.weight_decay
    run.scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]


def _config_changes(folder: Path, config: RunConfig) -> list[str]:
    saved = _flatten(_read_json(folder / "run.json").get("config", {}))
    now = _flatten(to_dict(config))
    return [
        f"{key}: checkpoint {saved.get(key)!r}, now {now.get(key)!r} (the new value wins)"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())
