"""Replace vs accumulate over generations, several seeds: the table and the plot for the README.

    python scripts/recursive_experiment.py [--generations 4] [--seeds 0 1 2] [--config configs/recursive.yaml]

Runs `synthmix recursive` for each strategy and seed (each one resumable), then writes
OUT/summary.md (mean and spread of each indicator per generation) and OUT/recursive.png (real_ppl, distinct_2,
tail_mass against the generation, one line per strategy, mean over seeds with min-max band).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from synthmix.cli import main as synthmix
from trainer.recursive import SUMMARY

INDICATORS = ("real_ppl", "distinct_2", "tail_mass", "self_bleu", "js_divergence")
PLOTTED = ("real_ppl", "distinct_2", "tail_mass")


def run_all(config: str, generations: int, strategies: list[str], seeds: list[int], out: Path) -> dict:
    """Run every (strategy, seed); returns {strategy: {seed: [generation rows]}}."""
    results: dict[str, dict[int, list[dict]]] = {}
    for strategy in strategies:
        for seed in seeds:
            run_dir = out / f"{strategy}-seed{seed}"
            code = synthmix(
                [
                    "recursive",
                    "--config",
                    config,
                    "--generations",
                    str(generations),
                    "--strategy",
                    strategy,
                    "--run-dir",
                    str(run_dir),
                    "--seed",
                    str(seed),
                ]
            )
            if code:
                raise SystemExit(code)
            rows = [json.loads(line) for line in (run_dir / SUMMARY).read_text().splitlines()]
            results.setdefault(strategy, {})[seed] = rows
    return results


def summary_table(results: dict) -> str:
    """Markdown: per strategy and generation, mean (min–max over seeds) of each indicator."""
    header = "| strategy | generation | " + " | ".join(INDICATORS) + " |"
    lines = [header, "|" + "---|" * (len(INDICATORS) + 2)]
    for strategy, by_seed in results.items():
        runs = list(by_seed.values())
        for g in range(min(len(r) for r in runs)):
            cells = []
            for name in INDICATORS:
                values = np.array([r[g][name] for r in runs])
                cells.append(f"{values.mean():.4g} ({values.min():.4g}–{values.max():.4g})")
            lines.append(f"| {strategy} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Each plotted indicator against the generation: mean over seeds, min–max band, one line per strategy."""
    fig = Figure(figsize=(12, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(PLOTTED):
        ax = fig.add_subplot(1, len(PLOTTED), i + 1)
        for strategy, by_seed in results.items():
            runs = list(by_seed.values())
            count = min(len(r) for r in runs)
            values = np.array([[r[g][name] for g in range(count)] for r in runs])
            x = np.arange(count)
            ax.plot(x, values.mean(axis=0), marker="o", label=strategy)
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
    parser.add_argument("--config", default="configs/recursive.yaml")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=["replace", "accumulate"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/recursive-experiment"))
    args = parser.parse_args()
    results = run_all(args.config, args.generations, args.strategies, args.seeds, args.out)
    table = summary_table(results)
    (args.out / "summary.md").write_text(table + "\n")
    plot(results, args.out / "recursive.png")
    print(table)
    print(f"\nplot: {args.out / 'recursive.png'}")


if __name__ == "__main__":
    main()
