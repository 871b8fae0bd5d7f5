"""Checkpoints that are never half-written: a temporary folder, a manifest of checksums, then a rename.

Layout of OUTPUT_DIR/checkpoints/step-N/: adapter/ (peft format) or model/ (full training), optimizer.pt,
scheduler.pt, scaler.pt (fp16 only), rng.pt (every rank's RNG states), mixer.json (every rank's stream
position), run.json (step, epoch, counters), metrics.jsonl (the metrics so far), manifest.json (last).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import TrainerError

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def write_checkpoint(root: Path, step: int, write_files: Callable[[Path], None], keep_last: int) -> Path:
    """Write a checkpoint through `write_files(tmp_folder)`, seal it with a manifest, rename it into place."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full) leaves nothing behind
        raise
    files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_json(tmp / MANIFEST, {"step": step, "created": time.time(), "files": files})
    _fsync_tree(tmp)
    if final.exists():  # a rerun of the same step after a crash past this point: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _prune(root, keep_last)
    return final


def find_checkpoint(root: Path, which: str) -> Path:
    """`latest`: the newest checkpoint whose files match its manifest (older ones are tried in turn, with a
    warning for each one skipped); otherwise `which` is a checkpoint folder, which must be intact."""
    if which != "latest":
        path = Path(which)
        if not path.is_dir():
            raise TrainerError(f"--resume {which}: no such checkpoint folder (or pass --resume latest)")
        problem = verify(path)
        if problem:
            raise TrainerError(f"--resume {which}: {problem}")
        return path
    candidates = sorted(_step_dirs(root), key=lambda p: -_step_of(p))
    if not candidates:
        raise TrainerError(f"--resume latest: no checkpoint in {root}")
    for path in candidates:
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is damaged ({problem}); trying the previous one", stacklevel=2)
    raise TrainerError(f"--resume latest: every checkpoint in {root} is damaged")


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when every file matches its checksum."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (half-written)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, OSError):
        return "manifest.json is unreadable"
    for name, digest in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum"
    return None


def remove_stale_temporaries(root: Path) -> None:
    """Delete temporary folders that a crash left behind while writing a checkpoint."""
    for tmp in root.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, CUDA) in types `torch.load(weights_only=True)` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states captured by `capture_rng`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_torch(path: Path) -> Any:
    """Load a checkpoint file safely (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON."""
    _write_json(path, data)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)] if root.is_dir() else []


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))  # type: ignore[union-attr]


def _prune(root: Path, keep_last: int) -> None:
    for old in sorted(_step_dirs(root), key=_step_of)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
