"""Files and folders that are never half-written: written beside their place, fsynced, then renamed into it.

A full disk is a fixable problem, not a bug: every writer here turns ENOSPC/EDQUOT into a `DiskFullError`
that names the path and the free space, after removing its own temporary file, so what was in place before
(a sealed checkpoint, a cache entry) is untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from synthmix.errors import DiskFullError

_TEMP_MARK = ".tmp-"
_TEMPORARY = re.compile(r"^\.(.+)\.tmp-\d+-[0-9a-f]{8}$")
_ASIDE_MARK = ".aside-"
"""An old folder moved aside to make room for its replacement (only where the two cannot be exchanged)."""
_ASIDE = re.compile(r"^\.(.+)\.aside-\d+-[0-9a-f]{8}$")
_FULL = {errno.ENOSPC, errno.EDQUOT}
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path`, unique across processes (pid + random), marked as temporary."""
    return path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def final_name(path: Path) -> Path:
    """`path` with every temporary component (see `temporary_sibling`) replaced by the name it will be renamed to."""
    parts = [_TEMPORARY.sub(r"\1", part) for part in path.parts]
    return Path(*parts)


def remove_temporaries(folder: Path) -> None:
    """Undo what a crash left behind while writing into `folder`: a folder moved aside for a replacement that
    never arrived goes back to its name; temporary files and folders, and old copies whose replacement is in
    place, are deleted."""
    if not folder.is_dir():
        return
    for aside in folder.glob(f".*{_ASIDE_MARK}*"):
        match = _ASIDE.match(aside.name)
        if match and not (folder / match[1]).exists():
            os.replace(aside, folder / match[1])
    for leftover in [*folder.glob(f".*{_TEMP_MARK}*"), *folder.glob(f".*{_ASIDE_MARK}*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """A handle on a temporary file beside `path`, renamed onto `path` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    encoding = None if "b" in mode else "utf-8"
    try:
        with disk_full_is_an_error(path), open(temporary, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: Path | str, data: Any) -> None:
    """Write `data` as indented, key-sorted JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True))


@contextlib.contextmanager
def atomic_folder(path: Path | str, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; fsynced and renamed onto `path` when the block completes.

    `replace=False` is "first writer wins": when `path` appeared meanwhile (another process built the same
    thing), ours is discarded. A failure inside the block removes the temporary folder and re-raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        with disk_full_is_an_error(path):
            temporary.mkdir()
            yield temporary
            fsync_tree(temporary)
        _move_into_place(temporary, path, replace)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def _move_into_place(temporary: Path, path: Path, replace: bool) -> None:
    if path.exists():
        if not replace:
            return
        # A folder cannot be renamed over a non-empty one. Exchanged in one step, the new one is in place at every
        # instant and the old one holds the temporary name (a crash leaves it to remove_temporaries). Where the
        # system cannot exchange, the old one is moved aside under a name that remove_temporaries restores.
        if _exchange(temporary, path):
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            aside = path.with_name(f".{path.name}{_ASIDE_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(path, aside)
            os.replace(temporary, path)
            shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            os.replace(temporary, path)
        except OSError:
            if not (replace is False and path.exists()):  # lost a race in first-writer-wins mode: fine
                raise
    fsync_folder(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux's renameat2 with RENAME_EXCHANGE); False where the C library or
    the file system cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def lock_file(path: Path, wait: bool = True) -> IO[str] | None:
    """An open handle that holds an exclusive lock on `path` (created if missing) until it is closed or the
    process ends, however it ends; the holder's process id is written in it. With `wait` false, None when
    another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_holder(path: Path) -> str:
    """The process id written in a lock file by its holder ('?' when unreadable)."""
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def disk_full_is_an_error(path: Path) -> Iterator[None]:
    """Turn "no space left on device" (or an exceeded quota) while writing `path` into a DiskFullError."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # torch.save and safetensors wrap the OSError in their own exceptions
        if not is_disk_full(err):
            raise
        raise DiskFullError(no_space_message(path)) from None


def is_disk_full(err: BaseException | None) -> bool:
    """Whether `err` is "no space left on device" or "disk quota exceeded", raw, wrapped by a library, or the
    error that a library's clean-up raised while handling one (torch's zip writer closes its file that way)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        text = str(err).lower()
        if isinstance(err, (OSError, RuntimeError)) and ("no space left on device" in text or "disk quota" in text):
            return True
        err = err.__cause__ or err.__context__
    return False


def no_space_message(path: Path) -> str:
    """One line naming the path (by its final name, not the temporary one being written), the free space where
    it lies, and what to do."""
    path = final_name(Path(path))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
        room = f" ({_size(free)} free on that file system)"
    except OSError:
        room = ""
    return (
        f"no space left on device while writing {path}{room}; free some space there (old run folders, "
        "checkpoints, .cache/synthmix) and run the same command again (with --resume latest, a run continues from "
        "its newest checkpoint)"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in 4 MiB blocks (store entries and checkpoints are checked with it)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_tree(folder: Path) -> None:
    """fsync every file below `folder`, then the folders themselves, so a rename publishes complete data."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_folder(sub)


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename inside it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
