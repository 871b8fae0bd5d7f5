"""The data section of a config: typed keys, "did you mean" for unknown ones, errors that name the dotted key,
and the checks that span fields (sources, weights, ratios, schedules), all at load time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from synthmix.data_mixers import Corpus, DataConfig, Mixer, MixerError, SourceConfig
from synthmix.data_mixers.config import TokenizerConfig, validate_data
from synthmix.errors import ConfigError
from synthmix.schema import apply_overrides, build, load_yaml, parse_overrides

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "seed": 1,
    "data": {
        "synthetic_ratio": 0.3,
        "sources": [
            {"name": "docs", "kind": "real", "path": "r.jsonl"},
            {"name": "gen", "kind": "synthetic", "path": "s.jsonl"},
        ],
    },
}


def write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return path


def with_data(**data: object) -> dict:
    return {**BASE, "data": {**BASE["data"], **data}}


def load_data(path: Path, overrides: list[str] | None = None) -> DataConfig:
    """The data (and tokenizer) section of a config file with overrides, built and validated as a run config's."""
    raw = apply_overrides(load_yaml(path), parse_overrides(overrides or []))
    build(TokenizerConfig, raw.get("tokenizer"), "tokenizer")
    data = build(DataConfig, raw.get("data"), "data")
    validate_data(data)
    return data


def error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_data(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_config_maps_onto_the_dataclasses(tmp_path: Path) -> None:
    data = load_data(write(tmp_path, {**BASE, "train": {"epochs": 3}, "output_dir": "runs/x"}))
    assert data.synthetic_ratio == 0.3 and data.unit == "tokens"
    assert [(s.name, s.kind) for s in data.sources] == [("docs", "real"), ("gen", "synthetic")]


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_has_a_valid_data_section(config: Path) -> None:
    load_data(config)


@pytest.mark.parametrize(
    "raw,expected",
    [
        (with_data(synthetic_ratoi=0.3), "unknown key 'data.synthetic_ratoi' (did you mean 'synthetic_ratio'?)"),
        ({**BASE, "tokenizer": {"vocab": 100}}, "unknown key 'tokenizer.vocab' (did you mean 'vocab_size'?)"),
        (with_data(filters={"min_token": 3}), "unknown key 'data.filters.min_token' (did you mean 'min_tokens'?)"),
        (
            with_data(sources=[{"name": "a", "knd": "real", "path": "x"}]),
            "unknown key 'data.sources[0].knd' (did you mean 'kind'?)",
        ),
        (with_data(zzz=1), "unknown key 'data.zzz' (expected one of: add_eos, allow_repeat,"),
    ],
)
def test_unknown_keys_name_the_dotted_key_and_suggest_the_closest(tmp_path: Path, raw: dict, expected: str) -> None:
    assert expected in error(write(tmp_path, raw))


@pytest.mark.parametrize(
    "raw,expected",
    [
        (with_data(synthetic_ratio="lots"), "data.synthetic_ratio: expected a number, got str 'lots'"),
        (with_data(stratify=1), "data.stratify: expected true or false, got int 1"),
        ({**BASE, "tokenizer": {"vocab_size": 1.5}}, "tokenizer.vocab_size: expected an integer, got float 1.5"),
        (
            with_data(sources=[{"name": "a", "kind": "fake", "path": "x"}]),
            "data.sources[0].kind: expected one of 'real', 'synthetic', got 'fake'",
        ),
        (with_data(sources={"name": "a"}), "data.sources: expected a list, got dict"),
        (with_data(schedule={"steps": [[1, "x"]]}), "data.schedule.steps[0][1]: expected a number"),
    ],
)
def test_wrong_types_name_the_dotted_key(tmp_path: Path, raw: dict, expected: str) -> None:
    assert expected in error(write(tmp_path, raw))


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"synthetic_ratio": 1.5}, "data.synthetic_ratio: must be in [0, 1], got 1.5"),
        ({"synthetic_ratio": -0.1}, "data.synthetic_ratio: must be in [0, 1], got -0.1"),
        ({"schedule": {"type": "linear", "end": 2}}, "data.schedule.end: must be in [0, 1], got 2.0"),
        ({"schedule": {"type": "steps", "steps": [[2, 0.1], [2, 0.2]]}}, "data.schedule.steps[1]: epochs must"),
        ({"schedule": {"type": "steps"}}, "the 'steps' schedule needs at least one"),
        ({"max_tokens_per_example": 0}, "data.max_tokens_per_example: must be at least 1, got 0"),
        ({"filters": {"ngram": 0}}, "data.filters.ngram: must be at least 1, got 0"),
        (
            {"sources": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]},
            "data.sources[1].name: the name 'a' is used twice",
        ),
        ({"sources": [{"path": "x"}]}, "data.sources[0].name: every source needs a name"),
        (
            {"sources": [{"name": "a", "path": "x", "builtin": "python_docs"}]},
            "data.sources[0] (a): set exactly one of path, hub, builtin (got path, builtin)",
        ),
        ({"sources": [{"name": "a"}]}, "data.sources[0] (a): set exactly one of path, hub, builtin (got none)"),
        (
            {"sources": [{"name": "a", "path": "x", "weight": 2}, {"name": "b", "path": "y"}]},
            "data.sources: give every real source a weight, or none of them",
        ),
        ({"sources": [{"name": "a", "path": "x", "weight": 0}]}, "data.sources[0].weight: must be > 0, got 0.0"),
        (
            {"sources": [{"name": "a", "path": "x"}], "held_out": {"sources": [{"name": "a", "path": "y"}]}},
            "data.held_out.sources[0].name: the name 'a' is used twice",
        ),
        (
            {"sources": [{"name": "a", "path": "x", "prompt_field": "p"}]},
            "data.sources[0]: set prompt_field and completion_field together (a prompt-completion source)",
        ),
        (
            {
                "sources": [
                    {"name": "a", "path": "x", "prompt_field": "p", "completion_field": "c", "messages_field": "m"}
                ]
            },
            "data.sources[0]: set messages_field or prompt_field/completion_field, not both",
        ),
        ({"chat_template": "llama3"}, "data.chat_template: expected chatml or a Jinja template"),
    ],
)
def test_values_out_of_range_and_bad_schedules_are_refused(tmp_path: Path, data: dict, expected: str) -> None:
    assert expected in error(write(tmp_path, with_data(**data)))


def test_a_synthetic_ratio_without_a_synthetic_source_is_refused_by_the_mixer() -> None:
    corpora = [Corpus.from_offsets("docs", "real", np.zeros(10, np.int32), np.array([0, 5, 10]))]
    data = DataConfig(sources=[SourceConfig(name="docs", kind="real")], synthetic_ratio=0.3)
    with pytest.raises(MixerError, match="data.synthetic_ratio is 0.3 but no source has kind: synthetic"):
        Mixer(corpora, data, seed=0)
    Mixer(corpora, DataConfig(sources=data.sources, synthetic_ratio=0.0), seed=0)  # fine at 0


def test_overrides_are_merged_and_checked_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    data = load_data(path, ["--data.synthetic_ratio", "0.5", "--data.sources.1.weight=2"])
    assert data.synthetic_ratio == 0.5 and len(data.sources) == 2 and data.sources[1].weight == 2.0
    assert "data.synthetic_ratio: must be in [0, 1], got 2.0" in error(path, ["--data.synthetic_ratio", "2"])
    assert "did you mean 'unit'" in error(path, ["--data.unti", "tokens"])
