"""A run folder as recorded: its config and its events from metrics.jsonl (and generations.jsonl), grouped."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from synthmix.trainer.config import INDICATOR_DIRECTION
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.reporting.events import read_events

NOT_INDICATORS = {
    "event",
    "time",
    "step",
    "epoch",
    "generation",
    "seed",
    "real_fraction",
    "seconds",
    "benchmark_seconds",
    "realized_synthetic_ratio",
    "target_synthetic_ratio",
    "synthetic_share",
}


class ReportError(TrainerError):
    """A run folder the report cannot read, phrased for the user (file and line)."""


@dataclasses.dataclass
class RunRecord:
    """What a run folder recorded: its config and events, grouped by kind (read by the report and the sweep)."""

    path: Path
    label: str = ""
    config: dict = dataclasses.field(default_factory=dict)
    train: list[dict] = dataclasses.field(default_factory=list)
    evals: list[dict] = dataclasses.field(default_factory=list)
    reference: dict = dataclasses.field(default_factory=dict)
    alerts: list[dict] = dataclasses.field(default_factory=list)
    epochs: list[dict] = dataclasses.field(default_factory=list)
    end: dict | None = None
    generations: list[dict] = dataclasses.field(default_factory=list)

    @property
    def synthetic_ratio(self) -> Any:
        """The configured `data.synthetic_ratio`, else the last logged target, else None."""
        data = self.config.get("data")
        if isinstance(data, dict) and data.get("synthetic_ratio") is not None:
            return data["synthetic_ratio"]
        targets = [e.get("target_synthetic_ratio") for e in self.epochs + self.evals]
        return next((t for t in reversed(targets) if t is not None), None)

    @property
    def status(self) -> str:
        """`end` event's status, else the stop alert that ended the run, else incomplete."""
        stop = next((a for a in self.alerts if a.get("action") == "stop"), None)
        if self.end is not None and self.end.get("status"):
            return str(self.end["status"]) + (f" ({self.end['reason']})" if self.end.get("reason") else "")
        if stop is not None:
            return f"stopped by alert at epoch {stop.get('epoch', '?')} ({stop.get('indicator', '?')})"
        if self.end is not None:
            return "finished"
        return "incomplete: no end event (still running or interrupted)"


def load_run(run_dir: Path) -> RunRecord:
    """Read `metrics.jsonl` (and `generations.jsonl` if present) of one run folder; unknown events are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run folder not found")
    run = RunRecord(path=run_dir)
    if not (run_dir / "metrics.jsonl").exists() and (run_dir / "generations.jsonl").is_file():
        run.generations = read_events(run_dir / "generations.jsonl")  # a self-consuming experiment's folder
        return run
    events = read_events(run_dir / "metrics.jsonl")
    if not events:
        raise ReportError(f"{run_dir / 'metrics.jsonl'}: no events")
    series = {"train": run.train, "eval": run.evals, "alert": run.alerts, "epoch": run.epochs}
    for row in events:
        kind = row.get("event")
        if kind in series:
            series[kind].append(row)
        elif kind == "config" and isinstance(row.get("config"), dict):
            run.config = row["config"]
        elif kind == "reference":
            run.reference = row
        elif kind == "end":
            run.end = row
    # A resumed run may log a step twice: the last record wins. An eval without a step cannot be placed.
    by_step = {num(e.get("step")): e for e in run.evals if num(e.get("step")) is not None}
    run.evals = [by_step[k] for k in sorted(by_step)]
    epoch_ends = {num(e.get("step")) for e in run.epochs}
    for row in run.evals:  # the step-0 baseline counts as the end of epoch 0
        row["at_epoch_end"] = num(row.get("step")) == 0 or num(row.get("step")) in epoch_ends
    if (run_dir / "generations.jsonl").is_file():
        run.generations = read_events(run_dir / "generations.jsonl")
    return run


def num(value: Any, default: Any = None) -> Any:
    """A finite int/float as float, else `default` (bools, strings, None and NaN are not values)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def indicator_names(rows: list[dict]) -> list[str]:
    """Known indicators in their documented order, then any other numeric field the rows carry."""
    present = {k for r in rows for k, v in r.items() if k not in NOT_INDICATORS and num(v) is not None}
    known = [k for k in INDICATOR_DIRECTION if k in present]
    return known + sorted(present - set(known))
