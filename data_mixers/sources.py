"""Load one corpus (a `SourceConfig`) into plain texts or chats, with errors that name the file and line.

Every reader yields `(where, value)` pairs: `where` is the record's location as the user would look for it
(`data/s.jsonl:17`, `data/s.parquet:row 3`) and `value` is the raw content of the text (or messages) field,
or a `_Bad` standing in for a malformed record. `load_source` checks each value once, in one place, and
either raises or skips it according to `on_error`, so every format reports problems the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet as pq

from data_mixers.builtin import builtin_texts
from data_mixers.config import SourceConfig
from data_mixers.errors import MixerError

Chat = list[dict[str, str]]
Records = Generator[tuple[str, Any], None, None]

_JSONL = {".jsonl", ".json", ".ndjson"}
_PARQUET = {".parquet", ".pq"}
_TEXT = {".txt", ".text"}
_FORMATS = "jsonl|parquet|csv|text|arrow"
_SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
_MAX_FIELDS_SHOWN = 20

# Real documents easily exceed csv's default 128 KiB field limit; the limit guards nothing we rely on.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclasses.dataclass
class LoadedSource:
    """A source's examples, in file order, and the reasons for the records it skipped."""

    spec: SourceConfig
    items: list[str] | list[Chat]
    """Plain texts, or chats (lists of {"role", "content"}) when `spec.messages_field` is set."""
    skipped: list[str]
    """One "FILE:LINE: reason" per record skipped under `on_error: skip`."""


class _Bad(Exception):
    """A malformed record (yielded by a reader, skippable) or source (raised by a reader, always fatal)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


def load_source(spec: SourceConfig, base_dir: Path | None = None) -> LoadedSource:
    """Read `spec` into texts or chats; a relative `path` is resolved against `base_dir` (else the CWD).

    Formats: JSON Lines (`.jsonl`/`.json`/`.ndjson`; a `.json` file holding one JSON array is read too),
    Parquet, CSV with a header row, a `.txt` file (one example per blank-line-separated paragraph), a folder
    of `.txt` files (not recursive, files in name order), a folder written by `Dataset.save_to_disk` or
    `DatasetDict.save_to_disk` (`split` picks the split); or a hub dataset (`hub`, with `split`); or a corpus
    that ships with Python (`builtin`, see data_mixers.builtin).
    Locations in messages are 1-based lines for JSONL, CSV and text, 0-based row indices for Parquet and
    `datasets`. Raises MixerError for a missing file, a malformed record (unless `on_error: skip`), or when
    no examples are left.
    """
    name = spec.name or spec.path or spec.hub or spec.builtin or "?"
    chat = spec.messages_field is not None
    field = spec.messages_field if chat else spec.text_field
    shown, records = _open(spec, base_dir, name, chat, field)
    try:
        items, skipped = _collect(records, chat, field, spec, name)
    except _Bad as bad:  # a problem with the whole source (a header, a split, an unreadable file)
        raise MixerError(f"source '{name}': {bad.where or shown}: {bad.reason}") from None
    if not items:
        detail = f" (all {len(skipped)} records were skipped)" if skipped else ""
        raise MixerError(f"source '{name}': {shown}: no examples{detail}")
    return LoadedSource(spec=spec, items=items, skipped=skipped)


def _open(spec: SourceConfig, base_dir: Path | None, name: str, chat: bool, field: str) -> tuple[str, Records]:
    """The source as shown in messages, and its records (nothing is read until they are iterated)."""
    if spec.hub is not None:
        return f"{spec.hub}[{spec.split}]", _hub_records(spec.hub, spec.split, field)
    if spec.builtin is not None:
        shown = f"builtin:{spec.builtin}"
        if chat:
            raise MixerError(f"source '{name}': {shown}: messages_field needs fields, a builtin corpus has none")
        return shown, _builtin_records(spec.builtin, shown)
    assert spec.path is not None  # validate_data leaves exactly one origin
    path = _resolve(spec.path, base_dir, name)
    fmt = _detect_format(path, spec.format, spec.path, name)
    if fmt == "text" and chat:
        raise MixerError(f"source '{name}': {spec.path}: messages_field needs fields, text has none")
    return spec.path, _records(fmt, path, spec.path, field, chat, spec.split)


def _resolve(raw: str, base_dir: Path | None, name: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    if not path.exists():
        # Show where we looked: a config run from another folder is the usual cause.
        looked = "" if str(path) == raw else f" (looked for {path})"
        raise MixerError(f"source '{name}': {raw}: file does not exist{looked}")
    return path


def _detect_format(path: Path, fmt: str, shown: str, name: str) -> str:
    if path.is_dir():
        if fmt not in ("auto", "text", "arrow"):
            raise MixerError(f"source '{name}': {shown}: is a folder, but format is {fmt}")
        if fmt != "auto":
            return fmt
        if any((path / marker).is_file() for marker in _SAVE_TO_DISK_MARKERS):
            return "arrow"
        if any(path.glob("*.txt")):
            return "text"
        raise MixerError(f"source '{name}': {shown}: folder holds no .txt files and no save_to_disk dataset")
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    for known, suffixes in (("jsonl", _JSONL), ("parquet", _PARQUET), ("csv", {".csv"}), ("text", _TEXT)):
        if suffix in suffixes:
            return known
    if suffix == ".arrow":
        return "arrow"
    what = suffix or path.name
    raise MixerError(f"source '{name}': {shown}: cannot tell the format of '{what}'; set format: {_FORMATS}")


def _records(fmt: str, path: Path, shown: str, field: str, chat: bool, split: str) -> Records:
    if fmt == "jsonl":
        return _jsonl_records(path, shown, field)
    if fmt == "parquet":
        return _parquet_records(path, shown, field)
    if fmt == "csv":
        return _csv_records(path, shown, field, chat)
    if fmt == "text":
        return _text_folder_records(path, shown) if path.is_dir() else _text_records(path, shown)
    return _arrow_records(path, shown, field, split)


def _collect(records: Records, chat: bool, field: str, spec: SourceConfig, name: str) -> tuple[list, list]:
    items: list[Any] = []
    skipped: list[str] = []
    try:
        for where, value in records:
            try:
                if isinstance(value, _Bad):
                    raise value
                items.append(_as_chat(value, field) if chat else _as_text(value, field))
            except _Bad as bad:
                if spec.on_error == "raise":
                    raise MixerError(f"source '{name}': {where}: {bad.reason}") from None
                skipped.append(f"{where}: {bad.reason}")
            if len(items) == spec.max_examples:
                break  # stop reading: max_examples is also how users preview huge files quickly
    finally:
        records.close()  # close the file now, even when max_examples stops us early
    return items, skipped


# ---------------------------------------------------------------- checking one value
def _as_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"field '{field}' is {_kind(value)}, expected a string")
    if not value.strip():
        raise _Bad(f"field '{field}' is empty")
    return value


def _as_chat(value: Any, field: str) -> Chat:
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else _kind(value)
        raise _Bad(f"field '{field}' is {what}, expected a list of {{role, content}}")
    chat = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise _Bad(f"field '{field}' item {i} is {_kind(turn)}, expected a mapping with role and content")
        for key in ("role", "content"):
            if key not in turn:
                raise _Bad(f"field '{field}' item {i} has no '{key}' (keys: {_names(turn)})")
            if not isinstance(turn[key], str):
                raise _Bad(f"field '{field}' item {i}: '{key}' is {_kind(turn[key])}, expected a string")
        chat.append({"role": turn["role"], "content": turn["content"]})
    return chat


def _field(record: Any, field: str) -> Any:
    """The field's value, or a _Bad naming the fields the record does have."""
    if not isinstance(record, dict):
        return _Bad(f"expected a JSON object, got {_kind(record)}")
    if field not in record:
        return _Bad(f"no field '{field}' (fields: {_names(record)})")
    return record[field]


def _kind(value: Any) -> str:
    """A value's type in the words of JSON, which is what users see in their files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _names(keys: Any) -> str:
    names = [str(k) for k in keys]
    more = f", ... ({len(names) - _MAX_FIELDS_SHOWN} more)" if len(names) > _MAX_FIELDS_SHOWN else ""
    return (", ".join(names[:_MAX_FIELDS_SHOWN]) or "none") + more


# ---------------------------------------------------------------- readers
def _jsonl_records(path: Path, shown: str, field: str) -> Records:
    with path.open("rb") as file:
        if path.suffix.lower() == ".json" and _starts_with_array(file):
            yield from _json_array_records(file.read(), shown, field)
            return
        for lineno, line in enumerate(file, 1):
            if not line.strip():
                continue  # blank lines are common at the end of generated files
            try:
                record = json.loads(line)  # bytes: json detects UTF-8 (and a BOM) itself
            except json.JSONDecodeError as err:
                yield f"{shown}:{lineno}", _Bad(f"invalid JSON ({err.msg})")
                continue
            except UnicodeDecodeError:
                yield f"{shown}:{lineno}", _Bad("not UTF-8 text")
                continue
            yield f"{shown}:{lineno}", _field(record, field)


def _starts_with_array(file: Any) -> bool:
    """True for a `.json` file holding one JSON array (as Alpaca-style datasets ship) rather than lines."""
    head = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    file.seek(0)
    return head.startswith(b"[")


def _json_array_records(data: bytes, shown: str, field: str) -> Records:
    try:
        records = json.loads(data)
    except json.JSONDecodeError as err:
        raise _Bad(f"invalid JSON ({err.msg})", f"{shown}:{err.lineno}") from None
    except UnicodeDecodeError:
        raise _Bad("not UTF-8 text") from None
    for i, record in enumerate(records):
        yield f"{shown}:item {i}", _field(record, field)


def _csv_records(path: Path, shown: str, field: str, chat: bool) -> Records:
    # utf-8-sig drops the BOM that spreadsheet exports put before the header.
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file)
        try:
            header = next(reader, None)
            if header is None:
                return
            if field not in header:
                raise _Bad(f"no column '{field}' in the header (columns: {_names(header)})", f"{shown}:1")
            column = header.index(field)
            end = reader.line_num
            for row in reader:
                # A quoted field may span lines: a record starts on the line after the previous one ended.
                start, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    yield f"{shown}:{start}", _Bad(f"expected {len(header)} columns, got {len(row)}")
                    continue
                yield f"{shown}:{start}", _json_cell(row[column], field) if chat else row[column]
        except csv.Error as err:
            raise _Bad(f"malformed CSV ({err})", f"{shown}:{reader.line_num}") from None
        except UnicodeDecodeError:
            raise _Bad("not UTF-8 text", f"{shown}:{reader.line_num + 1}") from None


def _json_cell(cell: str, field: str) -> Any:
    """A chat in a CSV cell is JSON text: decode it, or a _Bad saying why not."""
    try:
        return json.loads(cell)
    except json.JSONDecodeError as err:
        return _Bad(f"field '{field}' is not valid JSON ({err.msg})")


def _text_records(path: Path, shown: str) -> Records:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        yield f"{shown}:{line}", _Bad("not UTF-8 text")  # skipping drops this one file
        return
    paragraph: list[str] = []
    start = 0
    # Normalise Windows and old-Mac line ends so that "\r\n\r\n" separates paragraphs too.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, line in enumerate(lines + [""], 1):
        if line.strip():
            start = start if paragraph else lineno
            paragraph.append(line)
        elif paragraph:
            yield f"{shown}:{start}", "\n".join(paragraph).strip()
            paragraph = []


def _text_folder_records(path: Path, shown: str) -> Records:
    for file in sorted(p for p in path.glob("*.txt") if p.is_file()):
        yield from _text_records(file, str(Path(shown) / file.name))


def _parquet_records(path: Path, shown: str, field: str) -> Records:
    try:
        names = pq.read_schema(path).names
        if field not in names:
            raise _Bad(f"no column '{field}' (columns: {_names(names)})")
        # Only the one column is read: the others may be large and are never used.
        values = pq.read_table(path, columns=[field]).column(field).to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise _Bad(f"not a readable Parquet file ({_first_line(err)})") from None
    for i, value in enumerate(values):
        yield f"{shown}:row {i}", value


def _arrow_records(path: Path, shown: str, field: str, split: str) -> Records:
    import datasets  # imported here: it takes most of a second, and most sources never need it

    try:
        if path.is_file():
            loaded = datasets.Dataset.from_file(str(path))
        else:
            loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        raise _Bad(f"not a datasets save_to_disk folder or arrow file ({_first_line(err)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise _Bad(f"no split '{split}' (splits: {_names(loaded)})")
        loaded, shown = loaded[split], str(Path(shown) / split)  # each split is that subfolder on disk
    yield from _dataset_records(loaded, shown, field)


def _hub_records(hub: str, split: str, field: str) -> Records:
    import datasets

    try:
        loaded = datasets.load_dataset(hub, split=split)
    except Exception as err:  # network, auth, missing split: the hub raises many types, all fatal here
        raise _Bad(f"could not load from the hub ({type(err).__name__}: {_first_line(err)})") from None
    yield from _dataset_records(loaded, f"{hub}[{split}]", field)


def _builtin_records(corpus: str, shown: str) -> Records:
    try:
        texts = builtin_texts(corpus)
    except ValueError as err:  # an unknown name: config validation catches it, direct callers may not
        raise _Bad(str(err)) from None
    for i, text in enumerate(texts):
        yield f"{shown}:item {i}", text


def _dataset_records(dataset: Any, shown: str, field: str) -> Records:
    if field not in dataset.column_names:
        raise _Bad(f"no column '{field}' (columns: {_names(dataset.column_names)})", shown)
    # The arrow view honours an indices mapping (select, shuffle) and skips per-row Python formatting.
    table = dataset.select_columns([field]).with_format("arrow")[:]
    for i, value in enumerate(table.column(field).to_pylist()):
        yield f"{shown}:row {i}", value


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
