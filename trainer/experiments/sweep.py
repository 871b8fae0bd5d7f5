"""`synthmix sweep`: how much synthetic data is safe for this model and this data?

    synthmix sweep --config CONFIG --ratios 0,0.25,0.5,0.75,0.9 [--seeds 0,1,2] [--steps N] [--run-dir DIR]
                   [--jobs J] [--tolerance real_ppl=0.05 ...] [--section.key VALUE ...]
                   [--gpus-per-run K | --launcher submitit --submitit.KEY VALUE ... [--no-wait]]

One training per (ratio, seed), from the same base model and the same held-out text, all at the same number of
optimizer steps (by default what the ratio-0 run plans): a higher ratio makes longer epochs, and comparing at
equal epochs would compare more training with less. Each run's last step is evaluated by the collapse hook.
The verdict compares, ratio by ratio from the lowest, the mean over seeds of each toleranced indicator with
the ratio-0 runs' mean: the safe ratio is the largest one below the first ratio where an indicator moves the
way collapse moves it by more than its tolerance.

RUN_DIR/ratio-R-seed-S is a plain run folder: a finished run is skipped when the sweep runs again, an
unfinished one resumes from its latest checkpoint. RUN_DIR/sweep.jsonl holds every run's final eval,
RUN_DIR/verdict.json the verdict, RUN_DIR/sweep.html the page (indicators against the ratio, runs overlaid).

Where the runs train is the launcher's choice (experiments/launchers.py): in this process or `--jobs` processes
(the default), one process per GPU slice (`--gpus-per-run`), or one submitit job per run (`--launcher
submitit`). The last two run `synthmix train --config RUN_DIR/ratio-R-seed-S/sweep-run.yaml`, the run's config
as planned here, so every launcher trains the same runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from synthmix.errors import ConfigError
from synthmix.files import write_text
from synthmix.schema import to_dict
from synthmix.trainer.collapse.indicators import relative_change
from synthmix.trainer.config import (
    BENCHMARK_PREFIX,
    INDICATOR_DIRECTION,
    RunConfig,
    indicator_direction,
    known_indicators,
    run_tokenizer,
    validate,
)
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.experiments.launchers import Launcher, Task, check_launcher, run_on_slices, run_submitit
from synthmix.trainer.reporting.events import METRICS, read_events

SWEEP_FILE = "sweep.jsonl"
VERDICT_FILE = "verdict.json"
RUN_CONFIG = "sweep-run.yaml"
"""The run's config as the sweep planned it, in its folder: what a launcher's `synthmix train --config` reads."""
DEFAULT_TOLERANCES: dict[str, float] = {"real_ppl": 0.05, "distinct_2": 0.05, "tail_mass": 0.10}
"""Relative change from the ratio-0 runs, in the direction collapse moves each indicator, that is still safe:
held-out perplexity 5% higher, 5% fewer distinct token pairs in the samples, 10% less of the rare tail."""


@dataclasses.dataclass
class Sweep:
    """One sweep: the config every run starts from, the grid, the budget and the verdict's tolerances."""

    config: RunConfig
    run_dir: Path
    ratios: list[float]
    seeds: list[int]
    steps: int | None = None
    """Optimizer steps of every run; None: what the ratio-0 run plans."""
    tolerances: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    jobs: int = 1
    """Runs trained side by side, each in its own process with one torch thread."""
    launcher: Launcher = dataclasses.field(default_factory=Launcher)
    """Where the runs train: here (the default), on GPU slices, or as submitit jobs."""


def check_sweep(sweep: Sweep) -> None:
    """The grid and the tolerances make sense before anything trains."""
    if 0.0 not in sweep.ratios:
        raise ConfigError("--ratios: include 0, the real-only run every other ratio is compared with")
    if len(set(sweep.ratios)) != len(sweep.ratios) or any(not 0 <= r < 1 for r in sweep.ratios):
        raise ConfigError(f"--ratios: distinct values in [0, 1) expected, got {sweep.ratios}")
    if not sweep.seeds or len(set(sweep.seeds)) != len(sweep.seeds):
        raise ConfigError(f"--seeds: distinct seeds expected, got {sweep.seeds}")
    if sweep.steps is not None and sweep.steps < 1:
        raise ConfigError(f"--steps: must be at least 1, got {sweep.steps}")
    if sweep.jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {sweep.jobs}")
    check_launcher(sweep.launcher, sweep.jobs)
    for name, tolerance in sweep.tolerances.items():
        if indicator_direction(name) is None:
            known = ", ".join(INDICATOR_DIRECTION)
            raise ConfigError(
                f"--tolerance: unknown indicator {name!r} (known: {known}, and {BENCHMARK_PREFIX}<task>.<metric> "
                "for collapse.benchmarks)"
            )
        task = name.removeprefix(BENCHMARK_PREFIX).split(".")[0]
        if name.startswith(BENCHMARK_PREFIX) and task not in sweep.config.collapse.benchmarks.tasks:
            raise ConfigError(
                f"--tolerance {name}: task {task!r} is not in collapse.benchmarks.tasks "
                f"({sweep.config.collapse.benchmarks.tasks or 'empty'}), so no run would score it"
            )
        if tolerance <= 0:
            raise ConfigError(f"--tolerance {name}: must be > 0, got {tolerance}")
    if not sweep.config.collapse.enabled:
        raise ConfigError("collapse.enabled: the sweep compares the collapse hook's indicators; turn it on")


# ---------------------------------------------------------------------------------------------- the runs
def run_name(ratio: float, seed: int) -> str:
    """The folder of one run: ratio-0.25-seed-1."""
    return f"ratio-{ratio:.10g}-seed-{seed}"


def run_done(folder: Path) -> bool:
    """Whether the run in `folder` ended for good: its last `end` event is not a preemption (which resumes)."""
    ends = [e for e in read_events(folder / METRICS) if e.get("event") == "end"]
    return bool(ends) and ends[-1].get("status") != "preempted"


def run_sweep(sweep: Sweep) -> dict[str, Any] | None:
    """Train (or continue) every run, then write sweep.jsonl, verdict.json and sweep.html; returns the verdict.
    None: submitit jobs submitted without waiting (`--no-wait`) are still queued or running."""
    check_sweep(sweep)
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    configs = plan_runs(sweep)
    todo = [(ratio, seed, c) for (ratio, seed), c in configs.items() if not run_done(Path(c.output_dir))]
    print(f"sweep: {len(configs)} runs of {sweep.steps} steps each; {len(configs) - len(todo)} already finished")
    if sweep.launcher.on_slices or sweep.launcher.kind == "submitit":
        if not _launch(sweep, configs):
            return None
    elif sweep.jobs == 1:
        for ratio, seed, config in todo:
            print(f"[ratio {ratio:g}, seed {seed}] training", flush=True)
            _train_one(config)
    else:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter per run: no state shared via fork
        with ProcessPoolExecutor(max_workers=sweep.jobs, mp_context=context, initializer=_one_thread) as pool:
            futures = {pool.submit(_train_one, config): (ratio, seed) for ratio, seed, config in todo}
            try:
                for future, (ratio, seed) in futures.items():
                    future.result()  # the first failure raises here, as it would in a single process
                    print(f"[ratio {ratio:g}, seed {seed}] done", flush=True)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # runs not started yet stay unstarted
                raise
    rows = [final_row(ratio, seed, Path(c.output_dir)) for (ratio, seed), c in configs.items()]
    short = [row for row in rows if row["step"] != sweep.steps]
    if short:
        raise TrainerError(
            f"{short[0]['run']}: its last eval is at step {short[0]['step']}, not {sweep.steps}; the verdict compares "
            "runs at equal steps (a run that ended early, or a run folder from another sweep: use another --run-dir)"
        )
    write_text(sweep.run_dir / SWEEP_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    result = {**verdict(rows, sweep.tolerances), "steps": sweep.steps, "seeds": sweep.seeds, "ratios": sweep.ratios}
    write_text(sweep.run_dir / VERDICT_FILE, json.dumps(result, indent=2) + "\n")
    from synthmix.trainer.reporting.sweep_page import write_sweep_page

    write_sweep_page(sweep.run_dir, rows, result, [Path(c.output_dir) for c in configs.values()])
    return result


def _launch(sweep: Sweep, configs: dict[tuple[float, int], RunConfig]) -> bool:
    """Every unfinished run through the launcher, as `synthmix train` of its config written into its folder;
    whether all have finished (False: submitted and not waited for)."""
    import yaml

    from synthmix.trainer.experiments.launchers import plan_slices, visible_gpus

    tasks = []
    for (ratio, seed), config in configs.items():
        folder = Path(config.output_dir)
        name = run_name(ratio, seed)
        if run_done(folder):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / RUN_CONFIG, yaml.safe_dump(to_dict(config), sort_keys=False))
        argv = ("train", "--config", str((folder / RUN_CONFIG).absolute()))
        tasks.append(Task(name=name, folder=folder, argv=argv, resume_from=folder / "checkpoints"))
    if sweep.launcher.on_slices:
        slices = plan_slices(visible_gpus(), sweep.launcher.gpus_per_run, len(tasks))
        run_on_slices(tasks, slices)
        return True
    return run_submitit(tasks, sweep.launcher, sweep.run_dir, lambda task: run_done(task.folder), name="synthmix-sweep")


def plan_runs(sweep: Sweep) -> dict[tuple[float, int], RunConfig]:
    """Every run's config: its ratio (constant), seed, folder and step budget; rules only warn (an action that
    stopped a run or lowered its ratio would change what the sweep compares). Sets `sweep.steps` when unset.
    Each ratio's mix is planned here, so a ratio the data cannot give fails before anything trains."""
    from synthmix.data_mixers.corpus import build_corpora

    base = sweep.config
    corpora = build_corpora(base.data, run_tokenizer(base), progress=False, base_model=base.model.name)
    if sweep.steps is None:
        sweep.steps = _planned_steps(_with_ratio(base, 0.0), corpora.train, base.train.epochs)
    configs = {}
    single = sweep.jobs == 1 and sweep.launcher.kind == "local" and not sweep.launcher.on_slices  # bars garble logs
    for ratio in sorted(sweep.ratios):
        for seed in sweep.seeds:
            config = _with_ratio(dataclasses.replace(base, seed=seed), ratio)
            epochs = _epochs_for(config, corpora.train, sweep.steps)  # the seed draws the mix: per seed
            rules = [dataclasses.replace(rule, action="warn") for rule in config.collapse.rules]
            run = dataclasses.replace(
                config,
                output_dir=str(sweep.run_dir / run_name(ratio, seed)),
                train=dataclasses.replace(
                    config.train, epochs=epochs, max_steps=sweep.steps, progress=config.train.progress and single
                ),
                collapse=dataclasses.replace(config.collapse, rules=rules),
            )
            validate(run)
            configs[(ratio, seed)] = run
    return configs


def _with_ratio(config: RunConfig, ratio: float) -> RunConfig:
    schedule = dataclasses.replace(config.data.schedule, type="constant", start=None, end=None, steps=[])
    return dataclasses.replace(config, data=dataclasses.replace(config.data, synthetic_ratio=ratio, schedule=schedule))


def _planned_steps(config: RunConfig, corpora: list[Any], epochs: int) -> int:
    from synthmix.data_mixers.mixer import Mixer
    from synthmix.trainer.runtime.schedule import steps_in_epoch

    mixer = Mixer(corpora, config.data, config.seed, epochs, seq_len=config.train.seq_len)
    planned = sum(steps_in_epoch(mixer, e, config) for e in range(1, epochs + 1))
    return min(planned, config.train.max_steps) if config.train.max_steps is not None else planned


def _epochs_for(config: RunConfig, corpora: list[Any], steps: int) -> int:
    """The fewest epochs whose planned steps reach `steps` at this ratio (max_steps then stops the run there)."""
    from synthmix.data_mixers.mixer import Mixer
    from synthmix.trainer.runtime.schedule import steps_in_epoch

    per_epoch = steps_in_epoch(Mixer(corpora, config.data, config.seed, 1, seq_len=config.train.seq_len), 1, config)
    epochs = math.ceil(steps / per_epoch)
    while True:  # epochs can differ by a step or so: count them
        mixer = Mixer(corpora, config.data, config.seed, epochs, seq_len=config.train.seq_len)
        if sum(steps_in_epoch(mixer, e, config) for e in range(1, epochs + 1)) >= steps:
            return epochs
        epochs += 1


def _one_thread() -> None:
    import torch

    from synthmix.libraries import quiet_libraries

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    quiet_libraries()


def _train_one(config: RunConfig) -> None:
    from synthmix.libraries import load_bitsandbytes_only_to_quantize

    load_bitsandbytes_only_to_quantize(config.model.quantization.bits is not None)  # a process of its own: before peft
    from synthmix.trainer.runtime.loop import train

    folder = Path(config.output_dir)
    train(config, resume="latest" if (folder / "checkpoints").is_dir() else None)


def final_row(ratio: float, seed: int, folder: Path) -> dict[str, Any]:
    """One line of sweep.jsonl: the run's last eval (every indicator), its step and how it ended."""
    events = read_events(folder / METRICS)
    evals = [e for e in events if e.get("event") == "eval"]
    end = next((e for e in reversed(events) if e.get("event") == "end"), {})
    last = evals[-1] if evals else {}
    indicators = {k: last[k] for k in known_indicators(last)}
    return {"ratio": ratio, "seed": seed, "step": last.get("step"), "status": end.get("status"), "run": str(folder),
            **indicators}  # fmt: skip


# ---------------------------------------------------------------------------------------------- the verdict
def breaks_tolerance(name: str, change: float, tolerance: float) -> bool:
    """Whether `change` moves `name` the way collapse moves it by more than `tolerance` (either way for an
    indicator without a healthy direction)."""
    direction = indicator_direction(name)
    if not math.isfinite(change):  # a run that diverged (inf) or measured nothing (NaN) is not safe
        return True
    if direction > 0:
        return change < -tolerance
    if direction < 0:
        return change > tolerance
    return abs(change) > tolerance


def verdict(rows: list[dict[str, Any]], tolerances: dict[str, float]) -> dict[str, Any]:
    """The largest safe ratio from the runs' final evals (one row per run: ratio, seed, indicators).

    Each ratio's value of an indicator is its mean over seeds; its change is relative to the ratio-0 mean.
    Ratios are tried from the lowest: the first one where a toleranced indicator breaks its tolerance ends the
    search, and the safe ratio is the ratio before it (null when that is 0: no ratio is safe). `limited_by`
    names the indicator that broke its tolerance by the largest multiple of it at that first unsafe ratio.
    """
    ratios = sorted({row["ratio"] for row in rows})
    if not ratios or ratios[0] != 0:
        raise ConfigError("the sweep's runs need ratio 0, the real-only anchor")
    per_ratio = {r: _summary([row for row in rows if row["ratio"] == r], tolerances) for r in ratios}
    anchor = per_ratio[0.0]
    for name in tolerances:
        if not math.isfinite(anchor[name]["mean"]):
            raise ConfigError(
                f"--tolerance {name}: the ratio-0 runs' mean is {anchor[name]['mean']}; nothing to compare with"
            )
    safe: float | None = None
    limited_by = None
    for ratio in ratios[1:]:
        broken = []
        for name, tolerance in tolerances.items():
            change = relative_change(per_ratio[ratio][name]["mean"], anchor[name]["mean"])
            per_ratio[ratio][name]["change"] = change
            if breaks_tolerance(name, change, tolerance):
                broken.append({"indicator": name, "ratio": ratio, "change": change, "tolerance": tolerance})
        if broken:
            limited_by = max(broken, key=lambda b: abs(b["change"]) / b["tolerance"])
            break
        safe = ratio
    message = _message(safe, limited_by, ratios)
    table = {f"{r:g}": values for r, values in per_ratio.items()}
    return {"safe_ratio": safe, "limited_by": limited_by, "tolerances": tolerances, "message": message,
            "per_ratio": table}  # fmt: skip


def _summary(rows: list[dict[str, Any]], tolerances: dict[str, float]) -> dict[str, dict[str, float]]:
    out = {}
    for name in tolerances:
        values = [row.get(name) for row in rows]
        if any(v is None for v in values):
            missing = next(row for row in rows if row.get(name) is None)
            raise ConfigError(
                f"--tolerance {name}: run {missing['run']} has no {name} in its final eval (an indicator the hook "
                "measures is needed)"
            )
        array = np.asarray(values, dtype=float)
        out[name] = {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}
    return out


def _message(safe: float | None, limited_by: dict[str, Any] | None, ratios: list[float]) -> str:
    if limited_by is None:
        return f"every ratio tried is safe: up to {ratios[-1]:g}, no indicator moved past its tolerance"
    moved = (
        f"at ratio {limited_by['ratio']:g} {limited_by['indicator']} moved {limited_by['change'] * 100:+.1f}% "
        f"from ratio 0 (tolerance {limited_by['tolerance']:.0%})"
    )
    if safe is None:
        return f"no ratio is safe: {moved}, the lowest ratio tried above 0"
    return f"safe ratio: {safe:g}; {moved}"
