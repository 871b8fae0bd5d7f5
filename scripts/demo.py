"""`make demo`: the whole product, offline, in three stages (the first two are cached).

1. Pre-train a small base model on CPython's documentation topics (configs/demo_base.yaml): the stand-in for
   a pretrained checkpoint. Its tokenizer is trained on the same text.
2. Sample a synthetic corpus from that base model with plain ancestral sampling (trainer.generation, the
   writer behind scripts/generate_synthetic.py), prompts taken from the real TRAINING passages.
3. LoRA fine-tune the base model on the real + synthetic mix (configs/demo.yaml) with the collapse hook every
   epoch, and write the report.

    python scripts/demo.py [--section.key value ...]     # overrides apply to stage 3
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_mixers.corpus import real_training_texts
from data_mixers.errors import MixerError
from trainer.config import load_config
from trainer.errors import TrainerError
from trainer.generation import SamplingConfig, generate_corpus
from trainer.loop import train

DEMO_CACHE = Path(".cache/synthmix/demo")
BASE = DEMO_CACHE / "base"
SYNTHETIC = DEMO_CACHE / "synthetic.jsonl"
SYNTHETIC_SAMPLES = 1200  # ~110k tokens: the 0.5 ratio needs ~91k, and samples may stop early at eos
SAMPLING = SamplingConfig(max_new_tokens=112, temperature=1.0, batch_size=64, seed=0)


def pretrain_base() -> None:
    """Stage 1: full training of the small model on the real text; the result is cached in BASE."""
    config = load_config("configs/demo_base.yaml")
    run_dir = Path(config.output_dir)
    resume = "latest" if (run_dir / "checkpoints").is_dir() else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint
    train(config, resume=resume)
    tmp = BASE.with_name("base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run_dir / "model", tmp)
    for file in (run_dir / "tokenizer").iterdir():
        shutil.copy(file, tmp / file.name)
    tmp.rename(BASE)


def generate_synthetic() -> None:
    """Stage 2: sample the synthetic corpus from the base model, prompted by real training passages."""
    train_texts = real_training_texts(load_config("configs/demo_base.yaml").data)
    tokenizer = AutoTokenizer.from_pretrained(str(BASE))
    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
    generate_corpus(
        model,
        tokenizer,
        train_texts,
        SYNTHETIC_SAMPLES,
        prompt_tokens=16,
        sampling=SAMPLING,
        generator_name=str(BASE),
        prompt_file="builtin:python_docs",
        out_path=SYNTHETIC,
        progress=True,
    )


def fine_tune(overrides: list[str]) -> Path:
    """Stage 3: LoRA on the mix, with the collapse hook; a previous demo run folder is replaced."""
    config = load_config("configs/demo.yaml", overrides)
    run_dir = Path(config.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train(config)


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else 0


def main(argv: list[str]) -> int:
    """Run the stages that are not cached yet, then print where the results are."""
    started = time.time()
    try:
        if not (BASE / "config.json").is_file():
            print("[1/3] pre-training the base model on the real text (cached for the next run)", flush=True)
            pretrain_base()
        else:
            print(f"[1/3] base model: cached in {BASE}")
        if _lines(SYNTHETIC) < SYNTHETIC_SAMPLES:
            print(f"[2/3] sampling {SYNTHETIC_SAMPLES} synthetic passages from the base model", flush=True)
            generate_synthetic()
        else:
            print(f"[2/3] synthetic corpus: cached in {SYNTHETIC}")
        print("[3/3] LoRA fine-tuning on the real + synthetic mix, collapse hook every epoch", flush=True)
        run_dir = fine_tune(argv)
    except (TrainerError, MixerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\ndone in {time.time() - started:.0f} s")
    print(f"report:  {run_dir / 'report.html'}")
    print(f"adapter: {run_dir / 'adapter'}  (PeftModel.from_pretrained(base, this folder); base: {BASE})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
