"""The run folder's one writer: the process that trains into a run folder holds its lock for as long as it does,
a fresh run must find the folder without a run, and what a crash left half-written there is undone first."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from synthmix.files import lock_file, lock_holder, remove_temporaries
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.reporting.events import METRICS

RUN_LOCK = ".synthmix.lock"
"""Locked by the process that trains into the run folder, for as long as it does."""


def claim_run_folder(output_dir: Path, resume: str | None, *cleaned: Path) -> IO[str]:
    """Lock `output_dir` for this run (the returned handle holds the lock until closed; a crash releases it) and,
    on a fresh start, check that it holds no run; then undo what a crash left half-written there and in
    `cleaned` (see remove_temporaries). A second process claiming the same folder, at any moment, is refused."""
    lock = lock_file(output_dir / RUN_LOCK, wait=False)
    if lock is None:
        raise TrainerError(
            f"output_dir {output_dir} is in use by another run (process {lock_holder(output_dir / RUN_LOCK)}); "
            "wait for it to end, or choose another output_dir"
        )
    try:
        if resume is None:
            ensure_new_run(output_dir)
        for folder in (output_dir, *cleaned):
            remove_temporaries(folder)
    except BaseException:
        lock.close()
        raise
    return lock


def ensure_new_run(output_dir: Path) -> None:
    """A fresh run must not append its events to another run's metrics.jsonl."""
    if (output_dir / METRICS).exists():
        has_checkpoint = any((output_dir / "checkpoints").glob("step-*"))
        how = "pass --resume latest to continue it" if has_checkpoint else "it has no checkpoint to resume from"
        raise TrainerError(f"output_dir {output_dir} already holds a run ({how}); choose another output_dir")
