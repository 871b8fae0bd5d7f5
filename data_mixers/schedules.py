"""The synthetic ratio of each epoch, from the config's schedule."""

from __future__ import annotations

import math

from synthmix.data_mixers.config import DataConfig


def ratio_for_epoch(data: DataConfig, epoch: int, epochs: int) -> float:
    """Target synthetic ratio of 1-based `epoch` out of `epochs` (epochs past the last keep the end value)."""
    schedule = data.schedule
    if schedule.type == "constant":
        return data.synthetic_ratio
    if schedule.type == "steps":
        ratio = data.synthetic_ratio
        for first_epoch, value in schedule.steps:
            if epoch >= first_epoch:
                ratio = value
        return ratio
    start = data.synthetic_ratio if schedule.start is None else schedule.start
    end = start if schedule.end is None else schedule.end
    progress = 0.0 if epochs <= 1 else min(1.0, (epoch - 1) / (epochs - 1))
    if schedule.type == "cosine":
        progress = (1 - math.cos(math.pi * progress)) / 2
    return start + (end - start) * progress
