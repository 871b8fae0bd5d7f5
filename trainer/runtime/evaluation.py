"""When the collapse hook runs during training, what its alerts do, and the report after it.

The hook evaluates at step 0 (the baseline), at every epoch end, every `collapse.every_steps` steps, and at the
last step; `apply_actions` turns the alerts into a stop or a lower ratio for the epochs to come.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import broadcast_object_list

from synthmix.trainer.collapse.recording import record_eval
from synthmix.trainer.runtime.schedule import replan_steps
from synthmix.trainer.runtime.state import Run


def eval_due(run: Run) -> bool:
    """`collapse.every_steps` says so, and this is not the epoch's last step (the epoch end evaluates)."""
    progress, collapse = run.progress, run.config.collapse
    every = collapse.every_steps
    epoch_end = progress.step_in_epoch >= progress.steps_per_epoch[progress.epoch - 1]
    return bool(collapse.enabled and every and progress.step % every == 0 and not epoch_end)


def realized_ratio(run: Run) -> float | None:
    """The synthetic share of what this epoch has trained on so far, in data.unit like the target."""
    progress = run.progress
    counted = progress.epoch_tokens if run.config.data.unit == "tokens" else progress.epoch_examples
    total = counted["real"] + counted["synthetic"]
    return counted["synthetic"] / total if total else None


def evaluate(run: Run, ratio_so_far: float | None = None) -> list[dict[str, Any]]:
    """Measure the collapse indicators (step 0: the baseline and the reference) on the main process, or on every
    process when the weights are sharded (each forward gathers them from all); every process gets the alerts,
    so actions apply everywhere (collective: call on every rank)."""
    alerts: list[dict[str, Any]] = []
    progress, monitor = run.progress, run.monitor
    progress.evaluated_step = progress.step  # on every rank, so all agree on whether the last step needs an eval
    if monitor is not None:
        epoch = progress.epoch if progress.step else 0
        _, alerts = record_eval(
            monitor,
            run.log,
            run.unwrapped,
            progress.step,
            epoch,
            realized_synthetic_ratio=ratio_so_far,
            target_synthetic_ratio=run.mixer.target_ratio(max(epoch, 1)),
        )
        run.live_report.after_eval()
    return broadcast_object_list([alerts])[0]


def apply_actions(run: Run, alerts: list[dict[str, Any]]) -> None:
    """`stop` ends the run after this eval (and a checkpoint); `reduce_ratio` lowers the ratio of later epochs."""
    actions = {alert["action"] for alert in alerts}
    if "reduce_ratio" in actions:
        run.mixer.reduce_ratio(run.config.collapse.reduce_factor)
        replan_steps(run)
        run.log.event(
            "ratio_reduced",
            step=run.progress.step,
            epoch=run.progress.epoch,
            scale=run.mixer.ratio_scale,
            next_target=run.mixer.target_ratio(run.progress.epoch),
        )
    if "stop" in actions:
        run.stop_reason = "; ".join(a["message"] for a in alerts if a["action"] == "stop")
