"""`synthmix sft`: a synthmix run config trained by TRL's own `SFTTrainer`, the exact mix as its dataset and the
collapse hook as a callback.

    synthmix sft --config configs/chat-sft.yaml [--resume latest|checkpoint-N] [--section.key VALUE ...]
    torchrun --nproc_per_node N -m synthmix sft --config ...          (or accelerate launch --multi_gpu ...)

The data and tokenizer sections build the stream (`MixedStream`, each process its own share, every epoch at the
configured ratio), the model and lora sections the model, the train section TRL's `SFTConfig` (batch,
accumulation, learning rate and schedule, clipping, seed, `report_to`), the collapse section the
`CollapseCallback`. TRL trains on the packed rows as they come (padding-free: position ids restart per example).
At the end of each of the stream's epochs the realized ratio is logged, the collapse hook evaluates and a
checkpoint is written; the hook also evaluates at step 0 and every `collapse.every_steps`, and checkpoints come
every `checkpoint.every_steps`. It leaves OUTPUT_DIR/metrics.jsonl, OUTPUT_DIR/report.html and the adapter with
synthmix's model card in OUTPUT_DIR/adapter/. `--resume` (latest, or a checkpoint-N folder of OUTPUT_DIR)
continues the stream at the next row.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from synthmix.data_mixers.corpus import Corpora, build_corpora
from synthmix.errors import ConfigError
from synthmix.files import write_text
from synthmix.schema import to_dict
from synthmix.trainer.config import RunConfig, run_tokenizer
from synthmix.trainer.distributed.accelerator import first_then_others, on_main_process, several_cpu_processes
from synthmix.trainer.integrations.collapse_callback import CollapseCallback
from synthmix.trainer.integrations.stream_callback import attach_stream, mixed_stream
from synthmix.trainer.modeling.attention import choose_attention
from synthmix.trainer.modeling.model import add_lora, build_model, resolve_dtype
from synthmix.trainer.reporting.cards import CARD, model_card
from synthmix.trainer.reporting.events import METRICS, EventLog, read_events
from synthmix.trainer.runtime.run_folder import claim_run_folder

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def sft_config(config: RunConfig) -> Any:
    """TRL's settings from the run config's train and checkpoint sections."""
    from trl import SFTConfig

    train, on_gpu = config.train, torch.cuda.is_available()
    bf16 = train.mixed_precision == "bf16" or (
        train.mixed_precision == "auto" and on_gpu and torch.cuda.is_bf16_supported()
    )
    return SFTConfig(
        output_dir=config.output_dir, per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps, learning_rate=train.learning_rate,
        weight_decay=train.weight_decay, warmup_steps=train.warmup_steps,
        lr_scheduler_type=SCHEDULERS[train.lr_scheduler],
        max_grad_norm=train.max_grad_norm or 0.0, max_steps=train.max_steps or -1, seed=config.seed,
        bf16=bf16, fp16=train.mixed_precision == "fp16", use_cpu=not on_gpu, logging_steps=train.log_every_steps,
        report_to=[name for name in train.report_to if name != "none"] or "none", disable_tqdm=not train.progress,
        save_strategy="steps", save_steps=config.checkpoint.every_steps or 10**9,
        save_total_limit=config.checkpoint.keep_last, padding_free=True, max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every forward: no graph walk per step
    )  # fmt: skip


def build(config: RunConfig) -> tuple[Any, Corpora]:
    """The SFTTrainer on the stream, with the callbacks attached, and the corpora it was built from."""
    import datasets
    from accelerate.utils import set_seed
    from trl import SFTTrainer

    processes = PartialState()
    args = sft_config(config)
    main = processes.is_main_process
    # One process builds the store and the tokenizer, the others wait and map them (one per node when the cache
    # is node-local), as `synthmix train` does.
    corpora = first_then_others(
        processes,
        lambda: build_corpora(config.data, run_tokenizer(config), progress=main and config.train.progress,
                              base_model=config.model.name),
        first=main if config.data.cache_shared else processes.is_local_main_process,
    )  # fmt: skip
    tokenizer, device = corpora.tokenizer, processes.device
    set_seed(config.seed)  # a base built from model.arch: the same weights in every run, a resumed one included
    model = build_model(config.model, tokenizer, resolve_dtype(config.model, device.type == "cuda"),
                        choose_attention(config.model.attn_implementation, device).kind, device)  # fmt: skip
    model = add_lora(model, config.lora).train()
    stream = mixed_stream(corpora, config.data, args, seq_len=config.train.seq_len, epochs=config.train.epochs)
    placeholder = datasets.Dataset.from_list([stream.example()])  # SFTTrainer takes only `datasets` objects
    trainer = SFTTrainer(model=model, args=args, train_dataset=placeholder, processing_class=tokenizer)
    attach_stream(trainer, stream)
    if config.collapse.enabled:
        trainer.add_callback(CollapseCallback(corpora.held_out, tokenizer, trainer, config.collapse))
    return trainer, corpora


def resume_point(resume: str | None, output_dir: Path) -> bool | str | None:
    """`--resume` as the Trainer takes it: True for latest, a checkpoint-N folder of `output_dir` (where the
    callbacks keep their state beside the Trainer's), or None for a fresh run."""
    if resume is None:
        return None
    if resume == "latest":
        if not (output_dir.is_dir() and get_last_checkpoint(str(output_dir))):
            raise ConfigError(f"--resume latest: {output_dir} holds no checkpoint-N folder to resume")
        return True
    folder = Path(resume)
    named = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", folder.name) is not None
    if not (named and folder.is_dir() and folder.parent.resolve() == output_dir.resolve()):
        raise ConfigError(
            f"--resume: {resume} is not a checkpoint-N folder of output_dir {output_dir} (the callbacks read "
            "their state beside the Trainer's checkpoints there)"
        )
    return resume


def run_sft(config: RunConfig, resume: str | None = None) -> Path:
    """Train `config` with TRL's SFTTrainer (continuing from a checkpoint when `resume` is given); returns the
    run folder."""
    output = Path(config.output_dir)
    resume_from = resume_point(resume, output)
    # On CPU, accelerate joins the launcher's processes into one gloo group only when told it runs on CPU.
    processes = PartialState(cpu=several_cpu_processes())
    claimed: list[Any] = []
    on_main_process(processes, lambda: claimed.append(claim_run_folder(output, resume)))
    try:
        trainer, corpora = build(config)
        log = EventLog(output, enabled=trainer.is_world_process_zero())
        if resume_from is None:
            log.event("config", config=to_dict(config), sources=[vars(r) for r in corpora.reports],
                      world_size=trainer.accelerator.num_processes, trainer="trl.SFTTrainer")  # fmt: skip
        trainer.train(resume_from_checkpoint=resume_from)
        adapter = output / "adapter"
        trainer.save_model(str(adapter))  # every process takes part
        step, planned = trainer.state.global_step, trainer.args.max_steps
        log.event("end", step=step, status="finished" if step >= planned else "stopped", output=str(adapter))
        if trainer.is_world_process_zero():  # peft wrote a card of its own: synthmix's says what the run trained on
            write_text(adapter / CARD, model_card(read_events(output / METRICS)))
    finally:
        for lock in claimed:
            lock.close()
    return output
