"""`make demo`: the whole product, offline, in three stages (the first two are cached).

1. Pre-train a small base model on CPython's documentation topics (configs/demo_base.yaml): the stand-in for
   a pretrained checkpoint. Its tokenizer is trained on the same text.
2. Sample a synthetic corpus from that base model with plain ancestral sampling (trainer.generation, the
   writer behind scripts/generate_synthetic.py), prompts taken from the real TRAINING passages.
3. LoRA fine-tune the base model on the real + synthetic mix (configs/demo.yaml) with the collapse hook every
   epoch, and write the report.

    python scripts/demo.py [--samples N] [--cache-dir DIR] [--section.key value ...]   # overrides: stage 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_mixers.corpus import real_training_texts
from data_mixers.errors import MixerError
from trainer.config import RunConfig, load_config
from trainer.errors import TrainerError
from trainer.generation import SamplingConfig, generate_corpus
from trainer.loop import train

SAMPLING = SamplingConfig(max_new_tokens=112, temperature=1.0, batch_size=64, seed=0)


def pretrain_base(config: RunConfig, base: Path) -> None:
    """Stage 1: full training of the small model on the real text; the result is cached in `base`."""
    run_dir = Path(config.output_dir)
    resume = "latest" if (run_dir / "checkpoints").is_dir() else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint
    train(config, resume=resume)
    tmp = base.with_name(f"{base.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run_dir / "model", tmp)
    for file in (run_dir / "tokenizer").iterdir():
        shutil.copy(file, tmp / file.name)
    tmp.rename(base)


def generate_synthetic(config: RunConfig, base: Path, samples: int, out: Path) -> None:
    """Stage 2: sample the synthetic corpus from the base model, prompted by real training passages."""
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    generate_corpus(
        model,
        tokenizer,
        real_training_texts(config.data),
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
    config.model.name = config.tokenizer.name = str(base)
    for source in config.data.sources:
        if source.kind == "synthetic":
            source.path = str(synthetic)
    run_dir = Path(config.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train(config)


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else 0


def main(argv: list[str]) -> int:
    """Run the stages that are not cached yet, then print where the results are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/synthmix/demo"))
    parser.add_argument("--base-config", default="configs/demo_base.yaml")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--samples", type=int, default=1200, help="synthetic passages (~110k tokens by default)")
    args, overrides = parser.parse_known_args(argv)
    base, synthetic = args.cache_dir / "base", args.cache_dir / "synthetic.jsonl"
    started = time.time()
    try:
        base_config = load_config(args.base_config, ["--output_dir", str(args.cache_dir / "base-run")])
        if not (base / "config.json").is_file():
            print("[1/3] pre-training the base model on the real text (cached for the next run)", flush=True)
            pretrain_base(base_config, base)
        else:
            print(f"[1/3] base model: cached in {base}")
        if _lines(synthetic) < args.samples:
            print(f"[2/3] sampling {args.samples} synthetic passages from the base model", flush=True)
            generate_synthetic(base_config, base, args.samples, synthetic)
        else:
            print(f"[2/3] synthetic corpus: cached in {synthetic}")
        print("[3/3] LoRA fine-tuning on the real + synthetic mix, collapse hook every epoch", flush=True)
        run_dir = fine_tune(load_config(args.config, overrides), base, synthetic)
    except (TrainerError, MixerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\ndone in {time.time() - started:.0f} s")
    print(f"report:  {run_dir / 'report.html'}")
    print(f"adapter: {run_dir / 'adapter'}  (PeftModel.from_pretrained(base, this folder); base: {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
