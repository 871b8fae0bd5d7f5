"""`synthmix demo` (what `make demo` runs): the whole product, offline, in three stages (the first two cached).

1. Pre-train a small base model on CPython's documentation topics (configs/demo_base.yaml): the stand-in for
   a pretrained checkpoint. Its tokenizer is trained on the same text.
2. Sample a synthetic corpus from that base model with plain ancestral sampling (the writer behind
   `synthmix generate`), prompts taken from the real TRAINING passages.
3. LoRA fine-tune the base model on the real + synthetic mix (configs/demo.yaml) with the collapse hook every
   epoch, and write the report.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthmix.data_mixers.corpus import real_training_texts
from synthmix.files import atomic_folder
from synthmix.trainer.config import RunConfig
from synthmix.trainer.generation.corpus import generate_corpus
from synthmix.trainer.generation.sampling import SamplingConfig
from synthmix.trainer.runtime.loop import train

SAMPLING = SamplingConfig(max_new_tokens=112, temperature=1.0, batch_size=64, seed=0)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Where the demo left its results."""

    run_dir: Path
    base: Path
    seconds: float


def run_demo(base_config: RunConfig, config: RunConfig, cache_dir: Path, samples: int) -> DemoResult:
    """Run the stages that are not cached yet, printing each stage's headline."""
    started = time.time()
    base, synthetic = cache_dir / "base", cache_dir / "synthetic.jsonl"
    if not (base / "config.json").is_file():
        print("[1/3] pre-training the base model on the real text (cached for the next run)", flush=True)
        pretrain_base(base_config, base)
    else:
        print(f"[1/3] base model: cached in {base}")
    if _lines(synthetic) < samples:
        print(f"[2/3] sampling {samples} synthetic passages from the base model", flush=True)
        generate_synthetic(base_config, base, samples, synthetic)
    else:
        print(f"[2/3] synthetic corpus: cached in {synthetic}")
    print("[3/3] LoRA fine-tuning on the real + synthetic mix, collapse hook every epoch", flush=True)
    run_dir = fine_tune(config, base, synthetic)
    return DemoResult(run_dir, base, time.time() - started)


def pretrain_base(config: RunConfig, base: Path) -> None:
    """Stage 1: full training of the small model on the real text; the result is cached in `base`."""
    run_dir = Path(config.output_dir)
    resume = "latest" if (run_dir / "checkpoints").is_dir() else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint
    train(config, resume=resume)
    with atomic_folder(base) as folder:
        shutil.copytree(run_dir / "model", folder, dirs_exist_ok=True)
        shutil.copytree(run_dir / "tokenizer", folder, dirs_exist_ok=True)


def generate_synthetic(config: RunConfig, base: Path, samples: int, out: Path) -> None:
    """Stage 2: sample the synthetic corpus from the base model, prompted by real training passages."""
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    generate_corpus(
        model,
        tokenizer,
        list(real_training_texts(config.data)),
        samples,
        prompt_tokens=16,
        sampling=SAMPLING,
        generator_name=str(base),
        prompt_file="real training text",
        out_path=out,
        progress=True,
    )


def fine_tune(config: RunConfig, base: Path, synthetic: Path) -> Path:
    """Stage 3: LoRA on the mix, with the collapse hook; a previous demo run folder is replaced."""
    sources = [
        dataclasses.replace(source, path=str(synthetic)) if source.kind == "synthetic" else source
        for source in config.data.sources
    ]
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, name=str(base), arch={}),  # and its own tokenizer
        data=dataclasses.replace(config.data, sources=sources),
    )
    run_dir = Path(config.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train(config)  # validates the changed config again


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else 0
