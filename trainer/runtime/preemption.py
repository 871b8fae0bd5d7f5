"""Preemption: SIGTERM (clusters, spot instances, torchrun passing on its own SIGTERM) or SIGUSR1 (SLURM's
`--signal`) ends the run cleanly at the next optimizer step's end, with a checkpoint to resume from.

The handler only records the signal. Every process reports whether it has one in the step's loss reduction
(no extra collective), so all stop after the same step even when the signal reaches them at different
moments; the loop then writes a checkpoint, logs `end` with `status: preempted`, and `train` raises
`Preempted`, which the command line turns into exit code 75 (EX_TEMPFAIL: try again).
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType, TracebackType

from synthmix import errors

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(errors.Preempted):
    """The run stopped on `signal_name` after step `step`, with its checkpoint in `checkpoint`."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"preempted by {signal_name} after step {step}; checkpoint {checkpoint} written, "
            "continue with --resume latest"
        )
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


class StopSignals:
    """While entered, records the first preemption signal instead of dying of it. A second delivery of the
    same signal has its default effect (a user who insists, or a launcher's last word)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in PREEMPTION_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread (a library caller): signals keep their own handling
                break
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)

    @property
    def requested(self) -> bool:
        """Whether this process has received a preemption signal."""
        return self.received is not None
