"""The self-consuming loop: generations of training on the previous generation's own output.

    synthmix recursive --config configs/recursive.yaml --generations 5 --strategy replace
    synthmix recursive --config configs/recursive.yaml --generations 5 --strategy accumulate
    synthmix recursive --config configs/recursive.yaml --generations 5 --strategy fixed_real --real-fraction 0.2

Generation 0 is the base model (`model.name` of the config). Generation g samples a synthetic corpus from
generation g-1 (prompts from the real training text), builds its training mix by the strategy, LoRA
fine-tunes the base model on it with the collapse hook, and becomes the sampler of generation g+1:
- `replace`: only the newest synthetic corpus (the setting where models collapse, Shumailov et al. 2024);
- `accumulate`: the real data plus every synthetic corpus so far (stays bounded, Gerstgrasser et al. 2024);
- `fixed_real`: the newest synthetic corpus plus a fixed fraction of real data per generation;
- `adaptive`: starts as `replace`; when a collapse rule fires during generation g, generation g+1 and later mix
  real data back in: their synthetic share is the previous one times `collapse.reduce_factor` (see
  `adaptive_share`).
Each generation is a run folder RUN_DIR/gen-G; a finished generation is skipped on restart and an unfinished
one resumes from its latest checkpoint. RUN_DIR/generations.jsonl sums up every generation's final indicators.

With a served model (`Experiment.served`, `--backend openai`), generation 1's corpus is requested from that
server instead of sampled in-process from `model.name`: serve the base model itself, or a teacher, to start the
loop from its data. Later generations sample in-process from the adapter just trained, as without it (a model
trained inside the loop is not served by anyone). The served corpus resumes where an interrupted call left it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthmix.data_mixers.config import SourceConfig
from synthmix.data_mixers.corpus import real_training_texts
from synthmix.files import write_text
from synthmix.trainer.config import RunConfig, run_tokenizer
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.generation.corpus import generate_corpus
from synthmix.trainer.generation.sampling import SamplingConfig
from synthmix.trainer.generation.served import Endpoint, Prompts, ServedSampling, generate_served
from synthmix.trainer.reporting.events import METRICS, read_events, run_finished
from synthmix.trainer.runtime.loop import train

STRATEGIES = ("replace", "accumulate", "fixed_real", "adaptive")
SUMMARY = "generations.jsonl"


@dataclasses.dataclass
class Experiment:
    """One self-consuming experiment: where it writes, how each generation's data is made and mixed."""

    config: RunConfig
    run_dir: Path
    generations: int
    strategy: str
    real_fraction: float
    samples: int
    sampling: SamplingConfig
    prompt_tokens: int = 16
    served: Endpoint | None = None
    """Generation 1's corpus from this served model (an OpenAI-compatible server) instead of `model.name`."""


def run_experiment(exp: Experiment) -> Path:
    """Run (or continue) every generation, then write generations.jsonl (`synthmix report RUN_DIR` plots it);
    returns RUN_DIR."""
    if exp.config.model.name is None:
        raise TrainerError("model.name: the recursive loop starts from a trained base model (a hub name or folder)")
    if exp.strategy == "adaptive" and not (exp.config.collapse.enabled and exp.config.collapse.rules):
        raise TrainerError(
            "collapse.rules: the adaptive strategy acts on the collapse rules that fire; set at least one rule "
            "(and keep collapse.enabled: true)"
        )
    exp.run_dir.mkdir(parents=True, exist_ok=True)
    real_texts = list(real_training_texts(exp.config.data))
    for generation in range(1, exp.generations + 1):
        folder = exp.run_dir / f"gen-{generation}"
        corpus = folder / "synthetic.jsonl"
        served = generation == 1 and exp.served is not None
        # A served corpus is appended line by line: until its generation trains, a call finishes (or checks) it.
        if not corpus.is_file() or (served and not run_finished(folder) and not (folder / "checkpoints").is_dir()):
            where = f"the served model {exp.served.model}" if served and exp.served else f"generation {generation - 1}"
            print(f"[generation {generation}/{exp.generations}] sampling {exp.samples} texts from {where}", flush=True)
            _sample_corpus(exp, generation, real_texts, corpus)
        if not run_finished(folder):
            share = _generation_config(exp, generation).data.synthetic_ratio
            print(
                f"[generation {generation}/{exp.generations}] fine-tuning ({exp.strategy}, synthetic share "
                f"{share:.3g}{_decision(exp, generation)})",
                flush=True,
            )
            resume = "latest" if (folder / "checkpoints").is_dir() else None
            train(_generation_config(exp, generation), resume=resume)
        _write_summary(exp)
    return exp.run_dir


def _sample_corpus(exp: Experiment, generation: int, real_texts: list[str], out: Path) -> None:
    """Generation g's corpus, sampled from generation g-1 (the base model, or base + its adapter); generation 1's
    requested from `exp.served` instead when set (prompts counted in the run tokenizer's tokens, as in-process)."""
    base = exp.config.model.name
    tokenizer_config = run_tokenizer(exp.config)
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_config.name, trust_remote_code=tokenizer_config.trust_remote_code
    )
    sampling = dataclasses.replace(exp.sampling, seed=exp.sampling.seed + 1000 * generation)
    if generation == 1 and exp.served is not None:
        prompts = Prompts(
            "real training text", real_texts, length=exp.prompt_tokens, tokenizer=tokenizer,
            tokenizer_name=tokenizer_config.name,
        )  # fmt: skip
        generate_served(exp.served, prompts, exp.samples, ServedSampling.from_sampling(sampling), out, progress=True)
        return
    previous = exp.run_dir / f"gen-{generation - 1}"
    if generation > 1 and (previous / "model").is_dir():  # lora.r: 0 trains, and saves, the whole model
        model = AutoModelForCausalLM.from_pretrained(str(previous / "model"), dtype=torch.float32)
        name = str(previous / "model")
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        name = str(base)
        if generation > 1:
            model = PeftModel.from_pretrained(model, str(previous / "adapter"))
            name = f"{base} + adapter {previous / 'adapter'}"
    if torch.cuda.is_available():
        model = model.to("cuda")
    generate_corpus(
        model,
        tokenizer,
        real_texts,
        exp.samples,
        exp.prompt_tokens,
        sampling,
        name,
        "real training text",
        out,
        progress=True,
    )


def _generation_config(exp: Experiment, generation: int) -> RunConfig:
    """The run config of generation g: the base config with its sources and ratio set by the strategy."""
    config = dataclasses.replace(exp.config)
    real = [s for s in exp.config.data.sources if s.kind == "real"]
    newest = [_synthetic_source(exp, generation)]
    if exp.strategy == "replace":
        sources, ratio = real + newest, 1.0  # real stays listed only so the held-out split is the same
    elif exp.strategy == "accumulate":
        sources = real + [_synthetic_source(exp, g) for g in range(1, generation + 1)]
        ratio = generation / (generation + 1)  # every corpus is as large as the real data: use them all once
    elif exp.strategy == "adaptive":
        fired = [bool(_alerts(exp.run_dir / f"gen-{g}")) for g in range(1, generation)]
        sources, ratio = real + newest, adaptive_share(fired, exp.config.collapse.reduce_factor)
    else:
        sources, ratio = real + newest, 1.0 - exp.real_fraction
    data = dataclasses.replace(
        exp.config.data,
        sources=sources,
        synthetic_ratio=ratio,
        allow_repeat=True,
        unit="examples",
        schedule=dataclasses.replace(exp.config.data.schedule, type="constant"),
    )
    return dataclasses.replace(config, data=data, output_dir=str(exp.run_dir / f"gen-{generation}"))


def adaptive_share(fired: list[bool], reduce_factor: float) -> float:
    """The synthetic share of the next generation under `adaptive`, from whether a collapse rule fired in each
    generation so far (fired[0] is generation 1).

    The first generation trains on synthetic data only (share 1, as `replace`). Every generation in which any
    rule fired (at any eval, whatever its action) multiplies the share of all later generations by
    `reduce_factor`; a generation without an alert leaves it as it is. The share never rises again: the
    alerts say how much synthetic data this model and data can take, and a recovered model is the sign that
    the current share is safe, not that a larger one is.
    """
    share = 1.0
    for alerted in fired:
        if alerted:
            share *= reduce_factor
    return share


def _alerts(folder: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(folder / METRICS) if e.get("event") == "alert"]


def _decision(exp: Experiment, generation: int) -> str:
    """Why an adaptive generation has the share it has: the alerts of the generation before it."""
    if exp.strategy != "adaptive" or generation == 1:
        return ""
    fired = sorted({a["indicator"] for a in _alerts(exp.run_dir / f"gen-{generation - 1}")})
    if not fired:
        return f"; no rule fired in generation {generation - 1}"
    return f"; {', '.join(fired)} fired in generation {generation - 1}: x{exp.config.collapse.reduce_factor:g}"


def _synthetic_source(exp: Experiment, generation: int) -> SourceConfig:
    path = exp.run_dir / f"gen-{generation}" / "synthetic.jsonl"
    return SourceConfig(name=f"gen-{generation}", kind="synthetic", path=str(path))


def _write_summary(exp: Experiment) -> None:
    """generations.jsonl, derived from the generation folders (so a restart never duplicates a line)."""
    lines = []
    for generation in range(1, exp.generations + 1):
        events = read_events(exp.run_dir / f"gen-{generation}" / METRICS)
        evals = [e for e in events if e.get("event") == "eval"]
        if not evals or not run_finished(exp.run_dir / f"gen-{generation}"):
            break
        if generation == 1:
            lines.append(_summary_line(exp, 0, evals[0], None))  # the base model, before any update
        share = _generation_config(exp, generation).data.synthetic_ratio
        lines.append(_summary_line(exp, generation, evals[-1], share))
    write_text(exp.run_dir / SUMMARY, "".join(json.dumps(line) + "\n" for line in lines))


def _summary_line(exp: Experiment, generation: int, evaluation: dict[str, Any], share: float | None) -> dict[str, Any]:
    skip = {"event", "time", "step", "epoch", "sampling", "seconds"}
    indicators = {k: v for k, v in evaluation.items() if k not in skip}
    folder = exp.run_dir / f"gen-{generation}"
    return {
        "generation": generation,
        "strategy": exp.strategy,
        "seed": exp.config.seed,
        "real_fraction": exp.real_fraction if exp.strategy == "fixed_real" else None,
        "synthetic_share": share,
        "alerts": sorted({a["indicator"] for a in _alerts(folder)}) if generation else [],
        **indicators,
    }
