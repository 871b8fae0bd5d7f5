"""`collapse.benchmarks`: lm-evaluation-harness tasks scored at every eval on the model being trained, in memory
(`lm_eval.simple_evaluate` on an `HFLM` wrapped around the model object: no copy, no reload).

lm-eval seeds Python's, NumPy's and torch's generators and puts the model in eval mode; all of that is undone
here, so a run with benchmarks resumes bit for bit like one without. Scores go into the eval event as
`benchmark.<task>.<metric>` (lm-eval's `acc,none` becomes `acc`; a filter other than `none` is kept after a dot:
`exact_match.strict-match`), higher is better.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmix.extras import install_command
from synthmix.trainer.config import BENCHMARK_PREFIX, BenchmarkConfig
from synthmix.trainer.errors import TrainerError


class Benchmarks:
    """The configured tasks, found once (lm-eval's task index takes seconds to build), scored per eval."""

    def __init__(self, config: BenchmarkConfig, tokenizer: Any) -> None:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise TrainerError(
                f"collapse.benchmarks needs lm-evaluation-harness: {install_command('benchmarks')}"
            ) from None
        self.config = config
        # lm-eval may give a tokenizer without one a pad token: its own copy, not the run's.
        self.tokenizer = copy.deepcopy(tokenizer)
        include = config.include_path
        if include is not None and not Path(include).is_dir():
            raise TrainerError(f"collapse.benchmarks.include_path: {include} is not a folder of task YAMLs")
        with _quiet():
            # lm-eval's own index reads ~15,000 task YAMLs (a minute on a busy 2-core machine): skipped when
            # include_path holds every task asked for.
            self.task_manager = TaskManager(include_path=include, include_defaults=include is None)
            if include is not None and not set(config.tasks) <= set(self.task_manager.all_tasks):
                self.task_manager = TaskManager(include_path=include)
        unknown = [task for task in config.tasks if task not in self.task_manager.all_tasks]
        if unknown:
            where = f"lm-eval's tasks or those in {include}" if include else "lm-eval's tasks (no include_path set)"
            raise TrainerError(f"collapse.benchmarks.tasks: {', '.join(map(repr, unknown))} not among {where}")

    def score(self, model: torch.nn.Module) -> dict[str, float]:
        """Every configured task's metrics for `model`, as `benchmark.<task>.<metric>` keys."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        modes = [module.training for module in model.modules()]
        try:
            with _saved_rngs(), _quiet(), torch.no_grad():
                lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.config.batch_size)
                results = simple_evaluate(
                    model=lm,
                    tasks=list(self.config.tasks),
                    num_fewshot=self.config.num_fewshot,
                    limit=self.config.limit,
                    task_manager=self.task_manager,
                    log_samples=False,
                    bootstrap_iters=0,  # no stderr: it costs more than the scores
                    verbosity="ERROR",
                )
        finally:
            for module, mode in zip(model.modules(), modes, strict=True):
                module.training = mode
        return benchmark_values(results["results"])


def benchmark_values(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's per-task results as eval-event keys: `acc,none` -> `benchmark.<task>.acc`; stderrs and
    non-numbers are left out."""
    values = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, kind = key.partition(",")
            if not kind or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                name = metric if kind == "none" else f"{metric}.{kind}"
                values[f"{BENCHMARK_PREFIX}{task}.{name}"] = float(value)
    return values


@contextlib.contextmanager
def _saved_rngs() -> Iterator[None]:
    """Python's, NumPy's and torch's generators (CPU and the current accelerator) as they were."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's INFO and WARNING lines (one per task and request type) off; errors still show."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
