"""ratio_for_epoch: each schedule type against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from synthmix.data_mixers.config import DataConfig, ScheduleConfig
from synthmix.data_mixers.schedules import ratio_for_epoch


def ratios(schedule: ScheduleConfig, epochs: int, synthetic_ratio: float = 0.3, upto: int | None = None) -> list:
    data = DataConfig(synthetic_ratio=synthetic_ratio, schedule=schedule)
    return [ratio_for_epoch(data, e, epochs) for e in range(1, (upto or epochs) + 1)]


def test_constant_is_the_synthetic_ratio_every_epoch() -> None:
    assert ratios(ScheduleConfig(), epochs=3) == [0.3, 0.3, 0.3]


def test_linear_goes_from_start_to_end_and_stays_there() -> None:
    got = ratios(ScheduleConfig(type="linear", start=0.1, end=0.5), epochs=3, upto=4)
    assert got == pytest.approx([0.1, 0.3, 0.5, 0.5])


def test_linear_start_defaults_to_the_synthetic_ratio_and_one_epoch_is_the_start() -> None:
    assert ratios(ScheduleConfig(type="linear", end=0.0), epochs=3) == pytest.approx([0.3, 0.15, 0.0])
    assert ratios(ScheduleConfig(type="linear", start=0.2, end=0.6), epochs=1) == [0.2]


def test_cosine_eases_in_and_out() -> None:
    # progress p = (e - 1) / (epochs - 1), eased to (1 - cos(pi p)) / 2
    assert ratios(ScheduleConfig(type="cosine", start=0.1, end=0.5), epochs=3) == pytest.approx([0.1, 0.3, 0.5])
    eased = (1 - math.cos(math.pi / 4)) / 2  # 0.1464...: slower than linear's 0.25 at the first quarter
    got = ratios(ScheduleConfig(type="cosine", start=0.1, end=0.5), epochs=5)
    assert got == pytest.approx([0.1, 0.1 + 0.4 * eased, 0.3, 0.5 - 0.4 * eased, 0.5])


def test_steps_are_piecewise_constant_from_each_first_epoch() -> None:
    schedule = ScheduleConfig(type="steps", steps=[[2, 0.5], [4, 0.1]])
    assert ratios(schedule, epochs=5) == [0.3, 0.5, 0.5, 0.1, 0.1]  # before the first step: synthetic_ratio
