"""The tokenized store: a second start maps instead of rebuilding, a changed input or setting rebuilds only what
it touches, a damaged entry is rebuilt with a warning, and two processes building at once tokenize once."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testkit import write_jsonl
from transformers import PreTrainedTokenizerBase

from synthmix.data_mixers import Corpora, DataConfig, SourceConfig, build_corpora
from synthmix.data_mixers.config import FilterConfig, HeldOutConfig, TokenizerConfig

REAL = [f"real text number {i} about the topic {i % 7}" for i in range(60)]
SYNTHETIC = [f"generated sample {i}, words words" for i in range(40)]
CHATS = [
    [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}] for i in range(20)
]


@pytest.fixture
def data(tmp_path: Path) -> DataConfig:
    sources = [
        SourceConfig(name="docs", kind="real", path=write_jsonl(tmp_path / "r.jsonl", [{"text": t} for t in REAL])),
        SourceConfig(
            name="gen", kind="synthetic", path=write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in SYNTHETIC])
        ),
        SourceConfig(
            name="chat", kind="real", messages_field="messages",
            path=write_jsonl(tmp_path / "c.jsonl", [{"messages": c} for c in CHATS]),
        ),
    ]  # fmt: skip
    return DataConfig(sources=sources, cache_dir=str(tmp_path / "cache"), held_out=HeldOutConfig(fraction=0.1))


def build(data: DataConfig, tokenizer: PreTrainedTokenizerBase) -> Corpora:
    return build_corpora(data, TokenizerConfig(), tokenizer=tokenizer)


def stores(corpora: Corpora) -> dict[str, str]:
    """How each source's entry (and the cleaning) was obtained: built or cached."""
    return {**{r.name: r.store for r in corpora.reports}, "cleaning": corpora.cleaning["store"]}


def arrays(corpora: Corpora) -> list[list[int]]:
    return [c.example_ids(i).tolist() for c in corpora.train for i in range(len(c))]


def test_a_second_start_maps_the_store_and_sees_the_same_data(data: DataConfig, byte_tokenizer) -> None:
    first = build(data, byte_tokenizer)
    assert stores(first) == {"docs": "built", "gen": "built", "chat": "built", "cleaning": "built"}
    second = build(data, byte_tokenizer)
    assert stores(second) == {"docs": "cached", "gen": "cached", "chat": "cached", "cleaning": "cached"}
    assert arrays(second) == arrays(first)
    assert [e.ids.tolist() for e in second.held_out] == [e.ids.tolist() for e in first.held_out]
    # Mapped, not copied: the token ids are the store's files, in the narrowest dtype that holds the vocabulary.
    assert all(isinstance(c.ids, np.memmap) and c.ids.dtype == np.uint16 for c in second.train)
    assert {r.name: (r.examples, r.tokens) for r in second.reports} == {
        r.name: (r.examples, r.tokens) for r in first.reports
    }


@pytest.mark.parametrize(
    "change,rebuilt",
    [
        ("edit docs", {"docs", "cleaning"}),
        ("docs text_field", {"docs", "cleaning"}),
        ("docs max_examples", {"docs", "cleaning"}),
        ("docs on_error", {"docs", "cleaning"}),
        ("docs format", {"docs", "cleaning"}),
        ("docs split", {"docs", "cleaning"}),
        ("chat messages_field", {"chat", "cleaning"}),
        ("add_eos", {"docs", "gen", "cleaning"}),  # the chat source has no eos of its own
        ("assistant_only_loss", {"chat", "cleaning"}),
        ("tokenizer", {"docs", "gen", "chat", "cleaning"}),
        ("held_out", {"cleaning"}),
        ("dedup", {"cleaning"}),
        ("contamination", {"cleaning"}),
        ("filters", {"cleaning"}),
        ("max_tokens_per_example", {"cleaning"}),
        ("synthetic_ratio", set()),  # the mix is planned from the store: nothing to rebuild
    ],
)
def test_a_changed_input_or_setting_rebuilds_only_what_it_touches(
    data: DataConfig, byte_tokenizer, tmp_path: Path, change: str, rebuilt: set[str]
) -> None:
    build(data, byte_tokenizer)
    tokenizer = byte_tokenizer
    docs = data.sources[0]
    if change == "edit docs":
        time.sleep(0.01)  # a new modification time even on coarse clocks
        write_jsonl(Path(docs.path), [{"text": t} for t in REAL[:-1]] + [{"text": "an edited last line"}])
    elif change == "docs text_field":
        write_jsonl(tmp_path / "r2.jsonl", [{"body": t} for t in REAL])
        data.sources[0] = dataclasses.replace(docs, path=str(tmp_path / "r2.jsonl"), text_field="body")
        rebuilt = {"docs", "cleaning"}
    elif change == "chat messages_field":  # the same file holds the chats under a second name
        chat = data.sources[2]
        write_jsonl(Path(chat.path), [{"messages": c, "conv": c} for c in CHATS])
        build(data, byte_tokenizer)  # the edited file is built once under the old name
        data.sources[2] = dataclasses.replace(chat, messages_field="conv")
    elif change.startswith("docs "):
        key = change.split()[1]
        value = {"max_examples": 50, "on_error": "skip", "format": "jsonl", "split": "validation"}[key]
        data.sources[0] = dataclasses.replace(docs, **{key: value})
    elif change == "tokenizer":
        from synthmix.data_mixers.tokenizer import train_bpe

        tokenizer = train_bpe(REAL, vocab_size=270)
    else:
        value = {
            "add_eos": False, "assistant_only_loss": True, "held_out": HeldOutConfig(fraction=0.2), "dedup": False,
            "contamination": "error", "filters": FilterConfig(min_tokens=5), "max_tokens_per_example": 10,
            "synthetic_ratio": 0.4,
        }[change]  # fmt: skip
        data = dataclasses.replace(data, **{change: value})
    after = stores(build(data, tokenizer))
    assert {name for name, how in after.items() if how == "built"} == rebuilt


def test_completion_only_loss_rebuilds_the_prompt_completion_source(data: DataConfig, byte_tokenizer, tmp_path) -> None:
    pairs = [{"prompt": f"q{i}?", "completion": f"a{i}."} for i in range(20)]
    path = write_jsonl(tmp_path / "pc.jsonl", pairs)
    pc = SourceConfig(name="pc", kind="real", path=path, prompt_field="prompt", completion_field="completion")
    data.sources.append(pc)
    build(data, byte_tokenizer)
    after = stores(build(dataclasses.replace(data, completion_only_loss=False), byte_tokenizer))
    assert {name for name, how in after.items() if how == "built"} == {"pc", "cleaning"}


def test_a_damaged_entry_is_rebuilt_with_a_warning_never_used(data: DataConfig, byte_tokenizer) -> None:
    first = build(data, byte_tokenizer)
    expected = arrays(first)  # read now: the damage below is done to the very files `first` maps
    entry = Path(next(r.entry for r in first.reports if r.name == "docs"))
    ids = entry / "ids.bin"
    raw = bytearray(ids.read_bytes())
    raw[5] ^= 0x40
    ids.write_bytes(bytes(raw))
    with pytest.warns(
        UserWarning, match=r"store entry .* is damaged \(ids.bin does not match its checksum\); rebuilding it"
    ):
        again = build(data, byte_tokenizer)
    assert stores(again)["docs"] == "built" and arrays(again) == expected
    (entry / "ids.bin").write_bytes(ids.read_bytes()[:-4])  # truncated, e.g. by a copy that ran out of space
    with pytest.warns(UserWarning, match=r"ids.bin holds \d+ bytes, the manifest says \d+"):
        assert stores(build(dataclasses.replace(data, verify_cache="sizes"), byte_tokenizer))["docs"] == "built"
    (entry / "manifest.json").unlink()  # a build that died before sealing its entry
    with pytest.warns(UserWarning, match=r"no manifest.json \(half-written\)"):
        assert arrays(build(data, byte_tokenizer)) == expected


def test_no_temporary_folder_is_left_behind_and_entries_name_their_source(data: DataConfig, byte_tokenizer) -> None:
    corpora = build(data, byte_tokenizer)
    store = Path(data.cache_dir) / "store"
    assert not [p for p in store.iterdir() if ".tmp-" in p.name]
    manifest = json.loads((Path(corpora.reports[0].entry) / "manifest.json").read_text())
    assert manifest["meta"]["source"] == "docs" and manifest["meta"]["examples"] == len(REAL)
    assert set(manifest["arrays"]) == {"ids", "offsets", "keys"}
    assert all(len(spec["sha256"]) == 64 for spec in manifest["arrays"].values())


def _build_in_another_process(data: DataConfig, tokenizer_dir: str, queue: Any) -> None:
    from transformers import AutoTokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    corpora = build_corpora(data, TokenizerConfig(), tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir))
    queue.put((stores(corpora), arrays(corpora)))


@pytest.mark.slow
def test_two_processes_building_the_same_store_at_once_tokenize_each_source_once(
    data: DataConfig, byte_tokenizer, tmp_path: Path
) -> None:
    byte_tokenizer.save_pretrained(tmp_path / "tokenizer")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_build_in_another_process, args=(data, str(tmp_path / "tokenizer"), queue))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    for name in ("docs", "gen", "chat", "cleaning"):
        assert sorted(how[name] for how, _ in results) == ["built", "cached"], name
    assert results[0][1] == results[1][1]


def test_the_store_warns_about_nothing_on_a_clean_second_start(data: DataConfig, byte_tokenizer) -> None:
    build(data, byte_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(data, byte_tokenizer)
