"""The run configuration: typed dataclasses for every section of a config file.

YAML maps onto `RunConfig`; `--section.key value` overrides apply on top; unknown keys are errors with a
"did you mean". The data and tokenizer sections are data_mixers' own dataclasses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from data_mixers.config import (
    DataConfig,
    TokenizerConfig,
    build,
    load_yaml,
    merge,
    parse_overrides,
    validate_data,
)
from data_mixers.errors import ConfigError
from trainer.collapse import CollapseConfig, validate_collapse


@dataclasses.dataclass
class ModelConfig:
    """The base model: a hub name or local path, or an architecture built from a config (offline)."""

    name: str | None = None
    """Hub name or local folder of a pretrained causal LM; null builds `arch` with random weights."""
    arch: dict[str, Any] = dataclasses.field(default_factory=dict)
    """A transformers config for a model built from scratch, e.g. {model_type: llama, hidden_size: 128}."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype; auto is bfloat16 on a GPU that supports it, else float32."""
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = "sdpa"
    """Attention kernel. Packed rows use a block-diagonal mask, which sdpa and eager honour."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    trust_remote_code: bool = False
    """Allow a hub model's own code to run (off unless you trust the repository)."""


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapters (peft). `r: 0` trains every weight instead (used to pre-train the demo's base model)."""

    r: int = 8
    """Rank of the adapters; 0 disables LoRA and trains the full model."""
    alpha: int = 16
    """Scaling numerator: updates are scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to adapt (peft matching: exact names or suffixes)."""


@dataclasses.dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: int = 1
    """Passes over the real data (see data.synthetic_ratio for the synthetic share)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total, even mid-epoch."""
    per_device_train_batch_size: int = 8
    """Packed rows of `seq_len` tokens per process per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    seq_len: int = 256
    """Length of each packed row in tokens."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to the peak over this many steps."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up, down to 0 at the last planned step (constant keeps the peak)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; null disables clipping."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision; auto is bf16 on a GPU that supports it, else none (CPU trains in float32)."""
    log_every_steps: int = 1
    """Write a `train` event every this many steps."""
    merge_adapter: bool = False
    """At the end, also save the base model with the adapter merged into it under OUTPUT_DIR/merged/."""
    compile: bool = False
    """torch.compile the model (GPU; the first steps are slower while it compiles)."""
    progress: bool = True
    """Show a progress bar on the main process."""


@dataclasses.dataclass
class CheckpointConfig:
    """Checkpoints under OUTPUT_DIR/checkpoints/step-N (also written at the end of every epoch)."""

    every_steps: int | None = None
    """Also write one every this many optimizer steps."""
    keep_last: int = 2
    """Keep the newest K checkpoints, delete older ones."""


@dataclasses.dataclass
class RunConfig:
    """A whole run: where it writes, what it trains on, how."""

    output_dir: str = "runs/default"
    """The run folder: metrics.jsonl, TensorBoard events, checkpoints/, adapter/, report.html."""
    seed: int = 0
    """Seed of the model's initialisation, dropout and the data stream."""
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    collapse: CollapseConfig = dataclasses.field(default_factory=CollapseConfig)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or only overrides when `path` is None), apply dotted overrides, validate."""
    raw = load_yaml(path) if path is not None else {}
    config = build(RunConfig, merge(raw, parse_overrides(overrides or [])))
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Checks across fields, once, at load time; errors name the key."""
    validate_data(config.data)
    validate_collapse(config.collapse)
    train = config.train
    positive = {
        "train.epochs": train.epochs,
        "train.per_device_train_batch_size": train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.seq_len": train.seq_len,
        "train.log_every_steps": train.log_every_steps,
        "checkpoint.keep_last": config.checkpoint.keep_last,
    }
    if train.max_steps is not None:
        positive["train.max_steps"] = train.max_steps
    if config.checkpoint.every_steps is not None:
        positive["checkpoint.every_steps"] = config.checkpoint.every_steps
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: must be > 0, got {train.learning_rate}")
    if config.lora.r < 0:
        raise ConfigError(f"lora.r: must be >= 0 (0 trains the full model), got {config.lora.r}")
    if config.model.name is None and not config.model.arch:
        raise ConfigError("model: set model.name (hub name or path) or model.arch (a config to build from)")
    if config.model.name is not None and config.model.arch:
        raise ConfigError("model: set model.name or model.arch, not both")
    if config.model.arch and "model_type" not in config.model.arch:
        raise ConfigError("model.arch.model_type: missing (e.g. llama, qwen2, gpt2)")
