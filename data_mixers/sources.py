"""Read one corpus (a `SourceConfig`) as a stream of examples, with errors that name the file and line.

Every reader yields `(where, record)` pairs: `where` is the record's location as the user would look for it
(`data/s.jsonl:17`, `data/s.parquet:row 3`) and `record` holds the fields the source needs (or, for plain
text, the text itself), or a `_Bad` standing in for a malformed record. `SourceStream` checks each record
once, in one place, and either raises or skips it according to `on_error`, so every format reports problems
the same way. Readers stream: JSON Lines, CSV and `.txt` files (and folders of them) line by line, Parquet by
record batch, `datasets` folders by slice, so a source is never held in memory whole (a single `.json` array
file is the exception: it is read whole).

An example is one of three forms, as TRL names them: language modelling (`text_field`: a string),
conversational (`messages_field`: a list of {role, content}), or prompt-completion (`prompt_field` and
`completion_field`: two strings, or two lists of messages for conversational prompt-completion).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet as pq

from synthmix.data_mixers.builtin import builtin_texts
from synthmix.data_mixers.config import SourceConfig
from synthmix.data_mixers.errors import MixerError

Chat = list[dict[str, str]]
Records = Generator[tuple[str, Any], None, None]

_JSONL = {".jsonl", ".json", ".ndjson"}
_PARQUET = {".parquet", ".pq"}
_TEXT = {".txt", ".text"}
_FORMATS = "jsonl|parquet|csv|text|arrow"
_SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
_MAX_FIELDS_SHOWN = 20
_ROWS_PER_READ = 8192

# Real documents easily exceed csv's default 128 KiB field limit; the limit guards nothing we rely on.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclasses.dataclass(frozen=True)
class PromptCompletion:
    """A prompt-completion example: two strings, or two chats (conversational prompt-completion)."""

    prompt: str | Chat
    completion: str | Chat


Item = str | Chat | PromptCompletion


@dataclasses.dataclass
class LoadedSource:
    """A source's examples, in file order, and the reasons for the records it skipped."""

    spec: SourceConfig
    items: list[Item]
    """Texts, chats (lists of {"role", "content"}) or PromptCompletion pairs, as the source's fields say."""
    skipped: list[str]
    """One "FILE:LINE: reason" per record skipped under `on_error: skip`."""


class _PlainText(str):
    """A text read from a text file or a builtin corpus (a JSON string in a JSONL file is a malformed record)."""


@dataclasses.dataclass
class _Reading:
    """How far a reader has got: bytes of line-based files, or rows of tables and corpora."""

    total: int | None = None
    done: int = 0
    unit: str = "rows"


class _Bad(Exception):
    """A malformed record (yielded by a reader, skippable) or source (raised by a reader, always fatal)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


def example_form(spec: SourceConfig) -> str:
    """`text`, `messages` or `prompt_completion`: which fields of a record make an example."""
    if spec.prompt_field is not None:
        return "prompt_completion"
    return "messages" if spec.messages_field is not None else "text"


def needed_fields(spec: SourceConfig) -> list[str]:
    """The fields (columns) a record must have for this source's form."""
    form = example_form(spec)
    if form == "prompt_completion":
        return [spec.prompt_field, spec.completion_field]  # type: ignore[list-item]
    return [spec.messages_field] if form == "messages" else [spec.text_field]  # type: ignore[list-item]


class SourceStream:
    """The examples of one source, checked and in file order, read in batches as they are consumed.

    `skipped` lists the records skipped under `on_error: skip` (the first 1,000 with their reasons),
    `skip_count` counts them all, and `loaded` the examples handed out so far. `read_fraction()` is how far
    the reading has got (for a progress bar), where the reader can tell.
    """

    MAX_MESSAGES = 1000

    def __init__(self, spec: SourceConfig, base_dir: Path | None = None) -> None:
        self.spec = spec
        self.name = spec.name or spec.path or spec.hub or spec.builtin or "?"
        self.form = example_form(spec)
        self.fields = needed_fields(spec)
        self.reading = _Reading()
        self.shown, self._records = _open(spec, base_dir, self.name, self.form, self.fields, self.reading)
        self.skipped: list[str] = []
        self.skip_count = 0
        self.loaded = 0

    def batches(self, size: int = _ROWS_PER_READ) -> Iterator[list[Item]]:
        """Lists of up to `size` checked examples; raises MixerError for a malformed record (on_error: raise),
        a problem with the whole source, or a source with no examples at all."""
        batch: list[Item] = []
        try:
            for where, record in self._records:
                item = self._check(where, record)
                if item is None:
                    continue
                batch.append(item)
                self.loaded += 1
                if len(batch) == size:
                    yield batch
                    batch = []
                if self.loaded == self.spec.max_examples:
                    break  # stop reading: max_examples is also how users preview huge files quickly
        except _Bad as bad:  # a problem with the whole source (a header, a split, an unreadable file)
            raise MixerError(f"source '{self.name}': {bad.where or self.shown}: {bad.reason}") from None
        finally:
            self._records.close()  # close the file now, even when max_examples stops us early
        if batch:
            yield batch
        if not self.loaded:
            detail = f" (all {self.skip_count} records were skipped)" if self.skip_count else ""
            raise MixerError(f"source '{self.name}': {self.shown}: no examples{detail}")

    @property
    def progress_total(self) -> int | None:
        """How much there is to read, in `progress_unit` (None when the reader cannot tell)."""
        return self.reading.total

    @property
    def progress_done(self) -> int:
        """How much has been read so far, in `progress_unit`."""
        return self.reading.done

    @property
    def progress_unit(self) -> str:
        """`B` (bytes) for files read line by line, else `rows`."""
        return self.reading.unit

    def _check(self, where: str, record: Any) -> Item | None:
        try:
            if isinstance(record, _Bad):
                raise record
            return _as_item(record, self.form, self.fields)
        except _Bad as bad:
            if self.spec.on_error == "raise":
                raise MixerError(f"source '{self.name}': {where}: {bad.reason}") from None
            self.skip_count += 1
            if len(self.skipped) < self.MAX_MESSAGES:
                self.skipped.append(f"{where}: {bad.reason}")
            return None


def load_source(spec: SourceConfig, base_dir: Path | None = None) -> LoadedSource:
    """Read all of `spec` into memory (small sources, prompts files); a relative `path` is resolved against
    `base_dir` (else the CWD).

    Formats: JSON Lines (`.jsonl`/`.json`/`.ndjson`; a `.json` file holding one JSON array is read too),
    Parquet, CSV with a header row, a `.txt` file (one example per blank-line-separated paragraph), a folder
    of `.txt` files (not recursive, files in name order), a folder written by `Dataset.save_to_disk` or
    `DatasetDict.save_to_disk` (`split` picks the split); or a hub dataset (`hub`, with `split`); or a corpus
    that ships with Python (`builtin`, see data_mixers.builtin).
    Locations in messages are 1-based lines for JSONL, CSV and text, 0-based row indices for Parquet and
    `datasets`. Raises MixerError for a missing file, a malformed record (unless `on_error: skip`), or when
    no examples are left.
    """
    stream = SourceStream(spec, base_dir)
    items = [item for batch in stream.batches() for item in batch]
    return LoadedSource(spec=spec, items=items, skipped=stream.skipped)


def resolve_path(raw: str, base_dir: Path | None, name: str) -> Path:
    """The source's path, made absolute; a missing one is a MixerError saying where it was looked for."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    if not path.exists():
        # Show where we looked: a config run from another folder is the usual cause.
        looked = "" if str(path) == raw else f" (looked for {path})"
        raise MixerError(f"source '{name}': {raw}: file does not exist{looked}")
    return path


def _open(
    spec: SourceConfig, base_dir: Path | None, name: str, form: str, fields: list[str], reading: _Reading
) -> tuple[str, Records]:
    """The source as shown in messages, and its records (nothing is read until they are iterated); `reading`
    is told how much there is and follows the reader."""
    if spec.hub is not None:
        loaded = _hub_dataset(spec.hub, spec.split, name)
        reading.total = len(loaded)
        return f"{spec.hub}[{spec.split}]", _dataset_records(loaded, f"{spec.hub}[{spec.split}]", fields, reading)
    if spec.builtin is not None:
        shown = f"builtin:{spec.builtin}"
        if form != "text":
            raise MixerError(f"source '{name}': {shown}: {_fields_flag(form)} needs fields, a builtin corpus has none")
        return shown, _builtin_records(spec.builtin, shown, reading)
    assert spec.path is not None  # validate_data leaves exactly one origin
    path = resolve_path(spec.path, base_dir, name)
    fmt = _detect_format(path, spec.format, spec.path, name)
    if fmt == "text" and form != "text":
        raise MixerError(f"source '{name}': {spec.path}: {_fields_flag(form)} needs fields, text has none")
    if fmt in ("jsonl", "csv", "text"):
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        reading.total, reading.unit = sum(f.stat().st_size for f in files), "B"
    return spec.path, _records(fmt, path, spec.path, fields, form, spec.split, reading)


def _fields_flag(form: str) -> str:
    return "messages_field" if form == "messages" else "prompt_field"


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


def _records(fmt: str, path: Path, shown: str, fields: list[str], form: str, split: str, reading: _Reading) -> Records:
    if fmt == "jsonl":
        return _jsonl_records(path, shown, reading)
    if fmt == "parquet":
        return _parquet_records(path, shown, fields, reading)
    if fmt == "csv":
        return _csv_records(path, shown, fields, fields if form == "messages" else [], reading)
    if fmt == "text":
        return _text_folder_records(path, shown, reading) if path.is_dir() else _text_records(path, shown, reading)
    return _arrow_records(path, shown, fields, split, reading)


# ---------------------------------------------------------------- checking one record
def _as_item(record: Any, form: str, fields: list[str]) -> Item:
    if isinstance(record, _PlainText):  # text and builtin readers yield the text itself
        return _as_text(record, "text")
    values = [_field(record, field) for field in fields]
    for value in values:
        if isinstance(value, _Bad):
            raise value
    if form == "text":
        return _as_text(values[0], fields[0])
    if form == "messages":
        return _as_chat(values[0], fields[0])
    prompt, completion = values
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt-completion
        return PromptCompletion(_as_chat(prompt, fields[0]), _as_chat(completion, fields[1]))
    return PromptCompletion(_as_text(prompt, fields[0], allow_empty=True), _as_text(completion, fields[1]))


def _as_text(value: Any, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Bad(f"field '{field}' is {_kind(value)}, expected a string")
    if not allow_empty and not value.strip():
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
def _jsonl_records(path: Path, shown: str, reading: _Reading) -> Records:
    with path.open("rb") as file:
        if path.suffix.lower() == ".json" and _starts_with_array(file):
            reading.done = reading.total or 0
            yield from _json_array_records(file.read(), shown)
            return
        for lineno, line in enumerate(file, 1):
            reading.done += len(line)
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
            yield f"{shown}:{lineno}", record


def _starts_with_array(file: Any) -> bool:
    """True for a `.json` file holding one JSON array (as Alpaca-style datasets ship) rather than lines."""
    head = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    file.seek(0)
    return head.startswith(b"[")


def _json_array_records(data: bytes, shown: str) -> Records:
    try:
        records = json.loads(data)
    except json.JSONDecodeError as err:
        raise _Bad(f"invalid JSON ({err.msg})", f"{shown}:{err.lineno}") from None
    except UnicodeDecodeError:
        raise _Bad("not UTF-8 text") from None
    for i, record in enumerate(records):
        yield f"{shown}:item {i}", record


def _csv_records(path: Path, shown: str, fields: list[str], json_fields: list[str], reading: _Reading) -> Records:
    # utf-8-sig drops the BOM that spreadsheet exports put before the header.
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file)
        try:
            header = next(reader, None)
            if header is None:
                return
            for field in fields:
                if field not in header:
                    raise _Bad(f"no column '{field}' in the header (columns: {_names(header)})", f"{shown}:1")
            columns = {field: header.index(field) for field in fields}
            end = reader.line_num
            for row in reader:
                # A quoted field may span lines: a record starts on the line after the previous one ended.
                start, end = end + 1, reader.line_num
                reading.done = file.buffer.tell() if hasattr(file, "buffer") else reading.done
                if not row:
                    continue
                if len(row) != len(header):
                    yield f"{shown}:{start}", _Bad(f"expected {len(header)} columns, got {len(row)}")
                    continue
                cells = {f: _json_cell(row[c], f) if f in json_fields else row[c] for f, c in columns.items()}
                bad = next((v for v in cells.values() if isinstance(v, _Bad)), None)
                yield f"{shown}:{start}", bad or cells
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


def _text_records(path: Path, shown: str, reading: _Reading) -> Records:
    """One record per blank-line-separated paragraph, read line by line (a paragraph is held, and a file with
    old-Mac line ends only, which has no newline byte, is one line). A line that is not UTF-8 ends the file: the
    paragraphs before it are kept, the rest is one malformed record."""
    paragraph: list[str] = []
    start = lineno = 0
    with open(path, "rb") as handle:
        for raw in handle:
            reading.done += len(raw)
            try:
                text = raw.decode("utf-8-sig" if lineno == 0 else "utf-8")
            except UnicodeDecodeError:
                if paragraph:
                    yield f"{shown}:{start}", _PlainText("\n".join(paragraph).strip())
                yield f"{shown}:{lineno + 1}", _Bad("not UTF-8 text")
                return
            # Windows and old-Mac line ends: "\r\n\r\n" and "\r\r" separate paragraphs too.
            for line in text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n"):
                lineno += 1
                if line.strip():
                    start = start if paragraph else lineno
                    paragraph.append(line)
                elif paragraph:
                    yield f"{shown}:{start}", _PlainText("\n".join(paragraph).strip())
                    paragraph = []
    if paragraph:
        yield f"{shown}:{start}", _PlainText("\n".join(paragraph).strip())


def _text_folder_records(path: Path, shown: str, reading: _Reading) -> Records:
    for file in sorted(p for p in path.glob("*.txt") if p.is_file()):
        yield from _text_records(file, str(Path(shown) / file.name), reading)


def _parquet_records(path: Path, shown: str, fields: list[str], reading: _Reading) -> Records:
    try:
        parquet = pq.ParquetFile(path)
        reading.total = parquet.metadata.num_rows
        names = parquet.schema_arrow.names
        for field in fields:
            if field not in names:
                raise _Bad(f"no column '{field}' (columns: {_names(names)})")
        row = 0
        # Only the needed columns, one record batch at a time: the others may be large and are never used.
        for batch in parquet.iter_batches(batch_size=_ROWS_PER_READ, columns=fields):
            for record in batch.to_pylist():
                yield f"{shown}:row {row}", record
                row += 1
                reading.done = row
    except (pyarrow.ArrowException, OSError) as err:
        raise _Bad(f"not a readable Parquet file ({_first_line(err)})") from None


def _arrow_records(path: Path, shown: str, fields: list[str], split: str, reading: _Reading) -> Records:
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
    reading.total = len(loaded)
    yield from _dataset_records(loaded, shown, fields, reading)


def _hub_dataset(hub: str, split: str, name: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(hub, split=split)
    except Exception as err:  # network, auth, missing split: the hub raises many types, all fatal here
        reason = f"could not load from the hub ({type(err).__name__}: {_first_line(err)})"
        raise MixerError(f"source '{name}': {hub}[{split}]: {reason}") from None


def _builtin_records(corpus: str, shown: str, reading: _Reading) -> Records:
    try:
        texts = builtin_texts(corpus)
    except ValueError as err:  # an unknown name: config validation catches it, direct callers may not
        raise _Bad(str(err)) from None
    reading.total = len(texts)
    for i, text in enumerate(texts):
        reading.done = i + 1
        yield f"{shown}:item {i}", _PlainText(text)


def _dataset_records(dataset: Any, shown: str, fields: list[str], reading: _Reading) -> Records:
    for field in fields:
        if field not in dataset.column_names:
            raise _Bad(f"no column '{field}' (columns: {_names(dataset.column_names)})", shown)
    # The arrow view honours an indices mapping (select, shuffle) and skips per-row Python formatting.
    view = dataset.select_columns(fields).with_format("arrow")
    for start in range(0, len(view), _ROWS_PER_READ):
        for offset, record in enumerate(view[start : start + _ROWS_PER_READ].to_pylist()):
            reading.done = start + offset + 1
            yield f"{shown}:row {start + offset}", record


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
