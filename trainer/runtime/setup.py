"""Set-up: a run built in the order its parts need each other, read top to bottom in `setup`.

1. the launch: the sharding the launch asks for is read before the Accelerator exists (it clears accelerate's
   FSDP variables), then the Accelerator;
2. the run folder, claimed by the main process before anything is written into it;
3. the data: one process builds the tokenized store, the others map it; the mixer plans the epochs;
4. the model, initialised from the seed (a built one), with LoRA, then sharded when the launch says so;
5. the optimizer (after sharding: it must hold the shards), the schedule, and the event log, whose trackers start
   last, after everything that can refuse the run;
6. the start (the config event and the step-0 baseline) or the resume (every part of the checkpoint back).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from synthmix.data_mixers.corpus import Corpora, SourceReport, build_corpora
from synthmix.data_mixers.mixer import Mixer
from synthmix.files import atomic_folder, write_text
from synthmix.schema import to_dict
from synthmix.trainer.collapse.monitor import CollapseMonitor
from synthmix.trainer.config import RunConfig, run_tokenizer, tokenizer_origin, validate
from synthmix.trainer.distributed.accelerator import (
    autocast_dtype,
    compute_dtype,
    describe,
    first_then_others,
    make_accelerator,
    on_main_process,
)
from synthmix.trainer.distributed.sharding import Sharding, shard, sharding_for_launch
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.attention import AttentionChoice, choose_attention
from synthmix.trainer.modeling.loss import LossChoice, choose_loss
from synthmix.trainer.modeling.model import add_lora, build_model, check_positions, resolve_dtype
from synthmix.trainer.reporting.events import METRICS, EventLog
from synthmix.trainer.reporting.live import LiveReport
from synthmix.trainer.reporting.samples import drop_samples_after
from synthmix.trainer.runtime.checkpoint import Checkpointer
from synthmix.trainer.runtime.evaluation import evaluate
from synthmix.trainer.runtime.run_folder import claim_run_folder
from synthmix.trainer.runtime.schedule import apply_hyperparameters, lr_factor, replan_steps, steps_in_epoch
from synthmix.trainer.runtime.state import Progress, Run


def setup(config: RunConfig, resume: str | None) -> Run:
    """Build data, model, optimizer and schedule; restore a checkpoint when resuming."""
    validate(config)  # again: a job (the demo, the recursive loop) may have changed the config after loading
    sharding, accelerator = _launch(config)
    checkpointer = Checkpointer(
        Path(config.output_dir) / "checkpoints", accelerator, config.checkpoint.keep_last, config.checkpoint.every_steps
    )
    folder_lock = _claim_run_folder(accelerator, config, resume, checkpointer)
    try:
        corpora = _data(config, accelerator)
        mixer = Mixer(
            corpora.train, config.data, config.seed, config.train.epochs, accelerator.process_index,
            accelerator.num_processes, config.train.seq_len,
        )  # fmt: skip
        model, attention = _model(config, accelerator, corpora.tokenizer)
        model, optimizer, sharded = _optimizer(config, accelerator, model, sharding)
        resume_from = checkpointer.find(resume) if resume else None
        # Before the log, whose trackers start with it: a loss that cannot run here is an error with none to finish.
        loss = choose_loss(config.train.loss, accelerator.unwrap_model(model), accelerator.device)
        resumed_step = checkpointer.step(resume_from)
        run = _run(config, accelerator, checkpointer, corpora, mixer, model, optimizer, sharded, attention, loss,
                   resumed_step)  # fmt: skip
        run.folder_lock = folder_lock
        report = config.collapse.enabled and config.collapse.report and accelerator.is_main_process
        run.live_report = LiveReport(run.output_dir, enabled=report)
    except BaseException:
        if folder_lock is not None:
            folder_lock.close()
        raise
    try:
        # Sharded weights are gathered by every process's forward: then every process runs the hook.
        if config.collapse.enabled and (accelerator.is_main_process or sharded is not None):
            run.monitor = CollapseMonitor(config.collapse, corpora.tokenizer, corpora.held_out)
        if resume_from is not None:
            resume_run(run, resume_from)
        else:
            _start(run, corpora.reports)
    except BaseException:
        run.close(warn=False)  # the trackers started with the log: none is left "running" by a failed start
        raise
    return run


def _launch(config: RunConfig) -> tuple[Sharding | None, Accelerator]:
    """The sharding the launch asks for, then the Accelerator (in this order: it clears accelerate's FSDP)."""
    sharding = sharding_for_launch(config.train.sharding)
    if sharding is not None and config.model.quantization.bits is not None:
        raise TrainerError("FSDP cannot shard a bitsandbytes-quantized base (model.quantization.bits); use DDP")
    if sharding is not None and config.collapse.enabled and config.collapse.benchmarks.tasks:
        raise TrainerError(
            "collapse.benchmarks: lm-evaluation-harness scores a model on one process, and FSDP shards the weights "
            "over all of them; train with DDP (train.sharding: none), or set collapse.benchmarks.tasks: []"
        )
    return sharding, make_accelerator(config.train.mixed_precision, config.train.report_to, Path(config.output_dir))


def _claim_run_folder(
    accelerator: Accelerator, config: RunConfig, resume: str | None, checkpointer: Checkpointer
) -> IO[str] | None:
    """The main process's lock on the run folder, held until the run is closed (None on the other processes)."""
    claimed: list[IO[str]] = []
    output_dir = Path(config.output_dir)
    on_main_process(accelerator, lambda: claimed.append(claim_run_folder(output_dir, resume, checkpointer.root)))
    return claimed[0] if claimed else None


def _data(config: RunConfig, accelerator: Accelerator) -> Corpora:
    """Every source tokenized and cleaned: one process builds the store, the others wait and map it (one per node
    when the cache is node-local)."""
    return first_then_others(
        accelerator,
        lambda: build_corpora(
            config.data,
            run_tokenizer(config),
            progress=accelerator.is_main_process and config.train.progress,
            base_model=config.model.name,
        ),
        first=accelerator.is_main_process if config.data.cache_shared else accelerator.is_local_main_process,
    )


def _model(config: RunConfig, accelerator: Accelerator, tokenizer: Any) -> tuple[torch.nn.Module, AttentionChoice]:
    """The base model (a built one initialised from the seed) with LoRA, in training mode, and its attention."""
    set_seed(config.seed)
    dtype = resolve_dtype(config.model, accelerator.device.type == "cuda")
    attention = choose_attention(config.model.attn_implementation, accelerator.device)
    model = add_lora(build_model(config.model, tokenizer, dtype, attention.kind, accelerator.device), config.lora)
    model.train()  # from_pretrained returns a model in eval mode, which would turn dropout off
    check_positions(model, config)
    return model, attention


def _optimizer(
    config: RunConfig, accelerator: Accelerator, model: torch.nn.Module, sharding: Sharding | None
) -> tuple[Any, torch.optim.Optimizer, dict[str, Any] | None]:
    """The model sharded when the launch says so (before the optimizer, which must hold the shards), AdamW over
    the trainable weights, then both prepared by accelerate (a sharded model stays as it is: not wrapped in DDP)."""
    sharded = None
    if sharding is not None:
        sharded = shard(model, sharding, accelerator.device, accelerator.num_processes, autocast_dtype(accelerator))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    if config.train.compile:
        model = torch.compile(model)
    if sharded is None:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        optimizer = accelerator.prepare(optimizer)
    return model, optimizer, sharded


def _run(
    config: RunConfig,
    accelerator: Accelerator,
    checkpointer: Checkpointer,
    corpora: Corpora,
    mixer: Mixer,
    model: Any,
    optimizer: torch.optim.Optimizer,
    sharded: dict[str, Any] | None,
    attention: AttentionChoice,
    loss: LossChoice,
    resumed_step: int | None,
) -> Run:
    """What the run holds: the step plan, the learning-rate schedule on it, and last the event log, whose
    trackers start when it is made."""
    progress = Progress(steps_per_epoch=[steps_in_epoch(mixer, e, config) for e in range(1, config.train.epochs + 1)])
    # The schedule's horizon is read at every step: it follows the plan as a resume or reduce_ratio changes it.
    horizon = lambda: progress.total_steps(config.train.max_steps)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.train, horizon))
    return Run(
        config=config,
        accelerator=accelerator,
        output_dir=Path(config.output_dir),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        mixer=mixer,
        tokenizer=corpora.tokenizer,
        held_out=corpora.held_out,
        checkpointer=checkpointer,
        compute_dtype=compute_dtype(accelerator, model),
        progress=progress,
        loss=loss,
        sharding=sharded,
        attention=attention,
        log=_event_log(config, accelerator, resumed_step),
    )


def _event_log(config: RunConfig, accelerator: Accelerator, resumed_step: int | None) -> EventLog:
    """metrics.jsonl and the trackers, which start here (a resumed run continues its W&B and MLflow runs)."""
    return EventLog(
        Path(config.output_dir),
        accelerator.is_main_process,
        resumed_step=resumed_step,
        accelerator=accelerator,
        project=config.train.tracker_project,
        params=to_dict(config),
    )


# ---------------------------------------------------------------------------------------------- start or resume
def _start(run: Run, reports: list[SourceReport]) -> None:
    """A fresh run: the resolved config and the tokenizer into the run folder, the config event, the baseline."""
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
    if run.config.collapse.enabled:
        evaluate(run)


def _quantization(model: torch.nn.Module) -> dict[str, Any] | None:
    """What the base's bitsandbytes quantization is, as loaded (None when not quantized)."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    return config.to_dict() if config is not None and hasattr(config, "to_dict") else None


def resume_run(run: Run, folder: Path) -> None:
    """Restore the checkpoint in `folder`, then apply this config's values where they may change."""
    restored = run.checkpointer.restore(
        folder, run.checkpoint_parts(), run.checkpoint_meta(), files={METRICS: run.log.path}
    )
    epochs = run.config.train.epochs  # train.epochs may have changed: plan the epochs it adds
    planned = run.progress.steps_per_epoch[:epochs]
    planned += [steps_in_epoch(run.mixer, e, run.config) for e in range(len(planned) + 1, epochs + 1)]
    run.progress.steps_per_epoch = planned
    replan_steps(run)
    apply_hyperparameters(run.optimizer, run.scheduler, run.config.train)
    run.checkpointed_step = run.progress.step
    if run.log.enabled:
        drop_samples_after(run.output_dir, restored.step)  # as metrics.jsonl: the later evals come again
    run.log.event(
        "resume", step=restored.step, epoch=run.progress.epoch, checkpoint=str(folder), changed=restored.changed
    )
