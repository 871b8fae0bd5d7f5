"""The run's record: OUTPUT_DIR/metrics.jsonl (one JSON object per line, with an `event` field) and
TensorBoard events. Written by the main process only."""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from synthmix.errors import DiskFullError
from synthmix.files import disk_full_is_an_error, is_disk_full
from trainer.errors import TrainerError

METRICS = "metrics.jsonl"


def _quiet_tensorboard_disk_full(args: threading.ExceptHookArgs) -> None:
    # TensorBoard's writer thread dies of a full disk with a traceback; its next write or flush raises the same
    # error in our thread, where it becomes one line. Other threads' exceptions print as usual.
    if type(args.thread).__name__ == "_AsyncWriterThread" and is_disk_full(args.exc_value):
        return
    _PREVIOUS_EXCEPTHOOK(args)


_PREVIOUS_EXCEPTHOOK = threading.excepthook


class RunLog:
    """Appends events to metrics.jsonl (flushed per line, so a crash loses nothing logged) and TensorBoard."""

    def __init__(self, output_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.path = output_dir / METRICS
        self.enabled = enabled
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            threading.excepthook = _quiet_tensorboard_disk_full
            self._tensorboard = output_dir / "tensorboard"
            with disk_full_is_an_error(self._tensorboard):
                self._writer = SummaryWriter(str(self._tensorboard), purge_step=purge_step)

    def event(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event; numeric fields with a `step` also go to TensorBoard as `event/field`."""
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if not self.enabled:
            return record
        line = json.dumps(_finite(record), default=_plain, allow_nan=False) + "\n"
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with disk_full_is_an_error(self.path), self.path.open("a", encoding="utf-8") as f:
                f.write(line)
        except DiskFullError:
            os.truncate(self.path, size)  # no half-written line: the file ends with the last whole event
            raise
        step = fields.get("step")
        if self._writer is not None and isinstance(step, int):
            with disk_full_is_an_error(self._tensorboard):
                for key, value in fields.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                        if math.isfinite(value):
                            self._writer.add_scalar(f"{event}/{key}", value, step)
        return record

    def close(self, warn: bool = True) -> None:
        """Flush and close TensorBoard. A full disk here only warns (`warn` false: not even that): metrics.jsonl
        holds every event, and an error already on its way out must not be replaced by this one."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except (OSError, RuntimeError) as err:
            if not is_disk_full(err):
                raise
            if warn:
                warnings.warn(f"{self._tensorboard}: TensorBoard events not all written (no space left)", stacklevel=2)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSON Lines file (metrics.jsonl, generations.jsonl); none when the file is missing.
    A line that is not a JSON object is a TrainerError naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise TrainerError(f"{path}: cannot read ({err})") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainerError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(event, dict):
            raise TrainerError(f"{path}:{number}: expected a JSON object, got {type(event).__name__}")
        events.append(event)
    return events


def _finite(value: Any) -> Any:
    # NaN and infinity are not JSON (jq and most parsers reject the line); they are written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return _finite(value.item())
    return str(value)
