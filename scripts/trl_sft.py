"""synthmix's two pieces inside TRL's own trainer: the exact mix as the dataset, the collapse hook as a callback.

    python scripts/trl_sft.py --config configs/tiny.yaml --output_dir runs/trl [--resume latest|PATH]
                              [--section.key VALUE ...]
    (several processes do not work yet: under torchrun on CPU the ranks form one group but the run fails after
    its first eval; the single-process path is tested)

Any synthmix run config: its data and tokenizer sections build the stream (`data_mixers.torch_dataset.MixedStream`,
each process its own share, every epoch at the configured ratio), its model and lora sections the model, its train
section TRL's `SFTConfig` (batch, accumulation, learning rate and schedule, clipping, seed, `report_to`), its
collapse section the `CollapseCallback`. TRL trains on the packed rows as they come (padding-free: position ids
restart per example), evaluates at step 0, every `collapse.every_steps` and at every epoch end, checkpoints every
`checkpoint.every_steps` and at every epoch end, and leaves OUTPUT_DIR/metrics.jsonl (eval events),
OUTPUT_DIR/report.html and the adapter in OUTPUT_DIR/adapter/. `--resume` continues the stream at the next row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import TrainerCallback

from data_mixers.corpus import build_corpora
from data_mixers.torch_dataset import MixedStream
from synthmix.errors import ConfigError, UserError
from trainer.attention import choose_attention
from trainer.config import RunConfig, load_config
from trainer.distributed import several_cpu_processes
from trainer.integrations import CollapseCallback, attach_stream
from trainer.model import add_lora, build_model, resolve_dtype

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class EpochEnds(TrainerCallback):
    """At the step that ends each of the stream's epochs: the collapse eval, then a checkpoint, as synthmix does
    (the Trainer sees the whole stream as one of its epochs, so its own epoch end comes only at the last step)."""

    def __init__(self, steps: list[int], collapse: CollapseCallback | None) -> None:
        self.steps, self.collapse = set(steps), collapse

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step in self.steps:
            if self.collapse is not None:
                self.collapse.on_epoch_end(args, state, control, **kw)
            control.should_save = True


def sft_config(config: RunConfig, output_dir: str) -> Any:
    """TRL's settings from the run config's train and checkpoint sections."""
    from trl import SFTConfig

    train, on_gpu = config.train, torch.cuda.is_available()
    bf16 = train.mixed_precision == "bf16" or (
        train.mixed_precision == "auto" and on_gpu and torch.cuda.is_bf16_supported()
    )
    return SFTConfig(
        output_dir=output_dir, per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps, learning_rate=train.learning_rate,
        weight_decay=train.weight_decay, warmup_steps=train.warmup_steps,
        lr_scheduler_type=SCHEDULERS[train.lr_scheduler],
        max_grad_norm=train.max_grad_norm or 0.0, max_steps=train.max_steps or -1, seed=config.seed,
        bf16=bf16, fp16=train.mixed_precision == "fp16", use_cpu=not on_gpu, logging_steps=train.log_every_steps,
        report_to=[name for name in train.report_to if name != "none"] or "none", disable_tqdm=not train.progress,
        save_strategy="steps", save_steps=config.checkpoint.every_steps or 10**9,
        save_total_limit=config.checkpoint.keep_last, padding_free=True, max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0,
    )  # fmt: skip


def build(config: RunConfig) -> tuple[Any, MixedStream, CollapseCallback | None]:
    """The SFTTrainer on the stream, with the callbacks attached."""
    from accelerate import PartialState
    from trl import SFTTrainer

    corpora = build_corpora(config.data, config.tokenizer, progress=config.train.progress, base_model=config.model.name)
    # On CPU, accelerate joins the launcher's processes into one gloo group only when told it runs on CPU.
    tokenizer, processes = corpora.tokenizer, PartialState(cpu=several_cpu_processes())
    device = processes.device
    model = build_model(config.model, tokenizer, resolve_dtype(config.model, device.type == "cuda"),
                        choose_attention(config.model.attn_implementation, device).kind, device)  # fmt: skip
    model = add_lora(model, config.lora).train()
    batch, world = config.train.per_device_train_batch_size, processes.num_processes
    stream = MixedStream(
        corpora.train, config.data, seed=config.seed, epochs=config.train.epochs, seq_len=config.train.seq_len,
        pad_id=tokenizer.pad_token_id, rows_per_step=batch * config.train.gradient_accumulation_steps,
        rank=processes.process_index, world_size=world, layout="global" if world > 1 else "rank", block=batch,
    )  # fmt: skip
    placeholder = datasets.Dataset.from_list([stream.example()])  # SFTTrainer takes only `datasets` objects
    args = sft_config(config, config.output_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=placeholder, processing_class=tokenizer)
    attach_stream(trainer, stream)
    collapse = None
    if config.collapse.enabled:
        held_out = [ids.tolist() for ids in corpora.held_out]
        collapse = CollapseCallback(held_out, tokenizer, trainer, config.collapse)
        trainer.add_callback(collapse)
    trainer.add_callback(EpochEnds(stream.epoch_end_steps(), collapse))
    return trainer, stream, collapse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a synthmix run config (YAML)")
    parser.add_argument("--output_dir", required=True, help="the run folder: metrics.jsonl, report.html, adapter/")
    parser.add_argument("--resume", help="latest (the newest checkpoint in output_dir) or a checkpoint folder")
    args, overrides = parser.parse_known_args(argv)
    config = load_config(args.config, [*overrides, "--output_dir", args.output_dir])
    resume: bool | str | None = True if args.resume == "latest" else args.resume
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise ConfigError(f"--resume: {resume} is not a checkpoint folder")
    trainer, _, _ = build(config)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(Path(config.output_dir) / "adapter"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
