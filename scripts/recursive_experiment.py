"""The self-consuming strategies over generations, several seeds: the table and the plot for the README.

    python scripts/recursive_experiment.py [--arms replace accumulate ...] [--generations 5] [--seeds 0 1 2]
                                           [--jobs 2] [--config configs/demo_recursive.yaml] [--out DIR]
                                           [--gpus-per-run K | --launcher submitit --submitit.KEY VALUE ...]

Runs `synthmix recursive` for each arm (a strategy and its settings, see ARMS) and seed, each in its own
process with one torch thread, `--jobs` at a time (each one resumable: rerun the same command after a crash),
then writes OUT/summary.md (mean and min-max over seeds of each indicator per generation, and the final
generation's real_ppl relative to generation 0) and OUT/recursive.png (indicators against the generation, one
line per arm, mean over seeds with a min-max band).

The launchers of `synthmix sweep` (synthmix/trainer/experiments/launchers.py, docs/how-to/sweep.md#launchers)
place the (arm, seed) runs: `--gpus-per-run K` gives each its own K GPUs of this machine, `--launcher submitit`
one job each (jobs in OUT/jobs.json, `--no-wait` to return after submitting, the same command again to collect).
Without them, runs are processes here as described above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from synthmix.errors import UserError
from synthmix.trainer.experiments.launchers import (
    Launcher,
    Task,
    add_launcher_arguments,
    check_launcher,
    job_succeeded,
    launcher_from_args,
    plan_slices,
    read_jobs,
    run_on_slices,
    run_submitit,
    visible_gpus,
)
from synthmix.trainer.experiments.recursive import SUMMARY

INDICATORS = ("real_ppl", "real_ppl_p90", "distinct_2", "tail_mass", "vendi_score", "sample_base_ppl_mean")
PLOTTED = ("real_ppl", "real_ppl_p90", "distinct_2", "tail_mass", "vendi_score", "sample_base_ppl_mean")
BAND = ["--strategy", "replace", "--data.filters.verifier.model", "base", "--data.filters.verifier.min_quantile", "0.1"]
DIVERSE = ["--data.filters.diversity.max_overlap", "0.5", "--data.filters.diversity.min_novelty", "0.5"]
# An arm: the `synthmix recursive` arguments that make it (besides config, generations, run dir and seed).
ARMS: dict[str, list[str]] = {
    "replace": ["--strategy", "replace"],
    "fixed_real 10%": ["--strategy", "fixed_real", "--real-fraction", "0.1"],
    "fixed_real 50%": ["--strategy", "fixed_real", "--real-fraction", "0.5"],
    "accumulate": ["--strategy", "accumulate"],
    "adaptive": ["--strategy", "adaptive"],
    "replace + verifier": ["--strategy", "replace", "--data.filters.verifier.model", "base"],
    # Two-sided: also drop samples more likely than 90% of the held-out real text (over-typical ones).
    "replace + band": BAND,
    "replace + band + diverse": BAND + DIVERSE,
    # The selection arms train on what they keep (73 to 137 of 144 samples): replace with as few samples as they
    # keep on average, and the selection from more samples, so that about as many as replace's are left.
    "replace 106 samples": ["--strategy", "replace", "--samples", "106"],
    "replace + band + diverse 200 samples": [*BAND, *DIVERSE, "--samples", "200"],
}


def arm_dir(out: Path, arm: str, seed: int) -> Path:
    """The run folder of one arm and seed."""
    return out / f"{arm.replace(' ', '_').replace('%', 'pct').replace('+', 'plus')}-seed{seed}"


def recursive_args(config: str, generations: int, arm: str, seed: int, run_dir: Path) -> list[str]:
    """The `synthmix recursive` arguments of one arm and seed."""
    return [
        "recursive", "--config", config, "--generations", str(generations), "--run-dir", str(run_dir),
        "--seed", str(seed), *ARMS[arm],
    ]  # fmt: skip


def run_one(config: str, generations: int, arm: str, seed: int, out: Path) -> list[dict]:
    """One arm and seed in its own process (one torch thread); its generations.jsonl rows."""
    run_dir = arm_dir(out, arm, seed)
    command = [sys.executable, "-m", "synthmix", *recursive_args(config, generations, arm, seed, run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "a") as log:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code:
        raise SystemExit(f"{arm}, seed {seed}: exit {code}; see {run_dir / 'log.txt'}")
    print(f"done: {arm}, seed {seed}", flush=True)
    return [json.loads(line) for line in (run_dir / SUMMARY).read_text().splitlines()]


def run_all(
    config: str,
    generations: int,
    arms: list[str],
    seeds: list[int],
    out: Path,
    jobs: int,
    launcher: Launcher | None = None,
) -> dict | None:
    """Run every (arm, seed), `jobs` at a time (or through `launcher`); returns {arm: {seed: [generation rows]}},
    or None when submitit jobs submitted without waiting are still queued or running."""
    tasks = [(arm, seed) for arm in arms for seed in seeds]
    if launcher is not None and (launcher.on_slices or launcher.kind == "submitit"):
        if not launch_all(config, generations, tasks, out, launcher):
            return None
        rows = [
            [json.loads(line) for line in (arm_dir(out, *task) / SUMMARY).read_text().splitlines()] for task in tasks
        ]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(lambda task: run_one(config, generations, task[0], task[1], out), tasks))
    results: dict[str, dict[int, list[dict]]] = {}
    for (arm, seed), arm_rows in zip(tasks, rows, strict=True):
        results.setdefault(arm, {})[seed] = arm_rows
    return results


def launch_all(config: str, generations: int, tasks: list[tuple[str, int]], out: Path, launcher: Launcher) -> bool:
    """Every (arm, seed) as a `synthmix recursive` process on a GPU slice, or a submitit job; whether all ended."""
    runs = []
    for arm, seed in tasks:
        run_dir = arm_dir(out, arm, seed).absolute()
        argv = recursive_args(str(Path(config).absolute()), generations, arm, seed, run_dir)
        runs.append(Task(name=run_dir.name, folder=run_dir, argv=tuple(argv), log="log.txt"))
    if launcher.on_slices:
        run_on_slices(runs, plan_slices(visible_gpus(), launcher.gpus_per_run, len(runs)))
        return True
    # A run is done when its latest job returned (a rerun of `synthmix recursive` continues where it stopped).
    return run_submitit(
        runs, launcher, out, lambda task: job_succeeded(read_jobs(out).get(task.name)), "synthmix-recursive"
    )


def _values(runs: list[list[dict]], g: int, name: str) -> np.ndarray:
    return np.array([r[g].get(name, np.nan) for r in runs], dtype=float)


def final_table(results: dict) -> str:
    """Markdown: per arm, the last generation's real_ppl against generation 0 (mean and min-max over seeds)."""
    lines = ["| arm | generations | real_ppl gen 0 | real_ppl last | change vs gen 0 | synthetic share (last) |"]
    lines.append("|---|---|---|---|---|---|")
    for arm, by_seed in results.items():
        runs = list(by_seed.values())
        last = min(len(r) for r in runs) - 1
        first, final = _values(runs, 0, "real_ppl"), _values(runs, last, "real_ppl")
        change = 100 * (final / first - 1)
        share = _values(runs, last, "synthetic_share")
        spread = f"{np.nanmean(share):.3g} ({np.nanmin(share):.3g}–{np.nanmax(share):.3g})"
        shares = "—" if np.isnan(share).all() else spread
        lines.append(
            f"| {arm} | {last} | {first.mean():.4g} | {final.mean():.4g} ({final.min():.4g}–{final.max():.4g}) "
            f"| {change.mean():+.1f}% ({change.min():+.1f}–{change.max():+.1f}) | {shares} |"
        )
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """Markdown: per arm and generation, mean (min–max over seeds) of each indicator."""
    header = "| arm | generation | " + " | ".join(INDICATORS) + " |"
    lines = [header, "|" + "---|" * (len(INDICATORS) + 2)]
    for arm, by_seed in results.items():
        runs = list(by_seed.values())
        for g in range(min(len(r) for r in runs)):
            cells = []
            for name in INDICATORS:
                values = _values(runs, g, name)
                cells.append(f"{values.mean():.4g} ({values.min():.4g}–{values.max():.4g})")
            lines.append(f"| {arm} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Each plotted indicator against the generation: mean over seeds, min–max band, one line per strategy."""
    fig = Figure(figsize=(13, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(PLOTTED):
        ax = fig.add_subplot(2, (len(PLOTTED) + 1) // 2, i + 1)
        for arm, by_seed in results.items():
            runs = list(by_seed.values())
            count = min(len(r) for r in runs)
            values = np.array([[r[g].get(name, np.nan) for g in range(count)] for r in runs], dtype=float)
            x = np.arange(count)
            ax.plot(x, values.mean(axis=0), marker="o", label=arm)
            ax.fill_between(x, values.min(axis=0), values.max(axis=0), alpha=0.2)
        ax.set_xticks(x)
        ax.set_title(name)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    """Run, tabulate, plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_recursive.yaml")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="arms and seeds run side by side (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("runs/recursive-experiment"))
    add_launcher_arguments(parser)
    args = parser.parse_args()
    try:
        launcher = launcher_from_args(args)
        check_launcher(launcher, args.jobs)
    except UserError as err:
        parser.error(str(err))
    results = run_all(args.config, args.generations, args.arms, args.seeds, args.out, args.jobs, launcher)
    if results is None:
        print(f"jobs: {args.out / 'jobs.json'}")
        return
    table = final_table(results) + "\n\n" + summary_table(results)
    (args.out / "summary.md").write_text(table + "\n")
    plot(results, args.out / "recursive.png")
    print(table)
    print(f"\nplot: {args.out / 'recursive.png'}")


if __name__ == "__main__":
    main()
