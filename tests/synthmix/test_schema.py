"""The typed-config machinery: YAML with YAML 1.2 numbers, overrides as ordered assignments (a mapping value
replaces, a dotted key sets one leaf, a number indexes a list), errors naming the dotted key, and the key
reference that `--help` prints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from synthmix.errors import ConfigError
from synthmix.schema import apply_overrides, build, field_docs, format_reference, load_yaml, parse_overrides, reference


@dataclasses.dataclass
class Item:
    """A list item."""

    name: str = ""
    """The item's name."""
    size: int = 1
    """How big it is."""


@dataclasses.dataclass
class Section:
    """A nested section."""

    ratio: float = 0.5
    """A share in [0, 1]."""
    unit: Literal["tokens", "examples"] = "tokens"
    """What is counted."""
    limit: int | None = None
    """An optional cap."""


@dataclasses.dataclass
class Root:
    """The whole config."""

    output_dir: str = "runs/x"
    """Where it writes."""
    section: Section = dataclasses.field(default_factory=Section)
    items: list[Item] = dataclasses.field(default_factory=list)
    """The items."""
    arch: dict = dataclasses.field(default_factory=dict)
    """A free-form mapping."""


def error(call, *args) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_yaml_floats_follow_yaml_1_2_and_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: 2e-4\nb: 1.0e+3\n")
    assert load_yaml(path) == {"a": 2e-4, "b": 1000.0}
    path.write_text("seed: 1\ndata:\n  synthetic_ratio: 0.3\n   unit: tokens\n")  # line 4 is mis-indented
    assert error(load_yaml, path) == f"{path}:4: invalid YAML (mapping values are not allowed here)"
    assert error(load_yaml, tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file does not exist"
    path.write_text("- a\n- b\n")
    assert error(load_yaml, path) == f"{path}: expected a mapping at the top level, got list"


def test_overrides_are_ordered_assignments_with_yaml_values() -> None:
    parsed = parse_overrides(["--data.synthetic_ratio", "0.3", "--a.b=1", "--x", "null", "--m", "{}", "--l", "[1, 2]"])
    assert parsed == [("data.synthetic_ratio", 0.3), ("a.b", 1), ("x", None), ("m", {}), ("l", [1, 2])]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--data.unit"], "override --data.unit: missing a value"),
        (["data.unit", "tokens"], "override 'data.unit': expected --section.key VALUE"),
        (["--", "1"], "override '--': expected --section.key VALUE"),
    ],
)
def test_malformed_overrides(args: list[str], expected: str) -> None:
    assert error(parse_overrides, args) == expected


def test_a_mapping_value_replaces_the_mapping_and_a_dotted_key_sets_one_leaf() -> None:
    raw = {"model": {"arch": {"model_type": "llama", "hidden_size": 32}, "dtype": "auto"}}
    cleared = apply_overrides(raw, parse_overrides(["--model.arch", "{}", "--model.name", "X"]))
    assert cleared == {"model": {"arch": {}, "dtype": "auto", "name": "X"}}
    merged = apply_overrides(raw, parse_overrides(["--model.arch.hidden_size", "64"]))
    assert merged["model"]["arch"] == {"model_type": "llama", "hidden_size": 64}
    later_wins = apply_overrides(raw, parse_overrides(["--model.arch", "{}", "--model.arch.model_type", "qwen2"]))
    assert later_wins["model"]["arch"] == {"model_type": "qwen2"}
    assert raw["model"]["arch"] == {"model_type": "llama", "hidden_size": 32}  # the input is not changed


def test_a_number_indexes_into_a_list_and_a_bad_index_names_the_key() -> None:
    raw = {"items": [{"name": "a"}, {"name": "b"}]}
    assert apply_overrides(raw, [("items.1.size", 3)])["items"] == [{"name": "a"}, {"name": "b", "size": 3}]
    assert error(apply_overrides, raw, [("items.2.size", 3)]) == (
        "override --items.2.size: items.2 is not an item of a list of 2"
    )


@pytest.mark.parametrize(
    "raw,expected",
    [
        ({"section": {"ratoi": 1}}, "unknown key 'section.ratoi' (did you mean 'ratio'?)"),
        ({"items": [{"name": "a"}, {"nmae": "b"}]}, "unknown key 'items[1].nmae' (did you mean 'name'?)"),
        ({"zzz": 1}, "unknown key 'zzz' (expected one of: arch, items, output_dir, section)"),
        ({"section": {"ratio": "lots"}}, "section.ratio: expected a number, got str 'lots'"),
        ({"section": {"unit": "bytes"}}, "section.unit: expected one of 'tokens', 'examples', got 'bytes'"),
        ({"section": {"limit": 1.5}}, "section.limit: expected an integer, got float 1.5"),
        ({"items": [{"size": True}]}, "items[0].size: expected an integer, got bool True"),
        ({"arch": [1]}, "arch: expected a mapping, got list"),
        ({"section": 3}, "section: expected a mapping, got int 3"),
    ],
)
def test_build_names_the_dotted_key_of_the_first_problem(raw: dict, expected: str) -> None:
    assert error(build, Root, raw) == expected


def test_build_fills_defaults_and_types() -> None:
    root = build(Root, {"section": {"ratio": 1, "limit": None}, "items": [{"name": "a"}]})
    assert root == Root(section=Section(ratio=1.0), items=[Item(name="a")])
    assert isinstance(root.section.ratio, float)


def test_the_reference_lists_every_key_with_type_default_and_docstring() -> None:
    entries = {entry.key: entry for entry in reference(Root)}
    assert list(entries) == [
        "output_dir", "section.ratio", "section.unit", "section.limit", "items", "items[].name", "items[].size", "arch",
    ]  # fmt: skip
    assert (entries["section.unit"].type, entries["section.unit"].default) == ("'tokens' | 'examples'", "tokens")
    assert (entries["section.limit"].type, entries["section.limit"].default) == ("int | null", "null")
    assert entries["output_dir"].doc == "Where it writes." and entries["items[].size"].doc == "How big it is."
    text = format_reference(Root)
    assert "  --section.ratio  (float, default: 0.5)\n        A share in [0, 1]." in text
    assert field_docs(Section) == {
        "ratio": "A share in [0, 1].",
        "unit": "What is counted.",
        "limit": "An optional cap.",
    }
