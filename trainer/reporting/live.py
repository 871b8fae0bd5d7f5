"""When a run in progress rewrites its report.html: after an eval, when the last write is at least
`LIVE_REPORT_EVERY_S` old (the run's start counts as one), and always at the run's end or preemption.

Drawing every plot of the page takes about 2 s of a CPU core on the main process, while the other processes wait
for it at their next collective: rewritten at every eval, a run with frequent evals (`collapse.every_steps`)
spends more time drawing than training (a tiny CPU run: 1.5 s of training, 7 s of four reports). metrics.jsonl
holds every eval as it happens, and `synthmix report RUN_DIR` draws the page at any time."""

from __future__ import annotations

import time
from pathlib import Path

LIVE_REPORT_EVERY_S = 300.0


class LiveReport:
    """The report of one run folder, written by the main process (`enabled` false on the others)."""

    def __init__(self, folder: Path, enabled: bool, every_s: float = LIVE_REPORT_EVERY_S) -> None:
        self.folder = folder
        self.enabled = enabled
        self.every_s = every_s
        self.written_at = time.monotonic()  # the run's start: a page of the step-0 baseline alone waits

    def after_eval(self) -> None:
        """Rewrite the page when the last write is old enough."""
        if self.enabled and time.monotonic() - self.written_at >= self.every_s:
            self.write()

    def write(self) -> None:
        """Rewrite the page now (the run's end, a preemption)."""
        if not self.enabled:
            return
        from synthmix.trainer.reporting.report import write_report  # matplotlib, only when a page is drawn

        write_report([self.folder])
        self.written_at = time.monotonic()
