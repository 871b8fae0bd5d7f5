"""synthmix.files: a file or folder is in place whole or not at all, a full disk is a one-line DiskFullError that
names the path, and what a crash left behind is cleaned up."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from synthmix.errors import DiskFullError
from synthmix.files import atomic_file, atomic_folder, is_disk_full, remove_temporaries, write_json, write_text


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
