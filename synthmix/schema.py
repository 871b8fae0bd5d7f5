"""Typed configuration: YAML mapped onto dataclasses, dotted command-line overrides, and errors that name the key.

Shared by `data_mixers` and `trainer`. A config is a tree of dataclasses whose fields carry a default and a
one-line docstring (the string literal under the field); `build` checks every key and type and names the
dotted key of the first problem, with a "did you mean" for a misspelt one; `reference` lists every key with
its type, default and docstring (for `--help`).

Overrides are assignments applied in order: `--train.epochs 3` sets one leaf; `--model.arch "{}"` replaces
the whole mapping (it does not merge into it); `--data.sources.1.weight 2` indexes into a list.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from synthmix.errors import ConfigError

T = TypeVar("T")
Assignment = tuple[str, Any]


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


def parse_value(text: str) -> Any:
    """A command-line value parsed as YAML (`0.3`, `true`, `null`, `[a, b]`, `{}`); unparsable text stays text."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> list[Assignment]:
    """`--a.b VALUE` (or `--a.b=VALUE`) pairs as (dotted key, parsed value), in command-line order."""
    assignments: list[Assignment] = []
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
        assignments.append((key, parse_value(text)))
    return assignments


def apply_overrides(raw: dict[str, Any], assignments: Iterable[Assignment]) -> dict[str, Any]:
    """A copy of `raw` with each assignment applied in turn; the last part of a key is set, not merged."""
    tree = _copy(raw)
    for key, value in assignments:
        node: Any = tree
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override --{key}: {where} is not an item of a list of {len(node)}")
                part = int(part)
            if last:
                node[part] = _copy(value)
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return tree


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def build(cls: type[T], raw: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking every key and type; errors name the dotted key."""
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key {join(where, str(key))!r}{did_you_mean(str(key), fields)}")
    for name, field in fields.items():
        if name not in raw and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{join(where, name)}: missing (this key has no default)")
    values = {name: _coerce(hints[name], raw[name], join(where, name)) for name in fields if name in raw}
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """A plain-data copy of a config (for logging, checkpoint manifests and the run folder)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted key: leaf value} (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, join(prefix, str(key))))
    return flat


def join(where: str, key: str) -> str:
    """`where.key`, or `key` at the top level."""
    return f"{where}.{key}" if where else key


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, else the list of choices."""
    choices = list(choices)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(sorted(choices))})"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(err)
        deeper = [err for err in errors if not str(err).startswith(f"{where}: expected")]
        if deeper or len(errors) == 1:  # a value of the right kind with a problem inside, or one kind allowed
            raise (deeper or errors)[-1]
        raise ConfigError(f"{where}: expected {type_name(hint)}, got {_describe(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)] if args else value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    checks = {bool: ("true or false", (bool,)), int: ("an integer", (int,)), str: ("a string", (str,))}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if hint in checks:
        expected, types_ = checks[hint]
        if not isinstance(value, types_) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


# ---------------------------------------------------------------- the reference (for --help)
@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key as `--help` lists it."""

    key: str
    type: str
    default: str
    doc: str


def reference(cls: type, where: str = "") -> Iterator[KeyDoc]:
    """Every key of dataclass `cls`, depth first: nested sections expand, list items show as `key[]`."""
    docs = field_docs(cls)
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        key, hint = join(where, field.name), hints[field.name]
        item = _list_item_dataclass(hint)
        if dataclasses.is_dataclass(hint):
            yield from reference(hint, key)
        elif item is not None:
            yield KeyDoc(key, f"list of {item.__name__}", _default(field), docs.get(field.name, ""))
            yield from reference(item, f"{key}[]")
        else:
            yield KeyDoc(key, type_name(hint), _default(field), docs.get(field.name, ""))


def format_reference(cls: type, width: int = 110) -> str:
    """`reference(cls)` as aligned text: key, type, default, then the docstring wrapped below them."""
    lines = []
    for entry in reference(cls):
        lines.append(f"  --{entry.key}  ({entry.type}, default: {entry.default})")
        for line in textwrap.wrap(entry.doc, width - 8) or [""]:
            lines.append(f"        {line}" if line else "")
    return "\n".join(line for line in lines if line)


def type_name(hint: Any) -> str:
    """A short, readable name of a type hint: `int`, `float | null`, `'tokens' | 'examples'`, `list[str]`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def _list_item_dataclass(hint: Any) -> type | None:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (None,)
        if item is not None and dataclasses.is_dataclass(item):
            return item
    return None


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
    else:
        return "required"
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value) if not isinstance(value, str) else value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings under the fields of dataclass `cls` (string literals right after an annotated field)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    (node,) = ast.parse(source).body
    docs: dict[str, str] = {}
    body = node.body if isinstance(node, ast.ClassDef) else []
    for field, after in zip(body, body[1:]):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs
