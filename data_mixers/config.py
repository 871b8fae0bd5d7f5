"""Typed configuration: YAML mapped onto dataclasses, dotted CLI overrides, errors that name the key.

The machinery here is generic (trainer.config builds the full run config with it); the data section's
dataclasses live here too because data_mixers must run on its own (`python -m data_mixers inspect`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from data_mixers.errors import ConfigError

T = TypeVar("T")


# ---------------------------------------------------------------- the data section
@dataclasses.dataclass
class SourceConfig:
    """One corpus: where it lies, whether it is real or synthetic, and which field holds the text."""

    name: str = ""
    """Name used in logs, provenance and per-source counts; unique within the config."""
    kind: Literal["real", "synthetic"] = "real"
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
    """Truncate longer examples to this many tokens (null keeps them whole; the packer splits them)."""
    add_eos: bool = True
    """Append the tokenizer's end-of-sequence token to every plain-text example."""
    assistant_only_loss: bool = False
    """For chat sources, train on the assistant's tokens only (completion-only loss)."""


@dataclasses.dataclass
class TokenizerConfig:
    """The run's tokenizer: a hub name or local path, or a byte-level BPE trained on the real sources."""

    name: str | None = None
    """Hub name or local folder; null trains a byte-level BPE on the real training text and caches it."""
    vocab_size: int = 4096
    """Vocabulary size of a locally trained tokenizer."""
    cache_dir: str = ".cache/synthmix"
    """Where trained tokenizers are cached (keyed by a hash of their training text and settings)."""
    trust_remote_code: bool = False
    """Allow code from the hub to run when loading `name` (off unless you trust the repository)."""


@dataclasses.dataclass
class MixerSettings:
    """The parts of a run config that data_mixers reads on its own (`python -m data_mixers inspect`)."""

    seed: int = 0
    """Seed of every random choice of the stream."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """What the model sees."""
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    """How tokens are counted."""


MIXER_SECTIONS = ("seed", "data", "tokenizer")


def load_mixer_settings(path: str | Path, overrides: list[str] | None = None) -> MixerSettings:
    """The seed, data and tokenizer sections of a run config, with dotted overrides, validated."""
    extra = parse_overrides(overrides or [])
    for key in extra:
        if key not in MIXER_SECTIONS:
            raise ConfigError(
                f"override --{key}: the mixer reads only {', '.join(MIXER_SECTIONS)}"
                f"{_did_you_mean(key, MIXER_SECTIONS)}"
            )
    raw = merge(load_yaml(path), extra)
    settings = build(MixerSettings, {k: v for k, v in raw.items() if k in MIXER_SECTIONS})
    validate_data(settings.data)
    return settings


def validate_data(data: DataConfig) -> None:
    """Checks that span several fields: sources, ratios the schedule can produce, fractions in range."""
    if not data.sources:
        raise ConfigError("data.sources: at least one source is needed")
    for i, source in enumerate(data.sources):
        origins = [k for k in ("path", "hub", "builtin") if getattr(source, k) is not None]
        if len(origins) != 1:
            raise ConfigError(
                f"data.sources[{i}] ({source.name or 'unnamed'}): set exactly one of path, hub, "
                f"builtin (got {', '.join(origins) or 'none'})"
            )
        if source.weight is not None and source.weight <= 0:
            raise ConfigError(f"data.sources[{i}].weight: must be > 0, got {source.weight}")
    if not 0.0 <= data.held_out.fraction < 1.0:
        raise ConfigError(f"data.held_out.fraction: must be in [0, 1), got {data.held_out.fraction}")
    if data.filters.max_repeated_ngram_rate is not None and not 0 <= data.filters.max_repeated_ngram_rate <= 1:
        raise ConfigError("data.filters.max_repeated_ngram_rate: must be in [0, 1]")
    for key, value in (("max_tokens_per_example", data.max_tokens_per_example), ("filters.ngram", data.filters.ngram)):
        if value is not None and value < 1:
            raise ConfigError(f"data.{key}: must be at least 1, got {value}")
    validate_schedule(data)


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


# ---------------------------------------------------------------- generic machinery
class _Loader(yaml.SafeLoader):
    """safe_load, except that `2e-4` is a number, as in YAML 1.2 (PyYAML's YAML 1.1 wants `2.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe_load; a missing file or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `--a.b value` pairs into a nested dict; values are parsed as YAML scalars (0.3, true, null)."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--") or len(flag) == 2:
            raise ConfigError(f"override {flag!r}: expected --section.key VALUE")
        if "=" in flag:
            key, text = flag[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {flag}: missing a value")
            key, text = flag[2:], args[i + 1]
            i += 2
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            value = text
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key}: {part!r} is set twice")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `base` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build(cls: type[T], raw: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking every key and type; errors name the dotted key."""
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key {_join(where, str(key))!r}{_did_you_mean(str(key), fields)}")
    for name, field in fields.items():
        if name not in raw and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: missing (this key has no default)")
    values = {name: _coerce(hints[name], raw[name], _join(where, name)) for name in fields if name in raw}
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """A plain-data copy of a config (for logging, checkpoint manifests and the run folder)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[-1]
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    return value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _did_you_mean(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(sorted(choices))})"
