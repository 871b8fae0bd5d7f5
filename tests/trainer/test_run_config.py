"""The run config (trainer.config): every shipped config loads, and every mistake is an error naming its key.

(Not test_config.py: tests/data_mixers/test_config.py has that basename, and pytest's default import mode
refuses two test modules with one name.)
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthmix.errors import ConfigError
from synthmix.schema import apply_overrides, flatten
from synthmix.trainer.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))  # configs/accelerate/ holds launcher configs, not run configs
MINIMAL = {
    "data": {"sources": [{"name": "docs", "kind": "real", "builtin": "python_docs"}]},
    "model": {"arch": {"model_type": "llama", "hidden_size": 32}},
}


def merge(raw: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return apply_overrides(raw, flatten(changes).items())


def write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(tmp_path: Path, raw: dict[str, Any], overrides: list[str] | None = None) -> str:
    """The one-line message of the ConfigError that loading `raw` (with overrides) raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, raw), overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_the_command_that_runs_it(path: Path) -> None:
    assert isinstance(load_config(path), RunConfig)
    header = list(itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines()))
    assert any("synthmix " in line and f"--config configs/{path.name}" in line for line in header)


def test_every_run_config_the_docs_name_ships_and_loads() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    named = {m for page in pages for m in re.findall(r"configs/([\w-]+\.yaml)", page.read_text())}
    assert {"tiny.yaml", "chat-sft.yaml", "demo.yaml"} <= named  # the pages the test reads are the right ones
    assert named <= {p.name for p in SHIPPED}, f"named but not shipped: {named - {p.name for p in SHIPPED}}"


def test_a_config_maps_onto_the_dataclasses_and_overrides_win(tmp_path: Path) -> None:
    raw = merge(MINIMAL, {"train": {"learning_rate": 0.001, "epochs": 3}, "lora": {"r": 0}})
    config = load_config(write(tmp_path, raw), ["--train.epochs", "5", "--train.max_grad_norm", "null"])
    assert (config.train.learning_rate, config.train.epochs, config.train.max_grad_norm) == (0.001, 5, None)
    assert config.lora.r == 0  # full training is a valid choice
    assert config.model.arch == {"model_type": "llama", "hidden_size": 32}
    assert config.data.sources[0].builtin == "python_docs"


def test_a_learning_rate_in_e_notation_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "train:\n  learning_rate: 2e-4\n")
    assert load_config(path).train.learning_rate == 0.0002
    assert load_config(write(tmp_path, MINIMAL), ["--train.learning_rate", "1e-5"]).train.learning_rate == 1e-5


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["--train.learnig_rate", "0.1"], "unknown key 'train.learnig_rate' (did you mean 'learning_rate'?)"),
        (["--trian.epochs", "2"], "unknown key 'trian' (did you mean 'train'?)"),
        (["--lora.alhpa", "8"], "unknown key 'lora.alhpa' (did you mean 'alpha'?)"),
        (["--model.attn_implementaton", "eager"], "unknown key 'model.attn_implementaton' (did you mean"),
        (["--checkpoint.keep_lats", "2"], "unknown key 'checkpoint.keep_lats' (did you mean 'keep_last'?)"),
        (["--collapse.num_prompt", "2"], "unknown key 'collapse.num_prompt' (did you mean 'num_prompts'?)"),
        (["--train.zzz", "1"], "unknown key 'train.zzz' (expected one of: compile, epochs,"),
    ],
)
def test_unknown_keys_are_errors_with_a_did_you_mean(tmp_path: Path, overrides: list[str], expected: str) -> None:
    assert error_of(tmp_path, MINIMAL, overrides).startswith(expected)


def test_an_unknown_key_in_the_file_is_an_error_too(tmp_path: Path) -> None:
    raw = merge(MINIMAL, {"train": {"per_device_batch_size": 4}})
    assert "unknown key 'train.per_device_batch_size' (did you mean" in error_of(tmp_path, raw)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["--train.epochs", "two"], "train.epochs: expected an integer, got str 'two'"),
        (["--checkpoint.every_steps", "1.5"], "checkpoint.every_steps: expected an integer, got float 1.5"),
        (["--lora.dropout", "high"], "lora.dropout: expected a number, got str 'high'"),
        (["--train.progress", "maybe"], "train.progress: expected true or false, got str 'maybe'"),
        (["--model.dtype", "float64"], "model.dtype: expected one of 'auto', 'float32', 'bfloat16', 'float16'"),
        (
            ["--lora.target_modules", "q_proj"],
            "lora.target_modules: expected list[str] | 'all-linear', got str 'q_proj'",
        ),
        (["--train", "3"], "train: expected a mapping, got int 3"),
    ],
)
def test_wrong_types_name_the_dotted_key(tmp_path: Path, overrides: list[str], expected: str) -> None:
    assert error_of(tmp_path, MINIMAL, overrides).startswith(expected)


def test_a_wrong_type_inside_a_list_names_the_item(tmp_path: Path) -> None:
    source = {"name": "d", "kind": "real", "builtin": "python_docs", "weight": "x"}
    raw = merge(MINIMAL, {"data": {"sources": [source]}})
    assert error_of(tmp_path, raw) == "data.sources[0].weight: expected a number, got str 'x'"


@pytest.mark.parametrize(
    "model,expected",
    [
        ({}, "model: set model.name (hub name or path) or model.arch"),
        ({"name": "some/model", "arch": {"model_type": "llama"}}, "model: set model.name or model.arch, not both"),
        ({"arch": {"hidden_size": 32}}, "model.arch.model_type: missing"),
    ],
)
def test_the_model_needs_exactly_one_of_name_and_arch(tmp_path: Path, model: dict, expected: str) -> None:
    raw = {**MINIMAL, "model": model}
    assert error_of(tmp_path, raw).startswith(expected)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["--train.epochs", "0"], "train.epochs: must be at least 1, got 0"),
        (["--train.max_steps", "0"], "train.max_steps: must be at least 1, got 0"),
        (["--train.seq_len", "-1"], "train.seq_len: must be at least 1, got -1"),
        (["--checkpoint.keep_last", "0"], "checkpoint.keep_last: must be at least 1, got 0"),
        (["--checkpoint.every_steps", "0"], "checkpoint.every_steps: must be at least 1, got 0"),
        (["--train.learning_rate", "0"], "train.learning_rate: must be > 0, got 0.0"),
        (["--lora.r", "-1"], "lora.r: must be >= 0 (0 trains the full model), got -1"),
        (["--data.synthetic_ratio", "1.5"], "data.synthetic_ratio: must be in [0, 1], got 1.5"),
        (["--collapse.sampling.top_p", "0"], "collapse.sampling.top_p: must be in (0, 1], got 0.0"),
        (["--collapse.sampling.max_new_tokens", "0"], "collapse.sampling.max_new_tokens: must be at least 1, got 0"),
        (["--train.warmup_steps", "-2"], "train.warmup_steps: must be >= 0, got -2"),
        (
            ["--train.seq_len", "4096", "--model.arch.max_position_embeddings", "2048"],
            "train.seq_len: 4096 is more than the model's max_position_embeddings (2048)",
        ),
        (
            ["--collapse.eval_seq_len", "512", "--model.arch.max_position_embeddings", "256"],
            "collapse.eval_seq_len: 512 is more than the model's max_position_embeddings (256)",
        ),
    ],
)
def test_values_out_of_range_name_the_key(tmp_path: Path, overrides: list[str], expected: str) -> None:
    assert error_of(tmp_path, MINIMAL, overrides) == expected


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_can_come_from_overrides_alone() -> None:
    sources = "[{name: d, builtin: python_docs}]"
    config = load_config(None, ["--model.arch.model_type", "llama", "--data.sources", sources])
    assert config.model.arch == {"model_type": "llama"} and config.data.sources[0].kind == "real"


def test_an_override_can_replace_a_mapping_to_switch_from_arch_to_a_named_model(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert "not both" in error_of(tmp_path, MINIMAL, ["--model.name", "some/model"])
    config = load_config(path, ["--model.arch", "{}", "--model.name", "some/model"])
    assert (config.model.arch, config.model.name) == ({}, "some/model")


def test_a_model_types_default_position_limit_and_a_local_models_own_are_checked(tmp_path: Path) -> None:
    # llama's default max_position_embeddings is 2048; a local folder's config.json says its own.
    assert "(2048)" in error_of(tmp_path, MINIMAL, ["--train.seq_len", "4096"])
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 128}')
    raw = {**MINIMAL, "model": {"name": str(folder)}}
    assert error_of(tmp_path, raw, ["--train.seq_len", "256"]) == (
        "train.seq_len: 256 is more than the model's max_position_embeddings (128)"
    )
