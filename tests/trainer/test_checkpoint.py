"""synthmix.trainer.runtime.checkpoint: parts written atomically and sealed by a manifest of checksums, pruning, damage
detection, compatibility checks before anything is loaded, the config diff, and RNG round trips."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from hypothesis import given, settings
from hypothesis import strategies as st

from synthmix.errors import DiskFullError
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.runtime.checkpoint import (
    JSON,
    MANIFEST,
    TORCH,
    Checkpointer,
    Part,
    RngState,
    find_checkpoint,
    verify,
)
from synthmix.trainer.runtime.run_folder import claim_run_folder


class Box:
    """A stateful object holding whatever state it is given."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


META = {"world_size": 1, "data_fingerprint": "abc", "config": {"train": {"epochs": 2, "learning_rate": 0.01}}}


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def parts(progress: dict | None = None) -> list[Part]:
    return [
        Part("progress", Box(progress or {"step": 1}), codec=JSON),
        Part("optimizer", Box({"state": torch.arange(50.0)})),
        Part("mixer", Box({"position": 7}), codec=JSON, per_rank=True),
    ]


def save(accelerator: Accelerator, root: Path, step: int, keep_last: int = 10, **kw: Any) -> Path:
    return Checkpointer(root, accelerator, keep_last).save(step, kw.get("parts", parts()), META, files={})


def flip_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset % len(data)] ^= 0x01
    file.write_bytes(bytes(data))


def test_a_checkpoint_appears_only_complete_with_a_manifest_of_every_file(accelerator, tmp_path: Path) -> None:
    seen_while_writing: list[list[str]] = []

    class Watching(type(JSON)):
        def write(self, path: Path, state: Any) -> None:
            seen_while_writing.append(sorted(p.name for p in tmp_path.iterdir()))
            super().write(path, state)

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"event": "train"}\n')
    checkpointer = Checkpointer(tmp_path / "checkpoints", accelerator, keep_last=2)
    path = checkpointer.save(
        7, [*parts(), Part("watched", Box({}), codec=Watching())], META, {"metrics.jsonl": metrics}
    )
    assert seen_while_writing == [["checkpoints", "metrics.jsonl"]]
    assert path == tmp_path / "checkpoints" / "step-7"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left
    manifest = json.loads((path / MANIFEST).read_text())
    assert (manifest["step"], manifest["world_size"], manifest["data_fingerprint"]) == (7, 1, "abc")
    assert manifest["config"] == META["config"]
    names = {"progress.json", "optimizer.pt", "mixer.json", "watched.json", "metrics.jsonl"}
    assert set(manifest["files"]) == names
    assert manifest["files"]["metrics.jsonl"] == hashlib.sha256(metrics.read_bytes()).hexdigest()
    assert json.loads((path / "mixer.json").read_text()) == [{"position": 7}]  # one state per rank
    assert verify(path) is None


def test_restore_gives_every_part_its_state_back_and_lists_changed_settings(accelerator, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("at the checkpoint\n")
    checkpointer = Checkpointer(tmp_path / "checkpoints", accelerator, keep_last=2)
    path = checkpointer.save(3, parts({"step": 3}), META, {"metrics.jsonl": metrics})
    metrics.write_text("at the checkpoint\nlogged after it\n")

    fresh = parts({"step": 0})
    now = {**META, "config": {"train": {"epochs": 2, "learning_rate": 0.02}}}
    restored = checkpointer.restore(path, fresh, now, {"metrics.jsonl": metrics})
    assert [part.obj.state_dict() for part in fresh[::2]] == [{"step": 3}, {"position": 7}]
    assert torch.equal(fresh[1].obj.state_dict()["state"], torch.arange(50.0))
    assert metrics.read_text() == "at the checkpoint\n"  # events logged after the checkpoint are dropped
    assert (restored.step, restored.path) == (3, path)
    assert restored.changed == ["train.learning_rate: checkpoint 0.01, now 0.02 (the new value wins)"]


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"world_size": 2}, "was written by 1 processes; this launch has 2"),
        ({"data_fingerprint": "xyz"}, "was trained on other data (sources, their cleaning or their sizes changed)"),
    ],
)
def test_restore_refuses_another_world_size_or_other_data_before_loading_anything(
    accelerator, tmp_path: Path, change: dict, expected: str
) -> None:
    checkpointer = Checkpointer(tmp_path, accelerator, keep_last=2)
    path = checkpointer.save(1, parts(), META, {})
    fresh = parts({"step": 0})
    with pytest.raises(TrainerError, match=re.escape(expected)):
        checkpointer.restore(path, fresh, {**META, **change}, {})
    assert fresh[0].obj.state_dict() == {"step": 0}


def test_a_part_the_checkpoint_lacks_is_named(accelerator, tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, accelerator, keep_last=2)
    path = checkpointer.save(1, parts(), META, {})
    with pytest.raises(TrainerError, match="has no scaler.pt"):
        checkpointer.restore(path, [*parts(), Part("scaler", Box({}), codec=TORCH)], META, {})


def test_a_full_disk_leaves_no_checkpoint_and_keeps_the_previous_ones(accelerator, tmp_path: Path) -> None:
    save(accelerator, tmp_path, 4)

    class Full(type(JSON)):
        def write(self, path: Path, state: Any) -> None:
            path.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*step-8"):
        save(accelerator, tmp_path, 8, parts=[*parts(), Part("big", Box({}), codec=Full())])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4"]
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "step-4"


def test_rewriting_a_step_replaces_the_folder_whole(accelerator, tmp_path: Path) -> None:
    save(accelerator, tmp_path, 5)
    (tmp_path / "step-5" / "stray.txt").write_text("from the first write")
    save(accelerator, tmp_path, 5)
    assert not (tmp_path / "step-5" / "stray.txt").exists() and verify(tmp_path / "step-5") is None


def test_keep_last_prunes_the_oldest_by_step_number(accelerator, tmp_path: Path) -> None:
    for step in (8, 9, 10, 11, 100):
        save(accelerator, tmp_path, step, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-10", "step-100", "step-11"]


def test_stale_temporaries_are_removed_when_a_run_claims_its_folder(accelerator, tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    save(accelerator, checkpoints, 3)
    stale = checkpoints / ".step-6.tmp-123-abcdef12"
    stale.mkdir()
    (stale / "optimizer.pt").write_bytes(b"half")
    claim_run_folder(tmp_path / "run", "latest", checkpoints).close()
    assert [p.name for p in checkpoints.iterdir()] == ["step-3"]


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["progress.json", "optimizer.pt", "mixer.json"]), offset=st.integers(0, 10_000))
def test_verify_detects_any_flipped_byte(name: str, offset: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = save(Accelerator(cpu=True), Path(tmp), 1)
        flip_byte(path / name, offset)
        assert verify(path) == f"{name} does not match its checksum"


def test_verify_names_a_missing_file_a_missing_manifest_and_an_unreadable_one(accelerator, tmp_path: Path) -> None:
    path = save(accelerator, tmp_path, 1)
    (path / "progress.json").unlink()
    assert verify(path) == "progress.json is missing"
    (path / MANIFEST).write_text("{not json")
    assert verify(path) == "manifest.json is unreadable"
    (path / MANIFEST).unlink()
    assert verify(path) == "no manifest.json (half-written)"


def test_latest_skips_damaged_checkpoints_with_a_warning_each(accelerator, tmp_path: Path) -> None:
    for step in (2, 4, 6):
        save(accelerator, tmp_path, step)
    flip_byte(tmp_path / "step-6" / "optimizer.pt", 3)
    (tmp_path / "step-4" / MANIFEST).unlink()
    with pytest.warns(UserWarning) as warned:
        assert find_checkpoint(tmp_path, "latest") == tmp_path / "step-2"
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2
    assert "step-6 is damaged (optimizer.pt does not match its checksum)" in messages[0]
    assert "step-4 is damaged (no manifest.json (half-written))" in messages[1]


def test_latest_without_an_intact_checkpoint_is_an_error(accelerator, tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="--resume latest: no checkpoint in"):
        find_checkpoint(tmp_path / "checkpoints", "latest")
    save(accelerator, tmp_path, 1)
    flip_byte(tmp_path / "step-1" / "progress.json", 0)
    with pytest.warns(UserWarning), pytest.raises(TrainerError, match="every checkpoint in .* is damaged"):
        find_checkpoint(tmp_path, "latest")


def test_a_named_checkpoint_must_exist_and_be_intact(accelerator, tmp_path: Path) -> None:
    path = save(accelerator, tmp_path, 3)
    assert find_checkpoint(tmp_path, str(path)) == path
    flip_byte(path / "optimizer.pt", 10)
    with pytest.raises(TrainerError, match=r"step-3: optimizer.pt does not match its checksum"):
        find_checkpoint(tmp_path, str(path))
    with pytest.raises(TrainerError, match=rf"no such checkpoint folder \(the checkpoints in {tmp_path} are step-3\)"):
        find_checkpoint(tmp_path, str(tmp_path / "step-99"))
    with pytest.raises(TrainerError, match=r"no such checkpoint folder \(.*empty has none\)"):
        find_checkpoint(tmp_path / "empty", str(tmp_path / "step-99"))


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    TORCH.write(tmp_path / "rng.pt", RngState().state_dict())

    def draw() -> tuple:
        return random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.rand(3).tolist()

    expected = draw()
    draw()  # move every generator on
    RngState().load_state_dict(TORCH.read(tmp_path / "rng.pt"))
    assert draw() == expected


# ---------------------------------------------------------------- sharded parts (torch.distributed.checkpoint)
def sharded_part(weight: torch.Tensor, extra: Any) -> Part:
    return Part("sharded", Box({"weight": weight, "groups": [{"lr": extra}]}), sharded=True)


def test_a_sharded_part_is_written_by_torch_distributed_checkpoint_sealed_and_read_back(accelerator, tmp_path) -> None:
    checkpointer = Checkpointer(tmp_path, accelerator, keep_last=2)
    path = checkpointer.save(2, [*parts(), sharded_part(torch.arange(6.0), 0.5)], META, {})
    files = json.loads((path / MANIFEST).read_text())["files"]
    assert {"sharded/.metadata", "sharded/__0_0.distcp"} <= files.keys()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the shards' staging folder is gone

    fresh = sharded_part(torch.zeros(6), 0.0)  # torch.distributed.checkpoint reads into the shapes it is given
    checkpointer.restore(path, [*parts(), fresh], META, {})
    assert torch.equal(fresh.obj.state["weight"], torch.arange(6.0)) and fresh.obj.state["groups"] == [{"lr": 0.5}]


class Pickled:
    """An object that only an unrestricted unpickler would build."""


def test_a_sharded_part_holding_a_pickled_object_is_refused_in_one_line(accelerator, tmp_path) -> None:
    checkpointer = Checkpointer(tmp_path, accelerator, keep_last=2)
    path = checkpointer.save(2, [sharded_part(torch.ones(2), Pickled())], META, {})
    with pytest.raises(TrainerError, match=r"holds .*Pickled, which torch.load\(weights_only=True\) refuses"):
        checkpointer.restore(path, [sharded_part(torch.zeros(2), "placeholder")], META, {})


def test_a_full_disk_while_writing_shards_is_one_line_and_leaves_nothing(accelerator, tmp_path, monkeypatch) -> None:
    from torch.distributed.checkpoint import FileSystemWriter

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSystemWriter, "write_data", full)
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*step-3"):
        save(accelerator, tmp_path, 3, parts=[*parts(), sharded_part(torch.ones(2), 0.1)])
    assert list(tmp_path.iterdir()) == []


def test_a_sharded_metadata_file_holding_a_pickled_call_is_refused_before_it_runs(accelerator, tmp_path) -> None:
    checkpointer = Checkpointer(tmp_path / "checkpoints", accelerator, keep_last=2)
    path = checkpointer.save(2, [sharded_part(torch.ones(2), 0.1)], META, {})
    marker = tmp_path / "made-by-the-checkpoint"

    class Planted:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    (path / "sharded" / ".metadata").write_bytes(pickle.dumps(Planted()))
    with pytest.raises(TrainerError, match=r"sharded does not load \(it holds posix.mkdir, which torch.load"):
        checkpointer.restore(path, [sharded_part(torch.zeros(2), 0.0)], META, {})
    assert not marker.exists()


def test_shards_missing_from_the_main_process_view_are_not_sealed(accelerator, tmp_path, monkeypatch) -> None:
    """What a run folder that the nodes do not share looks like from the main process: another rank's file is
    not there. The checkpoint is not sealed, and nothing is left behind."""
    write_shards = Checkpointer._write_shards

    def on_another_disk(self, step, parts):
        shards = write_shards(self, step, parts)
        if shards is not None:
            (shards.folder / "sharded" / "__0_0.distcp").unlink()
        return shards

    monkeypatch.setattr(Checkpointer, "_write_shards", on_another_disk)
    with pytest.raises(TrainerError, match=r"sharded/__0_0.distcp and 0 more are missing.*every node\) sees"):
        save(accelerator, tmp_path, 3, parts=[*parts(), sharded_part(torch.ones(2), 0.1)])
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_sharding_names_what_it_lacks(accelerator, tmp_path) -> None:
    checkpointer = Checkpointer(tmp_path, accelerator, keep_last=2)
    whole = checkpointer.save(1, parts(), META, {})
    with pytest.raises(TrainerError, match=r"has no sharded: .*full fine-tuning under FSDP2 writes sharded/"):
        checkpointer.restore(whole, [sharded_part(torch.zeros(2), 0.0)], META, {})
