"""One eval, recorded as every synthmix eval is (the training loop's and `CollapseCallback`'s): the monitor's
values, the baseline's reference, the alert rules, their events in the run's event log, and the samples in
`OUTPUT_DIR/samples/step-<N>.jsonl` (and the trackers that take tables or files)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from synthmix.trainer.collapse.monitor import CollapseMonitor
from synthmix.trainer.reporting.events import EventLog
from synthmix.trainer.reporting.samples import write_samples


def record_eval(
    monitor: CollapseMonitor, log: EventLog, model: torch.nn.Module, step: int, epoch: float, **fields: Any
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Measure the indicators and log them, as every synthmix eval does (the loop's and `CollapseCallback`'s):
    the first measurement is the baseline (with the real text's `reference` event), later ones go through the
    alert rules; one `eval` event (with `fields`), then an `alert` event per alert, printed where the log
    writes. Returns the values and the alerts."""
    started = time.perf_counter()
    measured = monitor.measure(model)
    values = measured.values
    alerts: list[dict[str, Any]] = []
    if monitor.baseline is None:
        monitor.baseline = values
        log.event("reference", step=0, **monitor.reference)
    else:
        alerts = monitor.alerts(values, step, epoch)
    sampling = dataclasses.asdict(monitor.config.sampling)
    seconds = round(time.perf_counter() - started, 3)
    samples = None
    if log.enabled:
        records = [{**row, "step": step, "sampling": sampling} for row in monitor.sample_records(measured.samples)]
        path = write_samples(log.path.parent, step, records)
        log.samples(step, path, records)
        samples = path.relative_to(log.path.parent).as_posix()
    log.event("eval", step=step, epoch=epoch, **values, **fields, sampling=sampling, seconds=seconds, samples=samples)
    for alert in alerts:
        log.event("alert", **alert)
        if log.enabled:
            print(f"collapse alert: {alert['message']}", flush=True)
    return values, alerts
