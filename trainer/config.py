"""The run configuration: typed dataclasses for every section of a config file, validated once, at load.

YAML maps onto `RunConfig` (synthmix.schema); `--section.key value` overrides apply on top; unknown keys are
errors with a "did you mean". The data and tokenizer sections are data_mixers' own dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from synthmix.data_mixers.config import DataConfig, TokenizerConfig, validate_data
from synthmix.errors import ConfigError
from synthmix.extras import install_command
from synthmix.schema import apply_overrides, build, did_you_mean, load_yaml, parse_overrides

# +1: a higher value is healthier (more diverse, closer to real data); -1: a higher value means more
# collapsed; 0: no direction (reported, never alerted on by direction alone).
INDICATOR_DIRECTION: dict[str, int] = {
    "real_ppl": -1,
    "real_ppl_p50": -1,
    "real_ppl_p90": -1,
    "real_ppl_p99": -1,
    "next_token_entropy": +1,
    "distinct_1": +1,
    "distinct_2": +1,
    "distinct_3": +1,
    "unigram_entropy": +1,
    "self_bleu": -1,
    "repetition_rate": -1,
    "mean_length": 0,
    "std_length": +1,
    "tail_mass": +1,
    "js_divergence": -1,
    "compression_ratio": +1,
    # Drift either way: samples grow over-typical (lower; what the replace loop shows here) or wander where the
    # base model finds text unlikely (higher).
    "sample_base_ppl_mean": 0,
    "sample_base_ppl_p90": 0,
    "vendi_score": +1,
}
# Measured on held-out text, not on samples: the real text has no value of its own to compare them with.
HELD_OUT_INDICATORS = ("real_ppl", "real_ppl_p50", "real_ppl_p90", "real_ppl_p99", "next_token_entropy")
BENCHMARK_PREFIX = "benchmark."
"""Eval-event keys `benchmark.<task>.<metric>` hold lm-evaluation-harness results (collapse.benchmarks)."""


def known_indicators(names: Iterable[str]) -> list[str]:
    """The indicators among `names`, in their documented order, then the benchmark scores (sorted)."""
    present = set(names)
    benchmarks = sorted(name for name in present if name.startswith(BENCHMARK_PREFIX))
    return [name for name in INDICATOR_DIRECTION if name in present] + benchmarks


def indicator_direction(name: str) -> int | None:
    """The healthy direction of an indicator (+1 higher is better, -1 lower, 0 neither); a benchmark score is
    higher-is-better; None for a name that is neither."""
    if name.startswith(BENCHMARK_PREFIX):
        return +1
    return INDICATOR_DIRECTION.get(name)


@dataclasses.dataclass
class SamplingConfig:
    """How text is sampled from a model."""

    max_new_tokens: int = 64
    """Most tokens generated after each prompt (generation also stops at the end-of-sequence token)."""
    temperature: float = 1.0
    """Softmax temperature; 1.0 is plain ancestral sampling (collapse hides behind truncated sampling), 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches this; 1.0 is off."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 is off."""
    num_beams: int = 1
    """Beams; more than 1 is beam search (deterministic when `do_sample` is false, as in Shumailov et al.)."""
    do_sample: bool = True
    """Sample; false is greedy decoding (or beam search when `num_beams` > 1)."""
    batch_size: int = 32
    """Prompts generated together; part of the seed's meaning, since each batch draws from its own seed."""
    seed: int = 0
    """Batch b samples with torch seed `seed + b`, so the same prompts and settings give the same text."""

    @property
    def greedy(self) -> bool:
        """True when decoding takes the most likely token (or beam) instead of sampling."""
        return not self.do_sample or self.temperature == 0


def validate_sampling(sampling: SamplingConfig, key: Callable[[str], str]) -> None:
    """Every sampling setting in range; `key(field)` names the setting as the user wrote it (a dotted config
    key, or a command-line flag)."""
    checks = [
        ("max_new_tokens", sampling.max_new_tokens >= 1, "at least 1"),
        ("temperature", sampling.temperature >= 0, ">= 0 (0 is greedy)"),
        ("top_p", 0 < sampling.top_p <= 1, "in (0, 1]"),
        ("top_k", sampling.top_k >= 0, ">= 0 (0 is off)"),
        ("num_beams", sampling.num_beams >= 1, "at least 1"),
        ("batch_size", sampling.batch_size >= 1, "at least 1"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key(name)}: must be {rule}, got {getattr(sampling, name)!r}")


@dataclasses.dataclass
class AlertRule:
    """Raise an alert when an indicator moves too far from the baseline (or from the real text's value)."""

    indicator: str
    """An indicator name, e.g. distinct_2, real_ppl, tail_mass."""
    direction: Literal["down", "up"]
    """Which move is a warning sign."""
    threshold: float
    """Relative change that triggers, e.g. 0.2 for 20% (an absolute change when the compared value is 0)."""
    against: Literal["baseline", "reference"] = "baseline"
    """Compare with the step-0 baseline, or with the held-out real text's own value (sample indicators only)."""
    action: Literal["warn", "stop", "reduce_ratio"] = "warn"
    """warn: log and print; stop: checkpoint and end the run; reduce_ratio: scale the synthetic ratio down."""


def _default_rules() -> list[AlertRule]:
    return [AlertRule("distinct_2", "down", 0.2), AlertRule("real_ppl", "up", 0.1)]


@dataclasses.dataclass
class BenchmarkConfig:
    """Downstream tasks of lm-evaluation-harness, scored at every eval on the model being trained (in memory)."""

    tasks: list[str] = dataclasses.field(default_factory=list)
    """lm-eval task names (e.g. [arc_easy, hellaswag]) or names of tasks in `include_path`; empty: none."""
    include_path: str | None = None
    """A folder of task YAMLs of your own (lm-eval's --include_path; relative to the working directory)."""
    limit: int | None = None
    """Examples per task (the first ones); null: every example. A small limit keeps evals short."""
    num_fewshot: int = 0
    """Few-shot examples in each prompt."""
    batch_size: int = 8
    """Requests per forward pass."""


@dataclasses.dataclass
class CollapseConfig:
    """The eval hook's inputs, sampling settings and alert rules."""

    enabled: bool = True
    """Run the hook at step 0, at the end of every epoch and at the last step (needs held-out real text)."""
    every_steps: int | None = None
    """Also run it every this many optimizer steps (rules and the report then work per eval)."""
    num_prompts: int = 64
    """Fixed prompts, taken from the held-out real text, that the model continues each time."""
    prompt_tokens: int = 16
    """Tokens of held-out text in each prompt."""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """How samples are drawn; plain ancestral sampling at temperature 1 by default (truncation hides collapse)."""
    max_eval_texts: int = 256
    """Held-out texts scored for real_ppl and next_token_entropy."""
    eval_seq_len: int = 256
    """Tokens of each held-out text scored."""
    eval_batch_size: int = 16
    """Held-out texts per forward pass."""
    tail_share: float = 0.1
    """The rare tail: the least frequent real tokens that make up this share of the held-out token mass."""
    self_bleu_samples: int = 64
    """Samples scored as hypotheses in self_bleu (each against all others), chosen with the sampling seed."""
    rules: list[AlertRule] = dataclasses.field(default_factory=_default_rules)
    """Alert rules, checked at every eval after the baseline."""
    reduce_factor: float = 0.5
    """reduce_ratio multiplies the synthetic ratio of the following epochs by this."""
    report: bool = True
    """Write OUTPUT_DIR/report.html at the end of the run (and of a preemption), and during training after an eval
    when the last write is 5 minutes old or more."""
    benchmarks: BenchmarkConfig = dataclasses.field(default_factory=BenchmarkConfig)
    """lm-evaluation-harness tasks scored at every eval: `benchmark.<task>.<metric>` in the eval events."""


def validate_collapse(config: CollapseConfig) -> None:
    """Rules name known indicators; counts, factors and sampling settings are in range."""
    validate_sampling(config.sampling, lambda name: f"collapse.sampling.{name}")
    for i, rule in enumerate(config.rules):
        if indicator_direction(rule.indicator) is None:
            known = ", ".join(sorted(INDICATOR_DIRECTION))
            raise ConfigError(
                f"collapse.rules[{i}].indicator: unknown {rule.indicator!r} (known: {known}, and "
                f"{BENCHMARK_PREFIX}<task>.<metric> for collapse.benchmarks)"
            )
        if rule.threshold <= 0:
            raise ConfigError(f"collapse.rules[{i}].threshold: must be > 0, got {rule.threshold}")
        if rule.indicator.startswith(BENCHMARK_PREFIX):
            _validate_benchmark_rule(config, i, rule)
        elif rule.against == "reference" and rule.indicator in HELD_OUT_INDICATORS:
            raise ConfigError(
                f"collapse.rules[{i}].against: {rule.indicator} is measured on the held-out text itself, so it "
                "has no reference value; use against: baseline"
            )
    if config.every_steps is not None and config.every_steps < 1:
        raise ConfigError(f"collapse.every_steps: must be at least 1 (or null), got {config.every_steps}")
    if not 0 < config.reduce_factor < 1:
        raise ConfigError(f"collapse.reduce_factor: must be in (0, 1), got {config.reduce_factor}")
    if not 0 < config.tail_share <= 1:
        raise ConfigError(f"collapse.tail_share: must be in (0, 1], got {config.tail_share}")
    counts = ("num_prompts", "prompt_tokens", "max_eval_texts", "eval_seq_len", "eval_batch_size", "self_bleu_samples")
    for key in counts:
        if getattr(config, key) < 1:
            raise ConfigError(f"collapse.{key}: must be at least 1, got {getattr(config, key)}")
    _validate_benchmarks(config.benchmarks)


def _validate_benchmark_rule(config: CollapseConfig, i: int, rule: AlertRule) -> None:
    task = rule.indicator.removeprefix(BENCHMARK_PREFIX).split(".")[0]
    if task not in config.benchmarks.tasks:
        raise ConfigError(
            f"collapse.rules[{i}].indicator: {rule.indicator} names task {task!r}, which collapse.benchmarks.tasks "
            f"does not list ({config.benchmarks.tasks or 'empty'})"
        )
    if rule.against == "reference":
        raise ConfigError(
            f"collapse.rules[{i}].against: {rule.indicator} is a benchmark score of the model, so it has no "
            "reference value; use against: baseline"
        )


def _validate_benchmarks(benchmarks: BenchmarkConfig) -> None:
    for key in ("limit", "batch_size"):
        value = getattr(benchmarks, key)
        if value is not None and value < 1:
            raise ConfigError(f"collapse.benchmarks.{key}: must be at least 1, got {value}")
    if benchmarks.num_fewshot < 0:
        raise ConfigError(f"collapse.benchmarks.num_fewshot: must be at least 0, got {benchmarks.num_fewshot}")
    for i, task in enumerate(benchmarks.tasks):
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(f"collapse.benchmarks.tasks[{i}]: a task name expected, got {task!r}")


@dataclasses.dataclass
class QuantizationConfig:
    """The frozen base model quantized with bitsandbytes (QLoRA); the adapters train in full precision."""

    bits: Literal[4, 8] | None = None
    """4 (QLoRA: 4-bit blocks) or 8 (LLM.int8); null keeps the base in `model.dtype`."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: nf4 (normal float, QLoRA's) or fp4."""
    double_quant: bool = True
    """4-bit: quantize the quantization constants too (about 0.4 bits per weight less)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """4-bit: the dtype the de-quantized matmuls run in; auto is bfloat16 on a GPU that supports it, else float32."""


@dataclasses.dataclass
class ModelConfig:
    """The base model: a hub name or local path, or an architecture built from a config (offline)."""

    name: str | None = None
    """Hub name or local folder of a pretrained causal LM; null builds `arch` with random weights."""
    arch: dict[str, Any] = dataclasses.field(default_factory=dict)
    """A transformers config for a model built from scratch, e.g. {model_type: llama, hidden_size: 128}."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype; auto is bfloat16 on a GPU that supports it, else float32."""
    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] = "auto"
    """Attention kernel; every one keeps packed examples apart (flash: variable-length from position ids,
    flex: a BlockMask, sdpa/eager: a dense mask). auto: flash-attn 3, 2, then flex on a GPU; sdpa on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    trust_remote_code: bool = False
    """Allow a hub model's own code to run (off unless you trust the repository)."""
    quantization: QuantizationConfig = dataclasses.field(default_factory=QuantizationConfig)


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapters (peft). `r: 0` trains every weight instead (used to pre-train the demo's base model)."""

    r: int = 8
    """Rank of the adapters; 0 disables LoRA and trains the full model."""
    alpha: int = 16
    """Scaling numerator: updates are scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    target_modules: list[str] | Literal["all-linear"] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names to adapt (peft matching: exact names or suffixes), or all-linear (every linear layer but the
    output head)."""
    use_dora: bool = False
    """DoRA: learn each weight's magnitude apart from its direction (slower steps, often better at low rank)."""
    use_rslora: bool = False
    """rsLoRA: scale updates by alpha / sqrt(r) instead of alpha / r (keeps high ranks learning)."""
    modules_to_save: list[str] = dataclasses.field(default_factory=list)
    """Modules trained in full and saved with the adapter, e.g. [lm_head, embed_tokens] for new tokens."""
    init: str = "default"
    """Adapter initialisation: default (B = 0), gaussian, pissa (principal singular vectors; pissa_niter_N for
    the fast randomized SVD), olora (QR), or orthogonal; see peft's init_lora_weights."""


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
    loss: Literal["auto", "chunked", "liger", "full"] = "auto"
    """How the loss is computed: `chunked` from the hidden states in chunks of tokens (never the full logits);
    `liger` (CUDA, liger-kernel installed); `full` from the model's logits; auto: liger where it checks out,
    else chunked."""
    sharding: Literal["auto", "none", "fsdp2"] = "auto"
    """Shard the model over the processes with FSDP2: auto follows the launch config (distributed_type: FSDP);
    fsdp2 shards under any launcher (torchrun); none refuses an FSDP launch config."""
    progress: bool = True
    """Show a progress bar on the main process."""
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers (accelerate's tracking API): tensorboard, wandb, mlflow, trackio, aim, or [none]."""
    tracker_project: str = "synthmix"
    """The trackers' project (wandb project, mlflow experiment, TensorBoard folder under OUTPUT_DIR/tensorboard)."""


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


def load_config(path: str | Path | None, overrides: list[str] | None = None, data_only: bool = False) -> RunConfig:
    """Read a YAML run config (or only overrides when `path` is None), apply dotted overrides, validate.

    Every key is checked against the schema; `data_only` (for `synthmix inspect`) runs only the data section's
    cross-field checks, so a config that describes a mix and no model can be inspected.
    """
    raw = load_yaml(path) if path is not None else {}
    config = build(RunConfig, apply_overrides(raw, parse_overrides(overrides or [])))
    if data_only:
        validate_data(config.data)
    else:
        validate(config)
    return config


def run_tokenizer(config: RunConfig) -> TokenizerConfig:
    """The tokenizer the run uses: tokenizer.name when set; else the model's own (model.name, trusted as the
    model is); else None, a BPE trained on the real text for a model built from model.arch."""
    tokenizer, model = config.tokenizer, config.model
    if tokenizer.name is not None or model.name is None:
        return tokenizer
    trust = tokenizer.trust_remote_code or model.trust_remote_code
    return dataclasses.replace(tokenizer, name=model.name, trust_remote_code=trust)


def tokenizer_origin(config: RunConfig) -> str:
    """Why the run has its tokenizer, in words (the `config` event records it)."""
    if config.tokenizer.name is not None:
        return "tokenizer.name"
    if config.model.name is not None:
        return "the model's own (tokenizer.name is null)"
    return "a byte-level BPE trained on the real text (tokenizer.name is null, the model is built from model.arch)"


def validate(config: RunConfig) -> None:
    """Checks across fields; errors name the dotted key. Called at load and again by `train` (for configs
    that a job changed after loading)."""
    validate_data(config.data)
    validate_collapse(config.collapse)
    _validate_counts(config)
    _validate_model(config)
    _validate_trackers(config)


TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "aim")
"""train.report_to names, each the module that must import; each but tensorboard (a dependency) is the synthmix
extra of the same name."""


def _validate_trackers(config: RunConfig) -> None:
    import importlib.util

    names = config.train.report_to
    if "none" in names and len(names) > 1:
        raise ConfigError(f"train.report_to: 'none' means no tracker, so it comes alone (got {names})")
    for name in names:
        if name == "none":
            continue
        if name not in TRACKERS:
            raise ConfigError(f"train.report_to: unknown tracker {name!r}{did_you_mean(name, [*TRACKERS, 'none'])}")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.report_to: {name} is not installed; {install_command(name)}")


def _validate_counts(config: RunConfig) -> None:
    train = config.train
    positive = {
        "train.epochs": train.epochs,
        "train.per_device_train_batch_size": train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.seq_len": train.seq_len,
        "train.log_every_steps": train.log_every_steps,
        "checkpoint.keep_last": config.checkpoint.keep_last,
        "train.max_steps": train.max_steps,
        "checkpoint.every_steps": config.checkpoint.every_steps,
    }
    for key, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: must be > 0, got {train.learning_rate}")
    if train.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps: must be >= 0, got {train.warmup_steps}")
    if config.lora.r < 0:
        raise ConfigError(f"lora.r: must be >= 0 (0 trains the full model), got {config.lora.r}")
    _validate_lora(config)


LORA_INITS = ("default", "gaussian", "pissa", "olora", "orthogonal")


def _validate_lora(config: RunConfig) -> None:
    lora, bits = config.lora, config.model.quantization.bits
    if lora.init not in LORA_INITS and not re.fullmatch(r"pissa_niter_[1-9]\d*", lora.init):
        raise ConfigError(f"lora.init: expected one of {', '.join(LORA_INITS)} or pissa_niter_N, got {lora.init!r}")
    if bits is None:
        return
    if lora.r == 0:
        raise ConfigError(f"model.quantization.bits: {bits}-bit weights cannot be trained in full; set lora.r > 0")
    if lora.init.startswith(("pissa", "olora")):
        raise ConfigError(
            f"lora.init: {lora.init} decomposes the base weights, which model.quantization.bits: {bits} has "
            "quantized; use default (or quantize after initialising, outside synthmix)"
        )
    if config.train.merge_adapter:
        raise ConfigError(
            f"train.merge_adapter: the base is quantized ({bits}-bit); merge the saved adapter into the "
            "unquantized base instead (PeftModel.from_pretrained(base, 'OUTPUT_DIR/adapter').merge_and_unload())"
        )
    if config.train.sharding == "fsdp2":
        raise ConfigError("train.sharding: fsdp2 cannot shard a bitsandbytes-quantized base; use DDP")


def _validate_model(config: RunConfig) -> None:
    model = config.model
    if model.name is None and not model.arch:
        raise ConfigError("model: set model.name (hub name or path) or model.arch (a config to build from)")
    if model.name is not None and model.arch:
        raise ConfigError("model: set model.name or model.arch, not both (--model.arch '{}' clears the arch)")
    if model.arch and "model_type" not in model.arch:
        raise ConfigError("model.arch.model_type: missing (e.g. llama, qwen2, gpt2)")
    if config.data.filters.verifier.model == "base" and model.name is None:
        raise ConfigError(
            "data.filters.verifier.model: 'base' scores with the run's base model, but model.arch builds an "
            "untrained one; name a trained verifier model (a hub name or folder)"
        )
    limit = known_max_positions(model)
    if limit is not None:
        for key, value in (
            ("train.seq_len", config.train.seq_len),
            ("collapse.eval_seq_len", config.collapse.eval_seq_len),
        ):
            if key.startswith("collapse") and not config.collapse.enabled:
                continue
            if value > limit:
                raise ConfigError(f"{key}: {value} is more than the model's max_position_embeddings ({limit})")


def known_max_positions(model: ModelConfig) -> int | None:
    """The model's `max_position_embeddings` when it can be known without a download: from `arch` (or its model
    type's default), or from the config.json of a local folder; None for a hub name (checked once it loads)."""
    if model.arch:
        if "max_position_embeddings" in model.arch:
            return int(model.arch["max_position_embeddings"])
        from transformers import AutoConfig

        try:
            default = AutoConfig.for_model(model.arch["model_type"])
        except ValueError as err:
            raise ConfigError(f"model.arch.model_type: {str(err).splitlines()[0]}") from None
        return getattr(default, "max_position_embeddings", None)
    config_file = Path(model.name or "") / "config.json"
    if config_file.is_file():
        value = json.loads(config_file.read_text()).get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None
    return None
