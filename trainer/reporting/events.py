"""The run's record: OUTPUT_DIR/metrics.jsonl (one JSON object per line, with an `event` field), and the
experiment trackers of `train.report_to` through accelerate's tracking API (TensorBoard by default, under
OUTPUT_DIR/tensorboard). Written by the main process only."""

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
from synthmix.files import disk_full_is_an_error, is_disk_full, write_json
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.reporting.samples import markdown_table, table

METRICS = "metrics.jsonl"
TRACKER_IDS = "trackers.json"
"""The W&B and MLflow run ids of this run, so that a resume continues those runs."""


def _quiet_tensorboard_disk_full(args: threading.ExceptHookArgs) -> None:
    # TensorBoard's writer thread dies of a full disk with a traceback; its next write or flush raises the same
    # error in our thread, where it becomes one line. Other threads' exceptions print as usual.
    if type(args.thread).__name__ == "_AsyncWriterThread" and is_disk_full(args.exc_value):
        return
    _PREVIOUS_EXCEPTHOOK(args)


_PREVIOUS_EXCEPTHOOK = threading.excepthook


class EventLog:
    """Appends events to metrics.jsonl (flushed per line, so a crash loses nothing logged) and sends their
    numeric fields to the accelerator's trackers as `event/field` at the event's step."""

    def __init__(
        self,
        output_dir: Path,
        enabled: bool,
        resumed_step: int | None = None,
        accelerator: Any = None,
        project: str = "synthmix",
        params: dict[str, Any] | None = None,
    ) -> None:
        """`accelerator`: one made with `log_with` (its trackers start here, with `params` as the run's
        parameters); `resumed_step`: the step of the checkpoint a resumed run starts from (TensorBoard drops what it had
        logged after it; W&B and MLflow continue their runs)."""
        self.path = output_dir / METRICS
        self.enabled = enabled
        self.locations: dict[str, str] = {}
        """Where each tracker writes (a folder, a store's URI, a run's URL), as printed at start."""
        self._trackers = output_dir / "tensorboard"
        self._accelerator = accelerator if enabled and accelerator is not None and accelerator.log_with else None
        if self._accelerator is not None:
            threading.excepthook = _quiet_tensorboard_disk_full
            # A resumed run continues its W&B and MLflow runs (their ids are kept in the run folder) instead of
            # starting new ones; TensorBoard drops what it logged after the checkpoint.
            ids = _tracker_ids(output_dir) if resumed_step is not None else {}
            init = {
                "tensorboard": {"purge_step": None if resumed_step is None else resumed_step + 1},
                "wandb": {"dir": str(output_dir), "name": output_dir.name, "resume": "allow",
                          **({"id": ids["wandb"]} if "wandb" in ids else {})},
                "mlflow": {"run_name": output_dir.name, **({"run_id": ids["mlflow"]} if "mlflow" in ids else {})},
                "trackio": {"name": output_dir.name},
            }  # fmt: skip
            try:
                with disk_full_is_an_error(self._trackers):
                    self._accelerator.init_trackers(project, config=None, init_kwargs=init)
                    for tracker in self._accelerator.trackers:
                        # A continued run has its parameters already, and MLflow refuses to change one (a resume
                        # may change settings: the `resume` event says which).
                        if tracker.name not in ids:
                            tracker.store_init_configuration(_params(params or {}))
                    if started := _run_ids(self._accelerator.trackers):  # kept: a tracker left out this time
                        write_json(output_dir / TRACKER_IDS, {**ids, **started})
            except DiskFullError:
                self.close(warn=False)  # the trackers that did start
                raise
            except Exception as err:  # a tracker's own set-up (server, credentials, store): the user can fix it
                trackers = self._accelerator.trackers
                names = ", ".join(t.name for t in trackers) or "the"
                hints = "".join(f"; {TRACKER_HINTS[t.name]}" for t in trackers if t.name in TRACKER_HINTS)
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self.close(warn=False)
                raise TrainerError(f"train.report_to: starting {names} tracker(s) failed: {first}{hints}") from err
            self.locations = {tracker.name: _location(tracker) for tracker in self._accelerator.trackers}
            for name, where in self.locations.items():
                print(f"{name} tracker: {where}", flush=True)

    def event(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event; numeric fields of an event with a `step` also go to every tracker."""
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
        if self._accelerator is not None and isinstance(step, int):
            values = {
                f"{event}/{key}": value
                for key, value in fields.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
                and math.isfinite(value)
            }  # fmt: skip
            if values:
                with disk_full_is_an_error(self._trackers):
                    self._accelerator.log(values, step=step)
        return record

    def samples(self, step: int, path: Path, records: list[dict[str, Any]]) -> None:
        """One eval's samples (already in `path`) to the trackers that take them: a W&B table, an MLflow
        artifact, TensorBoard text; the others (trackio, aim) have metrics.jsonl's pointer to the file."""
        if self._accelerator is None:
            return
        columns, rows = table(records)
        with disk_full_is_an_error(self._trackers):
            for tracker in self._accelerator.trackers:
                if tracker.name == "wandb":
                    tracker.log_table("samples", columns=columns, data=rows, step=step)
                elif tracker.name == "mlflow":
                    tracker.log_artifact(str(path), artifact_path="samples")
                elif tracker.name == "tensorboard":
                    tracker.writer.add_text("samples", markdown_table(columns, rows), global_step=step)

    def close(self, warn: bool = True) -> None:
        """Finish the trackers. A full disk here only warns: metrics.jsonl holds every event. `warn` false: an
        error is already on its way out, and no failure to finish a tracker may replace it (nothing is raised)."""
        if self._accelerator is None:
            return
        accelerator, self._accelerator = self._accelerator, None
        failure: Exception | None = None
        # Each tracker's own finish, not accelerator.end_training(): that also destroys the process group, which
        # the other processes (and a resumed job's collectives) still need. Every tracker, whichever failed.
        for tracker in accelerator.trackers:
            try:
                tracker.finish()
            except Exception as err:
                failure = failure or err
        if failure is None or not warn:
            return
        if not is_disk_full(failure):
            raise failure
        warnings.warn(f"{self._trackers}: tracker events not all written (no space left)", stacklevel=2)


TRACKER_HINTS = {
    "wandb": "log in with `wandb login` (or set WANDB_API_KEY), or run offline with WANDB_MODE=offline",
    "mlflow": "MLFLOW_TRACKING_URI names the store (default: sqlite:///mlflow.db in the working directory)",
}
"""What to try when a tracker fails to start, added to the one-line error."""


def _location(tracker: Any) -> str:
    """Where a started tracker writes, in the words its own tools take (a folder, a store's URI, a run's URL)."""
    if tracker.name == "tensorboard":
        return f"{tracker.logging_dir} (tensorboard --logdir {Path(tracker.logging_dir).parent})"
    if tracker.name == "mlflow":
        import mlflow

        uri, run = mlflow.get_tracking_uri(), tracker.active_run.info
        return (
            f"run {run.run_id} of experiment {tracker.experiment_name!r} in {uri} (mlflow ui --backend-store-uri {uri})"
        )
    if tracker.name == "wandb":
        run = tracker.run
        if run.settings.mode == "offline":
            return f"offline run {run.id} in {Path(run.dir).parent} (wandb sync that folder to upload it)"
        return str(run.url)
    if tracker.name == "trackio":
        from trackio.utils import TRACKIO_DIR

        return f"{TRACKIO_DIR} (trackio show --project {tracker.run_name})"
    if tracker.name == "aim":
        return f"repo {tracker.aim_repo_path} (aim up --repo {tracker.aim_repo_path})"
    return tracker.name


def _tracker_ids(output_dir: Path) -> dict[str, str]:
    path = output_dir / TRACKER_IDS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise TrainerError(f"{path}: unreadable ({err}); delete it to start new tracker runs") from None


def _run_ids(trackers: list[Any]) -> dict[str, str]:
    """The ids of the W&B and MLflow runs these trackers started (the others need none to resume)."""
    ids = {}
    for tracker in trackers:
        if tracker.name == "wandb":
            ids["wandb"] = tracker.run.id
        elif tracker.name == "mlflow":
            ids["mlflow"] = tracker.active_run.info.run_id
    return ids


def _params(params: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters as trackers take them: flat dotted keys, values str/int/float/bool (lists as text)."""
    from synthmix.schema import flatten

    flat = flatten(params)
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in flat.items()}


def run_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` logged its `end` event (finished, stopped or preempted)."""
    return any(e.get("event") == "end" for e in read_events(run_dir / METRICS))


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
