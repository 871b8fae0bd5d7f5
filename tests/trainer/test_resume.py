"""Resume with changed settings, mid-epoch: the documented rule is that the epoch under way finishes with the
plan it started with (every real example exactly once, the old ratio), its remaining steps counted from what
is left of it, and the new values apply from the next epoch on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dist_probe import record_pieces

from synthmix.data_mixers import MixerError
from synthmix.trainer.config import load_config
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.loop import fit
from synthmix.trainer.runtime.setup import setup

QUICK = {"collapse": {"enabled": False}, "checkpoint": {"every_steps": None}}


def train_recording(config, resume: str | None = None) -> list[list]:
    """Run `config` to its end and return every piece the model was fed, as dist_probe records them:
    [epoch, kind, source, index, start, tokens]."""
    run = setup(config, resume)
    pieces = record_pieces(run.mixer)
    try:
        fit(run)
    finally:
        run.close()
    return pieces


def assert_every_real_example_once(pieces, lengths: dict[tuple[str, int], int]) -> None:
    """The pieces of real examples tile each example exactly once: starts 0, then each piece where the last ended."""
    covered: dict[tuple[str, int], int] = {}
    for _, kind, source, index, start, n in pieces:
        if kind != "real":
            continue
        key = (source, index)
        assert covered.get(key, 0) == start, f"{key}: a piece at {start} after {covered.get(key, 0)} tokens"
        covered[key] = start + n
    assert covered == lengths


def real_lengths(run_config) -> dict[tuple[str, int], int]:
    from synthmix.data_mixers.corpus import build_corpora

    corpora = build_corpora(run_config.data, run_config.tokenizer)
    return {
        (c.name, int(c.source_index[i])): int(c.lengths[i])
        for c in corpora.train
        if c.kind == "real"
        for i in range(len(c))
    }


@pytest.mark.parametrize(
    "changed",
    [
        ["--data.synthetic_ratio", "0.45"],
        ["--train.per_device_train_batch_size", "3", "--train.gradient_accumulation_steps", "2"],
        ["--train.seq_len", "48"],
    ],
    ids=["ratio", "batch", "seq_len"],
)
def test_a_mid_epoch_resume_with_changed_settings_keeps_the_epoch_exact(
    make_config, tmp_path: Path, changed: list[str]
) -> None:
    path = make_config(QUICK)
    out = tmp_path / "run"
    first = load_config(path, ["--output_dir", str(out), "--train.max_steps", "10"])  # epoch 1 has 22 steps
    before = train_recording(first)
    resumed = load_config(path, ["--output_dir", str(out), "--train.max_steps", "null", *changed])
    after = train_recording(resumed, resume="latest")

    events = read_events(out / METRICS)
    (resume,) = [e for e in events if e["event"] == "resume"]
    assert resume["step"] == 10 and resume["changed"]
    assert {p[0] for p in before} == {1}
    epoch_one = before + [p for p in after if p[0] == 1]
    assert_every_real_example_once(epoch_one, real_lengths(first))
    assert_every_real_example_once([p for p in after if p[0] == 2], real_lengths(first))

    epochs = {e["epoch"]: e for e in events if e["event"] == "epoch"}
    assert abs(epochs[1]["realized_synthetic_ratio"] - 0.3) <= 0.01  # the plan epoch 1 started with
    assert epochs[1]["target_synthetic_ratio"] == 0.3
    new_ratio = 0.45 if "--data.synthetic_ratio" in changed else 0.3
    assert epochs[2]["target_synthetic_ratio"] == new_ratio
    assert abs(epochs[2]["realized_synthetic_ratio"] - new_ratio) <= 0.01
    steps = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in steps] == list(range(1, len(steps) + 1))  # every step once, none replayed
    assert all(e["tokens_real"] + e["tokens_synthetic"] > 0 for e in steps)  # and no step without data
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_bfd_run_resumed_mid_epoch_ends_with_the_uninterrupted_adapter(make_config, tmp_path: Path) -> None:
    path = make_config({**QUICK, "data": {"packing": "bfd"}, "checkpoint": {"every_steps": 5}})
    straight = tmp_path / "straight"
    pieces = train_recording(load_config(path, ["--output_dir", str(straight)]))
    assert pieces and all(start == 0 for *_, start, n in pieces if n < 64)  # whole examples, none continued
    out = tmp_path / "resumed"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "adapter")
    middle = min((out / "checkpoints").iterdir(), key=lambda p: int(p.name.removeprefix("step-")))
    assert json.loads((middle / "progress.json").read_text())["step_in_epoch"] > 0  # a checkpoint inside an epoch
    train_recording(load_config(path, ["--output_dir", str(out)]), resume=str(middle))
    adapter = "adapter/adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (straight / adapter).read_bytes()
    epochs = [e for e in read_events(out / METRICS) if e["event"] == "epoch"]
    assert [e["packing"] for e in epochs] == ["bfd", "bfd"] and all(0.5 < e["padding_efficiency"] <= 1 for e in epochs)


def test_a_bfd_resume_with_another_seq_len_mid_epoch_is_refused(make_config, tmp_path: Path) -> None:
    path = make_config({**QUICK, "data": {"packing": "bfd"}})
    out = tmp_path / "run"
    train_recording(load_config(path, ["--output_dir", str(out), "--train.max_steps", "6"]))
    with pytest.raises(MixerError, match=r"packed \(data.packing: bfd\) into rows of 64 tokens; resume it with"):
        setup(load_config(path, ["--output_dir", str(out), "--train.seq_len", "48"]), resume="latest")
