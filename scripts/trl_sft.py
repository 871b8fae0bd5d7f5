"""synthmix's two pieces inside TRL's own trainer: the exact mix as the dataset, the collapse hook as a callback.

    python scripts/trl_sft.py --config configs/tiny.yaml --output_dir runs/trl [--resume latest|PATH]
                              [--section.key VALUE ...]
    torchrun --nproc_per_node N scripts/trl_sft.py ...          (or accelerate launch --multi_gpu --num_processes N)

Any synthmix run config: its data and tokenizer sections build the stream (`data_mixers.torch_dataset.MixedStream`,
each process its own share, every epoch at the configured ratio), its model and lora sections the model, its train
section TRL's `SFTConfig` (batch, accumulation, learning rate and schedule, clipping, seed, `report_to`), its
collapse section the `CollapseCallback`. TRL trains on the packed rows as they come (padding-free: position ids
restart per example). At the end of each of the stream's epochs the realized ratio is logged, the collapse hook
evaluates and a checkpoint is written; the hook also evaluates at step 0 and every `collapse.every_steps`, and
checkpoints come every `checkpoint.every_steps`. It leaves OUTPUT_DIR/metrics.jsonl (config, epoch, reference,
eval, alert, resume and end events), OUTPUT_DIR/report.html and the adapter with synthmix's model card in
OUTPUT_DIR/adapter/. `--resume` (latest, or a checkpoint-N folder of OUTPUT_DIR) continues the stream at the next
row.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from synthmix.data_mixers.corpus import build_corpora
from synthmix.data_mixers.torch_dataset import MixedStream
from synthmix.errors import ConfigError, UserError
from synthmix.files import write_text
from synthmix.schema import to_dict
from synthmix.trainer.attention import choose_attention
from synthmix.trainer.cards import CARD, model_card
from synthmix.trainer.config import RunConfig, load_config, run_tokenizer
from synthmix.trainer.distributed import first_then_others, several_cpu_processes
from synthmix.trainer.integrations import CollapseCallback, attach_stream
from synthmix.trainer.model import add_lora, build_model, resolve_dtype
from synthmix.trainer.run_log import METRICS, RunLog, ensure_new_run, read_events

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


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
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every forward: no graph walk per step
    )  # fmt: skip


def build(config: RunConfig) -> tuple[Any, Any]:
    """The SFTTrainer on the stream, with the callbacks attached, and the corpora it was built from."""
    from accelerate import PartialState
    from accelerate.utils import set_seed
    from trl import SFTTrainer

    # On CPU, accelerate joins the launcher's processes into one gloo group only when told it runs on CPU.
    processes = PartialState(cpu=several_cpu_processes())
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
    if config.collapse.enabled:
        held_out = [ids.tolist() for ids in corpora.held_out]
        trainer.add_callback(CollapseCallback(held_out, tokenizer, trainer, config.collapse))
    return trainer, corpora


def _in_output_dir(checkpoint: Path, output: Path) -> bool:
    """A `checkpoint-N` folder right inside `output` (where the Trainer itself writes them)."""
    named = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", checkpoint.name) is not None
    return named and checkpoint.is_dir() and checkpoint.parent.resolve() == output.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a synthmix run config (YAML)")
    parser.add_argument("--output_dir", required=True, help="the run folder: metrics.jsonl, report.html, adapter/")
    parser.add_argument("--resume", help="latest (the newest checkpoint in output_dir) or a checkpoint folder")
    args, overrides = parser.parse_known_args(argv)
    config = load_config(args.config, [*overrides, "--output_dir", args.output_dir])
    output = Path(config.output_dir)
    resume: bool | str | None = True if args.resume == "latest" else args.resume
    if isinstance(resume, str) and not _in_output_dir(Path(resume), output):
        raise ConfigError(f"--resume: {resume} is not a checkpoint-N folder of --output_dir {output} (the "
                          "callbacks read their state beside the Trainer's checkpoints there)")  # fmt: skip
    if resume is True and not (output.is_dir() and get_last_checkpoint(str(output))):
        raise ConfigError(f"--resume latest: {output} holds no checkpoint-N folder to resume")
    if resume is None:
        ensure_new_run(output)
    trainer, corpora = build(config)
    log = RunLog(output, enabled=trainer.is_world_process_zero())
    if resume is None:
        log.event("config", config=to_dict(config), sources=[vars(r) for r in corpora.reports],
                  world_size=trainer.accelerator.num_processes, trainer="trl.SFTTrainer")  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    adapter = output / "adapter"
    trainer.save_model(str(adapter))  # every process takes part
    step, planned = trainer.state.global_step, trainer.args.max_steps
    log.event("end", step=step, status="finished" if step >= planned else "stopped", output=str(adapter))
    if trainer.is_world_process_zero():  # peft wrote a card of its own: synthmix's says what the run trained on
        write_text(adapter / CARD, model_card(read_events(output / METRICS)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
