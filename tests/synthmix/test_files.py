"""synthmix.files: a file or folder is in place whole or not at all, a full disk is a one-line DiskFullError that
names the path, and what a crash left behind is cleaned up."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from synthmix import files
from synthmix.errors import DiskFullError
from synthmix.files import (
    atomic_file,
    atomic_folder,
    is_disk_full,
    lock_file,
    lock_holder,
    remove_temporaries,
    write_json,
    write_text,
)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    write_text(path, "previous\n")
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as handle:
        handle.write("half of the new one")
        raise KeyboardInterrupt
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.jsonl"]
    write_json(path, {"b": 1, "a": [2]})
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}'


def test_a_folder_appears_whole_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    with atomic_folder(target) as folder:
        (folder / "weights").write_text("one")
        assert not target.exists()
    with atomic_folder(target) as folder:
        (folder / "other").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["other"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_first_writer_wins_keeps_what_another_process_put_in_place(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with atomic_folder(target, replace=False) as folder:
        (folder / "data").write_text("ours")
        target.mkdir()  # another process finished the same entry meanwhile
        (target / "data").write_text("theirs")
    assert (target / "data").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing_behind(tmp_path: Path, code: int) -> None:
    target = tmp_path / "checkpoints" / "step-4"
    with pytest.raises(DiskFullError) as caught, atomic_folder(target) as folder:
        (folder / "optimizer.pt").write_bytes(b"half")
        raise OSError(code, "No space left on device")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"no space left on device while writing {target} (")
    assert "free on that file system); free some space there" in message and "--resume latest" in message
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_library_wrapped_disk_full_error_is_recognised(tmp_path: Path) -> None:
    # safetensors raises its own error type with the OS message inside it.
    with pytest.raises(DiskFullError), atomic_file(tmp_path / "w.safetensors", "wb"):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(RuntimeError, match="something else"), atomic_file(tmp_path / "w.safetensors", "wb"):
        raise RuntimeError("something else")


def test_leftovers_of_a_crash_are_removed(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    (tmp_path / ".step-3.tmp-123-abcdef12").mkdir()
    (tmp_path / ".corpus.jsonl.tmp-9-00000000").write_text("half")
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_a_full_disk_inside_a_temporary_folder_is_named_by_the_final_path(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "step-4"
    with pytest.raises(DiskFullError) as caught, atomic_folder(target) as folder:
        with atomic_folder(folder / "adapter") as inner:  # the innermost writer sees only temporary names
            (inner / "adapter_model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value).startswith(f"no space left on device while writing {target / 'adapter'} (")


def test_an_error_raised_while_handling_a_full_disk_is_a_full_disk() -> None:
    """torch's zip writer, closing its file after ENOSPC, raises a RuntimeError of its own."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904
    except RuntimeError as err:
        assert is_disk_full(err)
    assert not is_disk_full(RuntimeError("unexpected pos 64 vs 0")) and not is_disk_full(None)


class _Crash(BaseException):
    """The process dies here (nothing after this point runs)."""


def _old_and_new(tmp_path: Path) -> Path:
    target = tmp_path / "adapter"
    with atomic_folder(target) as folder:
        (folder / "weights").write_text("old")
    return target


def test_a_replaced_folder_is_whole_at_every_instant_and_a_crash_leaves_only_a_copy_to_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old and new folders are exchanged in one rename: a crash right after it finds the new one in place,
    and the old one under a temporary name that the next start deletes."""
    target = _old_and_new(tmp_path)

    def crash(*args: object, **kwargs: object) -> None:
        raise _Crash

    monkeypatch.setattr(files.shutil, "rmtree", crash)
    with pytest.raises(_Crash), atomic_folder(target) as folder:
        (folder / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    monkeypatch.undo()
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"] and (target / "weights").read_text() == "new"


def test_without_an_atomic_exchange_a_crash_between_the_two_renames_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system cannot exchange, the old folder is moved aside first: a crash before the new one is
    renamed in leaves the name empty for an instant, and the next start puts the old one back."""
    target = _old_and_new(tmp_path)
    renames: list[tuple[object, object]] = []
    real_replace = os.replace

    def replace_then_crash(src: object, dst: object) -> None:
        renames.append((src, dst))
        if len(renames) == 2:  # the new folder's rename into place
            raise _Crash
        real_replace(src, dst)

    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    monkeypatch.setattr(files.os, "replace", replace_then_crash)
    with pytest.raises(_Crash), atomic_folder(target) as folder:
        (folder / "weights").write_text("new")
    monkeypatch.undo()
    assert not target.exists()
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"] and (target / "weights").read_text() == "old"


def test_a_held_lock_is_refused_without_waiting_and_names_its_holder(tmp_path: Path) -> None:
    held = lock_file(tmp_path / ".lock", wait=False)
    assert held is not None
    try:
        assert lock_file(tmp_path / ".lock", wait=False) is None
        assert lock_holder(tmp_path / ".lock") == str(os.getpid())
    finally:
        held.close()
    again = lock_file(tmp_path / ".lock", wait=False)
    assert again is not None
    again.close()
