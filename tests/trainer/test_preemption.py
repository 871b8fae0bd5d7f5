"""Preemption: SIGTERM or SIGUSR1 mid-run ends the step under way, writes a checkpoint, logs `end` with
`status: preempted`, exits 75, and `--resume latest` continues to the uninterrupted run's adapter, bit for bit.
(Two processes under torchrun: tests/trainer/test_distributed.py.)"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_loop import assert_same_training, interrupted_cli_run, step_of, train_events
from testkit import run_config

from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.checkpoint import find_checkpoint, verify
from synthmix.trainer.runtime.loop import train
from synthmix.trainer.runtime.preemption import StopSignals

EXIT_PREEMPTED = 75


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_preempted_run_checkpoints_exits_75_and_after_sigterm_resumes_to_the_identical_adapter(
    reference, tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "run"
    # Past the first checkpoint (step 4), before the second.
    returncode, stderr = interrupted_cli_run(reference.config_path, out, 6, lambda proc: proc.send_signal(sig))
    assert returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "Traceback" not in stderr
    events = read_events(out / METRICS)
    end = events[-1]
    assert (end["event"], end["status"]) == ("end", "preempted")
    assert sig.name in end["reason"] and sig.name in stderr and "--resume latest" in stderr
    # The step under way was finished, then checkpointed: the newest checkpoint is the last logged step.
    stopped_at = train_events(events)[-1]["step"]
    assert end["step"] == stopped_at < reference.train_steps[-1]
    newest = find_checkpoint(out / "checkpoints", "latest")
    assert step_of(newest) == stopped_at and verify(newest) is None
    assert not (out / "adapter").exists()
    if sig != signal.SIGTERM:
        return  # the checkpoint is the same whichever signal asked for it: resumed once, after SIGTERM

    train(run_config(reference.config_path, out), resume="latest")

    events = read_events(out / METRICS)
    assert [e["step"] for e in events if e["event"] == "resume"] == [stopped_at]
    assert_same_training(events, reference)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


def test_stop_signals_record_the_first_signal_and_restore_the_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert not signals.requested
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGTERM)
        assert signals.received == "SIGUSR1"  # the first one names the preemption
        # After its first delivery a signal has its default effect again (a launcher's or a user's insistence).
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == before
