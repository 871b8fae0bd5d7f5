"""The tokenized corpus store: each source read, checked and tokenized once, kept on disk as memory-mapped
arrays keyed by everything that determines them, and shared by every later run and every process.

An entry is a folder `DATA.CACHE_DIR/store/KEY/` of raw little-endian arrays (`NAME.bin`, read back with
`np.memmap`, as Megatron's indexed datasets do) and a `manifest.json` written last, with each array's dtype,
shape and SHA-256. Entries are built into a temporary folder and renamed into place (first writer wins, so
two runs building the same entry at once are safe), under a lock file so that one of them waits instead of
building twice. An entry whose files do not match its manifest is rebuilt with a warning, never used.

A source's key is a hash of its content (size, modification time and a hash of the first and last MiB of
every file: O(1) per start, unlike a full hash; an edit that keeps all three is the blind spot), how it is
read (format, fields, split, on_error, max_examples), the tokenizer's fingerprint and the tokenization
settings its form uses. The cleaning that spans sources (held-out split, dedup, contamination, filters) is an
entry of its own, keyed by the sources' keys and the cleaning settings, so changing one of those re-runs the
cleaning (seconds) without re-tokenizing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from synthmix.data_mixers.config import SourceConfig
from synthmix.data_mixers.encoding import EncodeSettings, encode_batch
from synthmix.data_mixers.sources import SourceStream, example_form, resolve_path
from synthmix.files import atomic_folder, disk_full_is_an_error, lock_file, sha256_of

STORE_VERSION = 3  # 2: a .txt file is read line by line, up to a line that is not UTF-8; 3: reply_start
MANIFEST = "manifest.json"
_HEAD_TAIL = 1 << 20
_BATCH = 1024  # examples tokenized together: enough for the parallel path, little transient memory


@dataclasses.dataclass
class Entry:
    """One entry of the store, mapped: its arrays (memory-mapped, read-only) and its manifest's metadata."""

    folder: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    built: bool
    """True when this call built it, False when it came from the store."""
    seconds: float
    """Time this call spent building it, or opening and verifying it."""


# ---------------------------------------------------------------------------------------------- keys
def source_fingerprint(spec: SourceConfig, base_dir: Path | None = None) -> dict[str, Any]:
    """What a source's content is, cheaply: per file its size, mtime and a hash of its first and last MiB."""
    if spec.builtin is not None:
        return {"builtin": spec.builtin, "python": sys.version.split()[0], "chunking": 1}
    if spec.hub is not None:
        from synthmix.data_mixers.sources import _hub_dataset

        dataset = _hub_dataset(spec.hub, spec.split, spec.name)  # cached by datasets after the first download
        return {"hub": spec.hub, "split": spec.split, "fingerprint": getattr(dataset, "_fingerprint", None)}
    path = resolve_path(spec.path or "", base_dir, spec.name)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"files": [_file_fingerprint(file, path) for file in files]}


def _file_fingerprint(file: Path, root: Path) -> list[Any]:
    stat = file.stat()
    digest = hashlib.blake2b(digest_size=16)
    with file.open("rb") as handle:
        digest.update(handle.read(_HEAD_TAIL))
        if stat.st_size > 2 * _HEAD_TAIL:
            handle.seek(-_HEAD_TAIL, 2)
            digest.update(handle.read(_HEAD_TAIL))
    name = str(file.relative_to(root)) if file != root else file.name
    return [name, stat.st_size, stat.st_mtime_ns, digest.hexdigest()]


def source_key(
    spec: SourceConfig, content: dict[str, Any], tokenizer_fingerprint: str, settings: EncodeSettings
) -> str:
    """The key of a source's tokenized entry: its content, how it is read, the tokenizer and the settings its
    form uses (a text source does not depend on assistant_only_loss, so changing that rebuilds no text)."""
    form = example_form(spec)
    used = {
        "text": {"add_eos": settings.add_eos},
        "messages": {"assistant_only_loss": settings.assistant_only_loss},
        "prompt_completion": {"completion_only_loss": settings.completion_only_loss, "add_eos": settings.add_eos},
    }[form]
    read = {
        key: getattr(spec, key)
        for key in ("format", "split", "text_field", "messages_field", "prompt_field", "completion_field")
    }
    described = {
        "version": STORE_VERSION,
        "content": content,
        "read": {**read, "on_error": spec.on_error, "max_examples": spec.max_examples, "form": form},
        "tokenizer": tokenizer_fingerprint,
        "encode": used,
    }
    return digest_of(described)


def digest_of(described: Any) -> str:
    """A short stable hash of a JSON-able description."""
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------- entries
@contextlib.contextmanager
def locked(store: Path, key: str) -> Iterator[None]:
    """Hold the lock of entry `key`: a second builder waits here, then finds the entry built."""
    with contextlib.closing(lock_file(store / ".locks" / f"{key}.lock")):  # a crash releases it too
        yield


def open_entry(folder: Path, verify: str) -> Entry | None:
    """The entry in `folder`, or None when there is none; a damaged one is reported with a warning and
    treated as missing (it is rebuilt). `verify` is `full` (every file's SHA-256) or `sizes`."""
    started = time.perf_counter()
    if not folder.is_dir():
        return None
    problem = verify_entry(folder, verify)
    if problem is not None:
        warnings.warn(f"store entry {folder} is damaged ({problem}); rebuilding it", stacklevel=3)
        return None
    manifest = json.loads((folder / MANIFEST).read_text())
    arrays = {name: _map(folder / f"{name}.bin", spec) for name, spec in manifest["arrays"].items()}
    return Entry(folder, arrays, manifest["meta"], built=False, seconds=time.perf_counter() - started)


def verify_entry(folder: Path, verify: str) -> str | None:
    """Why the entry in `folder` cannot be trusted, or None when its files match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest.json (half-written)"
    except (json.JSONDecodeError, OSError):
        return "manifest.json is unreadable"
    if manifest.get("version") != STORE_VERSION:
        return f"written by store version {manifest.get('version')}, this is version {STORE_VERSION}"
    for name, spec in manifest.get("arrays", {}).items():
        path = folder / f"{name}.bin"
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != spec["bytes"]:
            return f"{path.name} holds {path.stat().st_size} bytes, the manifest says {spec['bytes']}"
        if verify == "full" and sha256_of(path) != spec["sha256"]:
            return f"{path.name} does not match its checksum"
    return None


def _map(path: Path, spec: dict[str, Any]) -> np.ndarray:
    shape = tuple(spec["shape"])
    if spec["bytes"] == 0:
        return np.zeros(shape, dtype=spec["dtype"])
    return np.memmap(path, dtype=spec["dtype"], mode="r", shape=shape)


class EntryWriter:
    """Writes one entry's arrays into a (temporary) folder, streaming, with their checksums and shapes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, Any] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._digests: dict[str, Any] = {}

    def append(self, name: str, array: np.ndarray) -> None:
        """Add `array`'s rows to array `name` (created on first use with this dtype and trailing shape)."""
        array = np.ascontiguousarray(array)
        if name not in self._files:
            self._files[name] = open(self.folder / f"{name}.bin", "wb")
            self._specs[name] = {"dtype": array.dtype.str, "shape": [0, *array.shape[1:]], "bytes": 0}
            self._digests[name] = hashlib.sha256()
        spec = self._specs[name]
        if array.dtype.str != spec["dtype"] or list(array.shape[1:]) != spec["shape"][1:]:
            raise ValueError(f"{name}: {array.dtype}{array.shape} does not extend {spec}")
        data = array.tobytes()
        self._files[name].write(data)
        self._digests[name].update(data)
        spec["shape"][0] += array.shape[0]
        spec["bytes"] += len(data)

    def finish(self, meta: dict[str, Any]) -> None:
        """Close the arrays and write the manifest (last: an entry without one is half-written)."""
        for handle in self._files.values():
            handle.close()
        arrays = {name: {**spec, "sha256": self._digests[name].hexdigest()} for name, spec in self._specs.items()}
        manifest = {"version": STORE_VERSION, "created": time.time(), "arrays": arrays, "meta": meta}
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def cached_entry(store: Path, key: str, verify: str, build) -> Entry:
    """The entry `key` from the store, or built by `build(writer) -> meta` (under its lock) and then mapped."""
    folder = store / key
    entry = open_entry(folder, verify)
    if entry is not None:
        return entry
    with locked(store, key):
        entry = open_entry(folder, verify)  # another process may have built it while we waited
        if entry is not None:
            return entry
        started = time.perf_counter()
        with atomic_folder(folder) as tmp:  # replaces a damaged entry whole
            writer = EntryWriter(tmp)
            writer.finish(build(writer))
        entry = open_entry(folder, "sizes")  # just written and checksummed: no need to read it all back
    assert entry is not None
    entry.built, entry.seconds = True, time.perf_counter() - started
    return entry


# ---------------------------------------------------------------------------------------------- sources
def tokenized_source(
    spec: SourceConfig,
    tokenizer: Any,
    tokenizer_fingerprint: str,
    settings: EncodeSettings,
    store: Path,
    verify: str,
    base_dir: Path | None = None,
    progress: bool | None = None,
) -> Entry:
    """The source's entry: every example it loads (before any cleaning) as token ids, with offsets, content
    hashes, when only part of an example trains its loss mask, and for chats and prompt-completion pairs where
    each one's last reply begins."""
    key = source_key(spec, source_fingerprint(spec, base_dir), tokenizer_fingerprint, settings)
    dtype = np.dtype("uint16" if len(tokenizer) <= 1 << 16 else "int32")

    def build(writer: EntryWriter) -> dict[str, Any]:
        stream = SourceStream(spec, base_dir)
        tokens = 0
        writer.append("offsets", np.zeros(1, dtype=np.int64))
        with disk_full_is_an_error(store / key), _bar(stream, progress) as bar:
            for batch in stream.batches(_BATCH):
                encoded = encode_batch(tokenizer, batch, stream.form, settings)
                lengths = np.fromiter((len(ids) for ids in encoded.ids), dtype=np.int64, count=len(batch))
                writer.append("ids", np.concatenate(encoded.ids).astype(dtype))
                writer.append("offsets", tokens + np.cumsum(lengths))
                writer.append("keys", encoded.keys)
                if encoded.masks is not None:
                    writer.append("loss_mask", np.concatenate(encoded.masks).astype(np.uint8))
                if encoded.reply_starts is not None:
                    writer.append("reply_start", encoded.reply_starts)
                tokens += int(lengths.sum())
                bar.update(stream)
        return {
            "source": spec.name,
            "shown": stream.shown,
            "form": stream.form,
            "examples": stream.loaded,
            "tokens": tokens,
            "skipped": stream.skip_count,
            "skipped_messages": stream.skipped,
        }

    return cached_entry(store, key, verify, build)


class _Progress:
    """A progress bar over a source being read (by its reader's own measure, or examples when it has none)."""

    def __init__(self, stream: SourceStream, show: bool | None) -> None:
        self.bar = tqdm(
            total=stream.progress_total,
            unit=stream.progress_unit,
            unit_scale=True,
            desc=f"tokenizing {stream.name}",
            disable=None if show is None else not show,
            dynamic_ncols=True,
        )

    def update(self, stream: SourceStream) -> None:
        self.bar.update(stream.progress_done - self.bar.n)


@contextlib.contextmanager
def _bar(stream: SourceStream, show: bool | None) -> Iterator[_Progress]:
    progress = _Progress(stream, show)
    try:
        yield progress
    finally:
        progress.bar.close()
