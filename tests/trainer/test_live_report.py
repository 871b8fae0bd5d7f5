"""synthmix.trainer.reporting.live: a run in progress redraws its report after an eval only when the last
drawing is old enough, and always when asked at its end."""

from __future__ import annotations

import pytest

from synthmix.trainer.reporting import live
from synthmix.trainer.reporting.live import LiveReport


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[list]:
    calls: list[list] = []
    monkeypatch.setattr("synthmix.trainer.reporting.report.write_report", lambda folders: calls.append(folders))
    return calls


def test_an_eval_redraws_only_when_the_last_drawing_is_old_enough(tmp_path, clock, drawn) -> None:
    report = LiveReport(tmp_path, enabled=True, every_s=300)
    report.after_eval()  # the step-0 eval, at the run's start: the baseline alone waits
    clock[0] += 299
    report.after_eval()
    assert drawn == []
    clock[0] += 1
    report.after_eval()
    assert drawn == [[tmp_path]]
    clock[0] += 10
    report.after_eval()
    report.write()  # the run's end draws whatever the clock says
    assert drawn == [[tmp_path], [tmp_path]]


def test_a_process_other_than_the_main_one_never_draws(tmp_path, clock, drawn) -> None:
    report = LiveReport(tmp_path, enabled=False, every_s=0)
    report.after_eval()
    report.write()
    assert drawn == []
