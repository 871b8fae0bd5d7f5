"""The data section of a run config: sources, the ratio and its schedule, hygiene, and the tokenizer.

Dataclasses with a default and a one-line docstring per field (the YAML-to-dataclass machinery is
`synthmix.schema`); `validate_data` holds every check that spans fields, so a config is checked once, at load.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from synthmix.data_mixers.chat_templates import CHAT_TEMPLATES, is_jinja_template
from synthmix.errors import ConfigError

KINDS = ("real", "synthetic")
"""The two kinds of training text, in the order every per-kind count is listed."""
Kind = Literal["real", "synthetic"]


@dataclasses.dataclass
class SourceConfig:
    """One corpus: where it lies, whether it is real or synthetic, and which field holds the text."""

    name: str = ""
    """Name used in logs, provenance and per-source counts; unique within the config."""
    kind: Kind = "real"
    """`real` (human-written) or `synthetic` (model-generated)."""
    path: str | None = None
    """Local file or folder (.jsonl, .parquet, .csv, .txt, folder of .txt, or a `save_to_disk` folder)."""
    hub: str | None = None
    """A Hugging Face hub dataset name, loaded with `datasets.load_dataset` (needs network)."""
    builtin: Literal["python_docs", "python_docstrings"] | None = None
    """A human-written corpus that ships with Python (offline): its documentation topics or docstrings."""
    split: str = "train"
    """Split to read from a hub dataset or a DatasetDict folder."""
    format: Literal["auto", "jsonl", "parquet", "csv", "text", "arrow"] = "auto"
    """File format; `auto` decides from the file extension or folder contents."""
    text_field: str = "text"
    """Field that holds plain text (ignored when `messages_field` is set)."""
    messages_field: str | None = None
    """Field that holds a chat as a list of {role, content}; rendered with the tokenizer's chat template."""
    prompt_field: str | None = None
    """With `completion_field`: a prompt-completion source (two strings, or two chats for conversational ones)."""
    completion_field: str | None = None
    """The field holding the completion of a prompt-completion source."""
    weight: float | None = None
    """Share of its kind's budget relative to the other sources of that kind; null means proportional to size."""
    on_error: Literal["raise", "skip"] = "raise"
    """What a malformed record does: stop with an error naming file and line, or skip it and count it."""
    max_examples: int | None = None
    """Read at most this many records (after skipping bad ones)."""


@dataclasses.dataclass
class ScheduleConfig:
    """How the synthetic ratio changes from epoch to epoch."""

    type: Literal["constant", "linear", "cosine", "steps"] = "constant"
    """`constant` uses data.synthetic_ratio; `linear`/`cosine` go from `start` to `end`; `steps` is piecewise."""
    start: float | None = None
    """Ratio at the first epoch (linear, cosine); defaults to data.synthetic_ratio."""
    end: float | None = None
    """Ratio at the last epoch (linear, cosine)."""
    steps: list[list[float]] = dataclasses.field(default_factory=list)
    """Piecewise constant: [[first_epoch, ratio], ...] sorted by epoch; epochs are 1-based."""


@dataclasses.dataclass
class VerifierConfig:
    """Score each synthetic example by its perplexity under a reference model; keep it only when real text is
    at least as unlikely (Feng et al. 2024). Results are cached in the store's cleaning entry."""

    model: str | None = None
    """A hub name or local folder of a causal LM, or `base` (the run's model.name); null turns the filter off."""
    quantile: float = 0.9
    """Keep synthetic examples whose perplexity is at most this quantile of the real examples' (the upper
    bound: text less likely than this is too surprising)."""
    min_quantile: float | None = None
    """The lower bound of a two-sided band: drop synthetic examples whose perplexity is below this quantile of
    the real examples' (over-typical text; Gambetta et al. 2024); null keeps every likely example. Below
    `quantile`."""
    real_from: Literal["held_out", "train"] = "held_out"
    """Which real examples set the bar: the held-out ones (a base model trained on the training text would
    score that text optimistically), or the training ones."""
    max_ppl: float | None = None
    """An absolute perplexity limit, used instead of `quantile`."""
    min_ppl: float | None = None
    """An absolute lower perplexity limit, used instead of `min_quantile`."""
    real_examples: int = 512
    """Real examples scored to place the quantile (a seeded subset when there are more)."""
    max_tokens: int = 256
    """Tokens of each example scored."""
    batch_size: int = 16
    """Examples per forward pass."""
    trust_remote_code: bool = False
    """Let a hub verifier model run its own code."""


@dataclasses.dataclass
class DiversityConfig:
    """Diversity-aware selection of synthetic examples, over hashed token n-grams: drop near-duplicates of other
    synthetic examples, and examples that add next to nothing to the real training text. Off unless a limit is
    set; runs after the verifier, cached in the store's cleaning entry."""

    ngram: int = 5
    """n of the token n-grams compared (examples shorter than n tokens are kept and not compared)."""
    max_overlap: float | None = None
    """Drop a synthetic example whose n-gram set has a Jaccard similarity above this (0..1, exclusive) with a
    synthetic example kept before it (examples taken in the order of their content hashes; MinHash LSH finds
    the candidates, an exact Jaccard decides)."""
    min_novelty: float | None = None
    """Drop a synthetic example when less than this share (0..1] of its distinct n-grams is absent from the
    real training text."""


@dataclasses.dataclass
class FilterConfig:
    """Quality filters applied to synthetic examples only (real text is never filtered)."""

    min_tokens: int = 1
    """Drop synthetic examples shorter than this many tokens."""
    max_tokens: int | None = None
    """Drop synthetic examples longer than this many tokens."""
    ngram: int = 4
    """n of the n-grams counted by `max_repeated_ngram_rate`."""
    max_repeated_ngram_rate: float | None = None
    """Drop synthetic examples whose share of repeated n-grams exceeds this (0..1)."""
    verifier: VerifierConfig = dataclasses.field(default_factory=VerifierConfig)
    """The model-based filter (off unless `verifier.model` is set)."""
    diversity: DiversityConfig = dataclasses.field(default_factory=DiversityConfig)
    """Near-duplicate and novelty selection (off unless `max_overlap` or `min_novelty` is set)."""


@dataclasses.dataclass
class HeldOutConfig:
    """The held-out real text used by the collapse hook and by the contamination check."""

    fraction: float = 0.05
    """Share of real examples kept out of training (at least one; chosen by a hash of their text, so stable)."""
    max_examples: int | None = 256
    """Cap on the number of held-out examples taken by `fraction`."""
    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    """Explicit held-out corpora, used in addition to `fraction`."""


@dataclasses.dataclass
class DataConfig:
    """What the model sees, and in what proportion."""

    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    """Training corpora, each with a `kind`."""
    synthetic_ratio: float = 0.0
    """Fraction of the training stream that is synthetic, in [0, 1], counted in `unit`."""
    unit: Literal["tokens", "examples"] = "tokens"
    """Count the ratio in tokens (default) or in examples."""
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    """How the ratio changes over epochs."""
    allow_repeat: bool = False
    """Let synthetic examples repeat within an epoch when the ratio needs more than there is."""
    stratify: bool = False
    """Hold the ratio in every batch (smooth interleave), not only over the epoch (random interleave)."""
    dedup: bool = True
    """Remove exact duplicates across all sources (first occurrence wins, real before synthetic)."""
    contamination: Literal["drop", "error"] = "drop"
    """Training examples equal to a held-out example are dropped (and counted), or stop the run."""
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    """Quality filters for synthetic text."""
    held_out: HeldOutConfig = dataclasses.field(default_factory=HeldOutConfig)
    """Held-out real text."""
    max_tokens_per_example: int | None = None
    """Truncate longer examples to this many tokens (null keeps them whole)."""
    packing: Literal["auto", "wrap", "bfd"] = "auto"
    """How examples fill rows: `wrap` continues an example in the next row (continuous text); `bfd`
    (best-fit decreasing) keeps every example whole in one row (instruction and chat data); `auto` is bfd when
    a source is a chat or prompt-completion source, else wrap."""
    overflow: Literal["truncate", "split", "drop"] = "truncate"
    """With packing: bfd, an example longer than train.seq_len is cut to it, split into row-sized pieces, or
    dropped (each counted)."""
    cache_dir: str = ".cache/synthmix"
    """The data cache: the tokenized store and locally trained tokenizers (every run with the same data reuses
    it; relative to the working directory)."""
    cache_shared: bool = True
    """cache_dir is on a file system every node sees (one process builds); false: one builder per node."""
    verify_cache: Literal["full", "sizes"] = "full"
    """Check every store file's SHA-256 when mapping it (reads every byte at each start), or only its size."""
    add_eos: bool = True
    """Append the tokenizer's end-of-sequence token to every plain-text example."""
    assistant_only_loss: bool = False
    """For chat (`messages_field`) sources, train on the assistant's tokens only."""
    completion_only_loss: bool = True
    """For prompt-completion sources, train on the completion's tokens only (TRL's default too)."""
    chat_template: str | None = None
    """How chats are rendered: null is the tokenizer's own chat template; `chatml`, or a Jinja template string,
    replaces it (for a base model's tokenizer, which has none); saved with the run's tokenizer."""


@dataclasses.dataclass
class TokenizerConfig:
    """The run's tokenizer: a hub name or local path, the model's own, or a byte-level BPE trained on the real
    sources."""

    name: str | None = None
    """Hub name or local folder; null is the model's own tokenizer when model.name is set, and a byte-level BPE
    trained on the real training text (cached) when the model is built from model.arch."""
    vocab_size: int = 4096
    """Vocabulary size of a locally trained tokenizer (cached under data.cache_dir)."""
    trust_remote_code: bool = False
    """Allow code from the hub to run when loading `name` (off unless you trust the repository)."""


def resolved_packing(data: DataConfig) -> str:
    """`wrap` or `bfd`: data.packing, with `auto` deciding by the sources' form (whole examples for chats and
    prompt-completion pairs, whose replies must not be cut from their prompts)."""
    if data.packing != "auto":
        return data.packing
    structured = any(s.messages_field is not None or s.prompt_field is not None for s in data.sources)
    return "bfd" if structured else "wrap"


def validate_data(data: DataConfig) -> None:
    """Checks that span several fields: sources, weights, ratios the schedule can produce, fractions in range."""
    if not data.sources:
        raise ConfigError("data.sources: at least one source is needed")
    validate_sources(data)
    for kind in KINDS:
        weighted = [s.weight is not None for s in data.sources if s.kind == kind]
        if any(weighted) and not all(weighted):
            raise ConfigError(f"data.sources: give every {kind} source a weight, or none of them")
    if not 0.0 <= data.held_out.fraction < 1.0:
        raise ConfigError(f"data.held_out.fraction: must be in [0, 1), got {data.held_out.fraction}")
    if data.held_out.max_examples is not None and data.held_out.max_examples < 1:
        raise ConfigError(f"data.held_out.max_examples: must be at least 1, got {data.held_out.max_examples}")
    if data.filters.max_repeated_ngram_rate is not None and not 0 <= data.filters.max_repeated_ngram_rate <= 1:
        raise ConfigError("data.filters.max_repeated_ngram_rate: must be in [0, 1]")
    for key, value in (("max_tokens_per_example", data.max_tokens_per_example), ("filters.ngram", data.filters.ngram)):
        if value is not None and value < 1:
            raise ConfigError(f"data.{key}: must be at least 1, got {value}")
    validate_verifier(data.filters.verifier)
    validate_diversity(data.filters.diversity)
    validate_schedule(data)
    _validate_chat_template(data.chat_template)


def _validate_chat_template(choice: str | None) -> None:
    if choice is not None and choice not in CHAT_TEMPLATES and not is_jinja_template(choice):
        names = ", ".join(CHAT_TEMPLATES)
        raise ConfigError(
            f"data.chat_template: expected {names} or a Jinja template ({{% for message in messages %}}...), "
            f"got {choice!r}"
        )


def validate_verifier(verifier: VerifierConfig) -> None:
    """Quantile in [0, 1], a positive limit, counts at least 1."""
    key = "data.filters.verifier"
    if not 0 <= verifier.quantile <= 1:
        raise ConfigError(f"{key}.quantile: must be in [0, 1], got {verifier.quantile}")
    if verifier.max_ppl is not None and verifier.max_ppl <= 0:
        raise ConfigError(f"{key}.max_ppl: must be > 0, got {verifier.max_ppl}")
    if verifier.min_ppl is not None and verifier.min_ppl <= 0:
        raise ConfigError(f"{key}.min_ppl: must be > 0, got {verifier.min_ppl}")
    if verifier.min_quantile is not None:
        if not 0 <= verifier.min_quantile <= 1:
            raise ConfigError(f"{key}.min_quantile: must be in [0, 1], got {verifier.min_quantile}")
        if verifier.max_ppl is None and verifier.min_quantile >= verifier.quantile:
            raise ConfigError(
                f"{key}.min_quantile: must be below quantile ({verifier.quantile}), got {verifier.min_quantile}"
            )
    if verifier.min_ppl is not None and verifier.max_ppl is not None and verifier.min_ppl >= verifier.max_ppl:
        raise ConfigError(f"{key}.min_ppl: must be below max_ppl ({verifier.max_ppl}), got {verifier.min_ppl}")
    for name, least in (("real_examples", 1), ("max_tokens", 2), ("batch_size", 1)):  # 2: one token predicts the next
        if getattr(verifier, name) < least:
            raise ConfigError(f"{key}.{name}: must be at least {least}, got {getattr(verifier, name)}")


def validate_diversity(diversity: DiversityConfig) -> None:
    """n at least 1, the overlap in (0, 1), the novelty in (0, 1]."""
    key = "data.filters.diversity"
    if diversity.ngram < 1:
        raise ConfigError(f"{key}.ngram: must be at least 1, got {diversity.ngram}")
    if diversity.max_overlap is not None and not 0 < diversity.max_overlap < 1:
        raise ConfigError(f"{key}.max_overlap: must be in (0, 1), got {diversity.max_overlap}")
    if diversity.min_novelty is not None and not 0 < diversity.min_novelty <= 1:
        raise ConfigError(f"{key}.min_novelty: must be in (0, 1], got {diversity.min_novelty}")


def validate_sources(data: DataConfig) -> None:
    """Every source (training or held out) has a unique name, exactly one origin, and counts in range."""
    seen: set[str] = set()
    listed = [("data.sources", data.sources), ("data.held_out.sources", data.held_out.sources)]
    for where, sources in listed:
        for i, source in enumerate(sources):
            key = f"{where}[{i}]"
            if not source.name:
                raise ConfigError(f"{key}.name: every source needs a name")
            if source.name in seen:
                raise ConfigError(f"{key}.name: the name {source.name!r} is used twice")
            seen.add(source.name)
            origins = [k for k in ("path", "hub", "builtin") if getattr(source, k) is not None]
            if len(origins) != 1:
                got = ", ".join(origins) or "none"
                raise ConfigError(f"{key} ({source.name}): set exactly one of path, hub, builtin (got {got})")
            if source.weight is not None and source.weight <= 0:
                raise ConfigError(f"{key}.weight: must be > 0, got {source.weight}")
            if source.max_examples is not None and source.max_examples < 1:
                raise ConfigError(f"{key}.max_examples: must be at least 1, got {source.max_examples}")
            if (source.prompt_field is None) != (source.completion_field is None):
                raise ConfigError(f"{key}: set prompt_field and completion_field together (a prompt-completion source)")
            if source.prompt_field is not None and source.messages_field is not None:
                raise ConfigError(f"{key}: set messages_field or prompt_field/completion_field, not both")


def validate_schedule(data: DataConfig) -> None:
    """Every ratio the schedule can produce lies in [0, 1]; `steps` entries are [epoch >= 1, ratio]."""
    schedule = data.schedule
    candidates = [("data.synthetic_ratio", data.synthetic_ratio)]
    if schedule.start is not None:
        candidates.append(("data.schedule.start", schedule.start))
    if schedule.end is not None:
        candidates.append(("data.schedule.end", schedule.end))
    previous_epoch = 0.0
    for i, step in enumerate(schedule.steps):
        if len(step) != 2 or step[0] < 1 or step[0] != int(step[0]):
            raise ConfigError(f"data.schedule.steps[{i}]: expected [first_epoch >= 1, ratio], got {step}")
        if step[0] <= previous_epoch:
            raise ConfigError(f"data.schedule.steps[{i}]: epochs must increase, got {step[0]} after {previous_epoch}")
        previous_epoch = step[0]
        candidates.append((f"data.schedule.steps[{i}]", step[1]))
    if schedule.type == "steps" and not schedule.steps:
        raise ConfigError("data.schedule.steps: the 'steps' schedule needs at least one [first_epoch, ratio]")
    for key, value in candidates:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}: must be in [0, 1], got {value}")
