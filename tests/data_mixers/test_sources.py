"""load_source: every format, path resolution, chats, caps, and every error a user can meet (one line each)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import write_jsonl

from synthmix.data_mixers.config import SourceConfig
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.sources import LoadedSource, load_source

CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


def load(base: Path, path: str, **spec: Any) -> LoadedSource:
    return load_source(SourceConfig(name="x", path=path, **spec), base_dir=base)


def error(base: Path, path: str, **spec: Any) -> str:
    """The MixerError message load() raises; every message must fit on one line."""
    with pytest.raises(MixerError) as caught:
        load(base, path, **spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows(rows)


# ---------------------------------------------------------------- formats
def test_jsonl_reads_texts_in_order_ignoring_blank_lines_and_other_fields(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"text": "a", "id": 1}\n\n  \n{"text": "b"}\n\n', encoding="utf-8")
    loaded = load(tmp_path, "s.jsonl")
    assert loaded.items == ["a", "b"]
    assert loaded.skipped == []
    assert loaded.spec.name == "x"


def test_json_suffix_is_read_as_json_lines(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "s.json", [{"text": "a"}, {"text": "b"}])
    assert load(tmp_path, "s.json").items == ["a", "b"]


def test_json_file_holding_one_array_is_read_too(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2), encoding="utf-8")
    assert load(tmp_path, "a.json").items == ["a", "b"]
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n 7]', encoding="utf-8")
    assert error(tmp_path, "bad.json") == "source 'x': bad.json:item 1: expected a JSON object, got a number (7)"


def test_custom_text_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r"}])
    assert load(tmp_path, "s.jsonl", text_field="response").items == ["r"]


def test_parquet_reads_the_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), tmp_path / "s.parquet")
    assert load(tmp_path, "s.parquet").items == ["a", "b"]


def test_csv_reads_by_header_with_quoted_multiline_fields(tmp_path: Path) -> None:
    write_csv(tmp_path / "s.csv", [["id", "text"], ["1", "two\nlines, quoted"], ["2", 'say "hi"']])
    assert load(tmp_path, "s.csv").items == ["two\nlines, quoted", 'say "hi"']


def test_txt_file_is_one_example_per_blank_line_separated_paragraph(tmp_path: Path) -> None:
    text = "\n\nFirst line\nsecond line\n\n\n  \nSecond paragraph\r\n\r\nThird\n"
    (tmp_path / "s.txt").write_text(text, encoding="utf-8", newline="")
    assert load(tmp_path, "s.txt").items == ["First line\nsecond line", "Second paragraph", "Third"]


def test_folder_of_txt_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("b1\n\nb2", encoding="utf-8")
    (folder / "a.txt").write_text("a1", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    assert load(tmp_path, "texts").items == ["a1", "b1", "b2"]


def test_save_to_disk_dataset_folder(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]}).save_to_disk(tmp_path / "ds")
    assert load(tmp_path, "ds").items == ["a", "b"]


def test_save_to_disk_dataset_dict_reads_the_configured_split(tmp_path: Path) -> None:
    splits = {"train": ["t1", "t2"], "test": ["e1"]}
    dataset_dict = datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()})
    dataset_dict.save_to_disk(tmp_path / "dd")
    assert load(tmp_path, "dd").items == ["t1", "t2"]
    assert load(tmp_path, "dd", split="test").items == ["e1"]
    message = error(tmp_path, "dd", split="validation")
    assert message == "source 'x': dd: no split 'validation' (splits: train, test)"


def test_explicit_format_overrides_the_extension(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "s.data", [{"text": "a"}])
    assert load(tmp_path, "s.data", format="jsonl").items == ["a"]


def test_hub_source_is_routed_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["a", "b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_source(SourceConfig(name="h", hub="org/corpus", split="validation"))
    assert loaded.items == ["a", "b"]
    assert calls == [("org/corpus", "validation")]


def test_hub_errors_name_the_dataset_split_and_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        if split == "missing":
            raise ValueError("Unknown split 'missing'.\nShould be one of ['train'].")
        return datasets.Dataset.from_dict({"text": ["a", "", "b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(MixerError, match=r"^source 'h': org/c\[train\]:row 1: field 'text' is empty$"):
        load_source(SourceConfig(name="h", hub="org/c"))
    with pytest.raises(MixerError, match=r"org/c\[missing\]: could not load .*ValueError: Unknown split"):
        load_source(SourceConfig(name="h", hub="org/c", split="missing"))


def test_builtin_corpus_is_routed_to_builtin_texts() -> None:
    loaded = load_source(SourceConfig(name="docs", builtin="python_docs", max_examples=3))
    assert len(loaded.items) == 3
    assert all(isinstance(text, str) and text.strip() for text in loaded.items)
    with pytest.raises(MixerError, match=r"^source 'docs': builtin:python_docs: messages_field needs fields"):
        load_source(SourceConfig(name="docs", builtin="python_docs", messages_field="messages"))


# ---------------------------------------------------------------- paths
def test_relative_path_resolves_against_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "data" / "s.jsonl", [{"text": "a"}])
    monkeypatch.chdir(tmp_path / "data")  # the CWD must not matter when base_dir is given
    assert load(tmp_path, "data/s.jsonl").items == ["a"]


def test_relative_path_without_base_dir_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "data" / "s.jsonl", [{"text": "a"}])
    monkeypatch.chdir(tmp_path)
    assert load_source(SourceConfig(name="x", path="data/s.jsonl")).items == ["a"]


def test_absolute_path_ignores_base_dir(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}])
    assert load(tmp_path / "elsewhere", str(tmp_path / "s.jsonl")).items == ["a"]


def test_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    message = error(tmp_path, "data/nope.jsonl")
    assert message == f"source 'x': data/nope.jsonl: file does not exist (looked for {tmp_path}/data/nope.jsonl)"


def test_unknown_extension_asks_for_a_format(tmp_path: Path) -> None:
    (tmp_path / "s.xml").write_text("<a/>", encoding="utf-8")
    assert error(tmp_path, "s.xml") == (
        "source 'x': s.xml: cannot tell the format of '.xml'; set format: jsonl|parquet|csv|text|arrow"
    )


def test_folder_with_nothing_readable(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "empty: folder holds no .txt files and no save_to_disk dataset" in error(tmp_path, "empty")


# ---------------------------------------------------------------- chats
def test_messages_field_reads_chats_and_keeps_only_role_and_content(tmp_path: Path) -> None:
    extra = [{"role": "user", "content": "Hi?", "name": "ann"}, CHAT[1]]
    write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}, {"messages": extra, "text": "unused"}])
    assert load(tmp_path, "c.jsonl", messages_field="messages").items == [CHAT, CHAT]


def test_messages_from_parquet_and_csv(tmp_path: Path) -> None:
    pq.write_table(pa.table({"conv": [CHAT]}), tmp_path / "c.parquet")
    assert load(tmp_path, "c.parquet", messages_field="conv").items == [CHAT]
    write_csv(tmp_path / "c.csv", [["conv"], [json.dumps(CHAT)], ["not json"]])
    assert load(tmp_path, "c.csv", messages_field="conv", on_error="skip").items == [CHAT]
    assert "c.csv:3: field 'conv' is not valid JSON (Expecting value)" in error(
        tmp_path, "c.csv", messages_field="conv"
    )


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ("hello", "field 'messages' is a string, expected a list of {role, content}"),
        ([], "field 'messages' is an empty list, expected a list of {role, content}"),
        (["hi"], "field 'messages' item 0 is a string, expected a mapping with role and content"),
        ([CHAT[0], {"role": "assistant", "text": "x"}], "field 'messages' item 1 has no 'content' (keys: role, text)"),
        ([{"role": 1, "content": "x"}], "field 'messages' item 0: 'role' is a number (1), expected a string"),
        ([{"role": "user", "content": None}], "field 'messages' item 0: 'content' is null, expected a string"),
    ],
)
def test_malformed_messages(tmp_path: Path, messages: Any, reason: str) -> None:
    write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}, {"messages": messages}])
    assert error(tmp_path, "c.jsonl", messages_field="messages") == f"source 'x': c.jsonl:2: {reason}"
    loaded = load(tmp_path, "c.jsonl", messages_field="messages", on_error="skip")
    assert (loaded.items, loaded.skipped) == ([CHAT], [f"c.jsonl:2: {reason}"])


def test_messages_field_on_plain_text_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("a", encoding="utf-8")
    assert "s.txt: messages_field needs fields" in error(tmp_path, "s.txt", messages_field="messages")


# ---------------------------------------------------------------- max_examples
def test_max_examples_takes_the_first_n(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"text": str(i)} for i in range(10)])
    assert load(tmp_path, "s.jsonl", max_examples=3).items == ["0", "1", "2"]
    assert load(tmp_path, "s.jsonl", max_examples=50).items == [str(i) for i in range(10)]


def test_max_examples_counts_after_skipping_and_stops_reading(tmp_path: Path) -> None:
    # Line 4 is broken, but reading stops once 2 good records are in, so it is never seen.
    (tmp_path / "s.jsonl").write_text('{"text": "a"}\n{"x": 1}\n{"text": "b"}\n{oops\n', encoding="utf-8")
    loaded = load(tmp_path, "s.jsonl", max_examples=2, on_error="skip")
    assert (loaded.items, loaded.skipped) == (["a", "b"], ["s.jsonl:2: no field 'text' (fields: x)"])
    assert load(tmp_path, "s.jsonl", max_examples=1).items == ["a"]


# ---------------------------------------------------------------- record errors: raise, or skip and report
def test_invalid_json_names_file_line_and_parser_message(tmp_path: Path) -> None:
    lines = [json.dumps({"text": str(i)}) for i in range(16)] + ['{"text": "a" "b"}', '{"text": "ok"}']
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert error(tmp_path, "data/s.jsonl") == "source 'x': data/s.jsonl:17: invalid JSON (Expecting ',' delimiter)"
    loaded = load(tmp_path, "data/s.jsonl", on_error="skip")
    assert loaded.items == [str(i) for i in range(16)] + ["ok"]
    assert loaded.skipped == ["data/s.jsonl:17: invalid JSON (Expecting ',' delimiter)"]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "p", "response": "r"}, "no field 'text' (fields: prompt, response)"),
        ({}, "no field 'text' (fields: none)"),
        ({"text": 5}, "field 'text' is a number (5), expected a string"),
        ({"text": None}, "field 'text' is null, expected a string"),
        ({"text": ["a"]}, "field 'text' is a list, expected a string"),
        ({"text": " \n"}, "field 'text' is empty"),
        (["text"], "expected a JSON object, got a list"),
    ],
)
def test_bad_jsonl_record_raises_or_is_skipped(tmp_path: Path, record: Any, reason: str) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}, {"text": "b"}, record, {"text": "c"}])
    assert error(tmp_path, "s.jsonl") == f"source 'x': s.jsonl:3: {reason}"
    loaded = load(tmp_path, "s.jsonl", on_error="skip")
    assert (loaded.items, loaded.skipped) == (["a", "b", "c"], [f"s.jsonl:3: {reason}"])


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('\n{"text": "a"}\n\n{"txt": "b"}\n', encoding="utf-8")
    assert error(tmp_path, "s.jsonl") == "source 'x': s.jsonl:4: no field 'text' (fields: txt)"


def test_not_utf8_jsonl_line(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    assert error(tmp_path, "s.jsonl") == "source 'x': s.jsonl:2: not UTF-8 text"
    assert load(tmp_path, "s.jsonl", on_error="skip").items == ["a"]


def test_csv_errors_name_the_line_where_the_record_starts(tmp_path: Path) -> None:
    # Line 2's record spans lines 2-3, so the short row after it starts on line 4.
    write_csv(tmp_path / "s.csv", [["id", "text"], ["1", "two\nlines"], ["2"], ["3", ""], ["4", "ok"]])
    assert error(tmp_path, "s.csv") == "source 'x': s.csv:4: expected 2 columns, got 1"
    loaded = load(tmp_path, "s.csv", on_error="skip")
    assert loaded.items == ["two\nlines", "ok"]
    assert loaded.skipped == ["s.csv:4: expected 2 columns, got 1", "s.csv:5: field 'text' is empty"]


def test_csv_without_the_text_column_names_the_header(tmp_path: Path) -> None:
    write_csv(tmp_path / "s.csv", [["prompt", "response"], ["p", "r"]])
    message = error(tmp_path, "s.csv", on_error="skip")  # a missing column is never skippable
    assert message == "source 'x': s.csv:1: no column 'text' in the header (columns: prompt, response)"


def test_parquet_errors_name_the_row_and_the_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), tmp_path / "s.parquet")
    assert error(tmp_path, "s.parquet") == "source 'x': s.parquet: no column 'text' (columns: prompt, response)"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "n.parquet")
    assert error(tmp_path, "n.parquet") == "source 'x': n.parquet:row 1: field 'text' is null, expected a string"
    assert load(tmp_path, "n.parquet", on_error="skip").skipped == [
        "n.parquet:row 1: field 'text' is null, expected a string"
    ]


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "s.parquet").write_bytes(b"not parquet at all")
    assert "source 'x': s.parquet: not a readable Parquet file (" in error(tmp_path, "s.parquet")


def test_dataset_folder_errors_name_split_folder_row_and_columns(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"t": ["a", "b"]})}).save_to_disk(tmp_path / "dd")
    assert error(tmp_path, "dd") == "source 'x': dd/train: no column 'text' (columns: t)"
    datasets.Dataset.from_dict({"prompt": ["p", "q"], "text": ["a", ""]}).save_to_disk(tmp_path / "ds")
    assert error(tmp_path, "ds") == "source 'x': ds:row 1: field 'text' is empty"


def test_a_text_file_is_read_up_to_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("good", encoding="utf-8")
    (folder / "b.txt").write_bytes(b"line one\n\nbad \xff byte")
    assert error(tmp_path, "texts") == "source 'x': texts/b.txt:3: not UTF-8 text"
    loaded = load(tmp_path, "texts", on_error="skip")
    # Read line by line: the paragraph before the bad line is kept, the rest of the file is the bad record.
    assert (loaded.items, loaded.skipped) == (["good", "line one"], ["texts/b.txt:3: not UTF-8 text"])


# ---------------------------------------------------------------- no examples
@pytest.mark.parametrize(
    ("name", "content"), [("s.jsonl", ""), ("b.jsonl", "\n \n"), ("s.txt", "\n\n"), ("s.csv", ""), ("h.csv", "text\n")]
)
def test_empty_source_is_an_error(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert error(tmp_path, name) == f"source 'x': {name}: no examples"


def test_empty_parquet_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "s.parquet")
    assert error(tmp_path, "s.parquet") == "source 'x': s.parquet: no examples"


def test_empty_dataset_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # (An empty Dataset saved with save_to_disk cannot be loaded back by datasets 5.2 itself, so the hub it is.)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(MixerError, match=r"^source 'h': org/c\[train\]: no examples$"):
        load_source(SourceConfig(name="h", hub="org/c"))


def test_wrong_explicit_format_is_a_one_line_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}])
    assert error(tmp_path, "s.jsonl", format="parquet").startswith("source 'x': s.jsonl: not a readable Parquet file (")
    assert error(tmp_path, "s.jsonl", format="arrow").startswith(
        "source 'x': s.jsonl: not a datasets save_to_disk folder or arrow file ("
    )
    (tmp_path / "dir").mkdir()
    assert error(tmp_path, "dir", format="csv") == "source 'x': dir: is a folder, but format is csv"


def test_all_records_skipped_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"a": 1}\n{bad\n', encoding="utf-8")
    message = error(tmp_path, "s.jsonl", on_error="skip")
    assert message == "source 'x': s.jsonl: no examples (all 2 records were skipped)"


# ---------------------------------------------------------------- round trips
usable_text = st.text(min_size=1, max_size=40).filter(lambda t: t.strip() != "")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(usable_text, min_size=1, max_size=8))
def test_jsonl_round_trips_any_text(tmp_path: Path, texts: list[str]) -> None:
    # ensure_ascii=False writes U+2028 and friends raw: only "\n" may end a JSON line.
    lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    (tmp_path / "r.jsonl").write_text(lines, encoding="utf-8")
    assert load(tmp_path, "r.jsonl").items == texts


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(usable_text.filter(lambda t: "\x00" not in t), min_size=1, max_size=8))
def test_csv_round_trips_any_text(tmp_path: Path, texts: list[str]) -> None:
    write_csv(tmp_path / "r.csv", [["text"]] + [[t] for t in texts])
    assert load(tmp_path, "r.csv").items == texts


# ---------------------------------------------------------------- prompt-completion (TRL's third format)
def test_prompt_completion_pairs_plain_and_conversational(tmp_path: Path) -> None:
    from synthmix.data_mixers.sources import PromptCompletion

    write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2 + 2 =", "completion": " 4", "id": 1}])
    assert load(tmp_path, "pc.jsonl", prompt_field="prompt", completion_field="completion").items == [
        PromptCompletion("2 + 2 =", " 4")
    ]
    pair = {"prompt": [CHAT[0]], "completion": [CHAT[1]]}
    write_jsonl(tmp_path / "cpc.jsonl", [pair])
    pq.write_table(pa.table({"q": ["a?"], "a": ["b."]}), tmp_path / "pc.parquet")
    assert load(tmp_path, "cpc.jsonl", prompt_field="prompt", completion_field="completion").items == [
        PromptCompletion([CHAT[0]], [CHAT[1]])
    ]
    assert load(tmp_path, "pc.parquet", prompt_field="q", completion_field="a").items == [PromptCompletion("a?", "b.")]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "p"}, "no field 'completion' (fields: prompt)"),
        ({"prompt": "p", "completion": ""}, "field 'completion' is empty"),
        ({"prompt": "p", "completion": [CHAT[1]]}, "field 'prompt' is a string, expected a list of {role, content}"),
        ({"prompt": 3, "completion": "c"}, "field 'prompt' is a number (3), expected a string"),
    ],
)
def test_malformed_prompt_completion_records_name_the_field(tmp_path: Path, record: Any, reason: str) -> None:
    write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "ok", "completion": "fine"}, record])
    fields = {"prompt_field": "prompt", "completion_field": "completion"}
    assert error(tmp_path, "pc.jsonl", **fields) == f"source 'x': pc.jsonl:2: {reason}"
