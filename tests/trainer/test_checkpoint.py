"""Checkpoints: atomic writes sealed by a manifest of checksums, pruning, damage detection, RNG round trips."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.checkpoint import (
    MANIFEST,
    capture_rng,
    find_checkpoint,
    load_torch,
    remove_stale_temporaries,
    restore_rng,
    verify,
    write_checkpoint,
)
from trainer.errors import TrainerError

FILES = {"optimizer.pt": b"\x00\x01optimizer" * 50, "run.json": b'{"step": 1}', "adapter/weights.bin": b"w" * 300}


def write_files(folder: Path) -> None:
    for name, content in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)


def write(root: Path, step: int, keep_last: int = 10) -> Path:
    return write_checkpoint(root, step, write_files, keep_last)


def flip_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset % len(data)] ^= 0x01
    file.write_bytes(bytes(data))


def test_the_checkpoint_folder_appears_only_complete_with_a_manifest_of_every_file(tmp_path: Path) -> None:
    seen_while_writing = []

    def observe_then_write(folder: Path) -> None:
        seen_while_writing.extend([folder.name, sorted(p.name for p in tmp_path.iterdir())])
        write_files(folder)

    path = write_checkpoint(tmp_path, 7, observe_then_write, keep_last=2)
    tmp_name, present = seen_while_writing
    assert tmp_name.startswith(".tmp-step-7-") and present == [tmp_name]  # no step-7 while its files are written
    assert path == tmp_path / "step-7" and sorted(p.name for p in tmp_path.iterdir()) == ["step-7"]
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["step"] == 7
    assert manifest["files"] == {name: hashlib.sha256(content).hexdigest() for name, content in FILES.items()}
    assert verify(path) is None


def test_a_failed_write_leaves_no_checkpoint_and_keeps_the_previous_ones(tmp_path: Path) -> None:
    write(tmp_path, 4)

    def disk_full(folder: Path) -> None:
        (folder / "optimizer.pt").write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(tmp_path, 8, disk_full, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4"]
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "step-4"


def test_rewriting_a_step_replaces_the_folder_whole(tmp_path: Path) -> None:
    write(tmp_path, 5)
    (tmp_path / "step-5" / "stray.txt").write_text("from the first write")
    write(tmp_path, 5)
    assert not (tmp_path / "step-5" / "stray.txt").exists() and verify(tmp_path / "step-5") is None


def test_keep_last_prunes_the_oldest_by_step_number(tmp_path: Path) -> None:
    for step in (8, 9, 10, 11, 100):
        write(tmp_path, step, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-10", "step-100", "step-11"]


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    write(tmp_path, 3)
    (tmp_path / ".tmp-step-6-123").mkdir()
    (tmp_path / ".tmp-step-6-123" / "optimizer.pt").write_bytes(b"half")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step-3"]


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(FILES)), offset=st.integers(0, 10_000))
def test_verify_detects_any_flipped_byte(name: str, offset: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), 1)
        flip_byte(path / name, offset)
        assert verify(path) == f"{name} does not match its checksum"


def test_verify_names_a_missing_file_a_missing_manifest_and_an_unreadable_one(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    (path / "run.json").unlink()
    assert verify(path) == "run.json is missing"
    (path / MANIFEST).write_text("{not json")
    assert verify(path) == "manifest.json is unreadable"
    (path / MANIFEST).unlink()
    assert verify(path) == "no manifest.json (half-written)"


def test_latest_skips_damaged_checkpoints_with_a_warning_each(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        write(tmp_path, step)
    flip_byte(tmp_path / "step-6" / "optimizer.pt", 3)
    (tmp_path / "step-4" / MANIFEST).unlink()
    with pytest.warns(UserWarning) as warned:
        assert find_checkpoint(tmp_path, "latest") == tmp_path / "step-2"
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2
    assert "step-6 is damaged (optimizer.pt does not match its checksum)" in messages[0]
    assert "step-4 is damaged (no manifest.json (half-written))" in messages[1]


def test_latest_without_an_intact_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="--resume latest: no checkpoint in"):
        find_checkpoint(tmp_path / "checkpoints", "latest")
    write(tmp_path, 1)
    flip_byte(tmp_path / "step-1" / "run.json", 0)
    with pytest.warns(UserWarning), pytest.raises(TrainerError, match="every checkpoint in .* is damaged"):
        find_checkpoint(tmp_path, "latest")


def test_a_named_checkpoint_must_exist_and_be_intact(tmp_path: Path) -> None:
    path = write(tmp_path, 3)
    assert find_checkpoint(tmp_path, str(path)) == path
    flip_byte(path / "adapter" / "weights.bin", 10)
    with pytest.raises(TrainerError, match=r"step-3: adapter/weights.bin does not match its checksum"):
        find_checkpoint(tmp_path, str(path))
    with pytest.raises(TrainerError, match="no such checkpoint folder"):
        find_checkpoint(tmp_path, str(tmp_path / "step-99"))


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    torch.save(capture_rng(), tmp_path / "rng.pt")

    def draw() -> tuple:
        return random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.rand(3).tolist()

    expected = draw()
    draw()  # move every generator on
    restore_rng(load_torch(tmp_path / "rng.pt"))
    assert draw() == expected
