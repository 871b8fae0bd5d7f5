"""The collapse hook's cost against an epoch of training, at the demo's settings.

    .venv/bin/python bench/bench_collapse.py                    # configs/demo.yaml (needs `make demo`'s cache)
    .venv/bin/python bench/bench_collapse.py --config configs/tiny.yaml --epochs 2
    .venv/bin/python bench/bench_collapse.py --collapse.num_prompts 24   # any run-config override
    .venv/bin/python bench/bench_collapse.py --benchmark-questions 200 --benchmark-limits 25,50,100,200

One training run into a temporary folder (configs/demo.yaml when its base model and synthetic corpus are
cached, else configs/tiny.yaml), read back from its metrics.jsonl: each `eval` event's `seconds` (the hook's
measurement: held-out scoring, sampling, indicators) against the epoch's training time, taken from the `train`
events' `time` stamps (first to last step of the epoch, plus one mean step for the first; a checkpoint written
every N steps counts as training). The step-0 eval (the baseline) is listed apart: it runs once per run.
Torch runs on one thread unless `--threads` says otherwise: on a shared or busy CPU, several threads per process
make small matrix products (and so sampling, one token at a time) tens of times slower and the numbers noise.

The hook's parts are timed by wrapping them in this process: held-out scoring (`_score_held_out`, with the
per-text perplexity percentiles), sampling (`sample_continuations`), the sample indicators (`_indicators`,
self_bleu among them), the samples scored by the base model (`_embed`: its perplexity and hidden states; at
step 0 also the real continuations) with the Vendi score (`_model_scored`), collapse.benchmarks when set
(`Benchmarks.score`), and the report (`LiveReport.write`: at the end, and after an eval at most every 5 minutes),
which the eval's `seconds` does not include.

`--benchmark-questions N` adds collapse.benchmarks with a local lm-evaluation-harness task of N multiple-choice
questions made from CPython's documentation (its own seeded choice of passages): the first 24 words of a passage,
and four candidate continuations of 12 words, the passage's own and three others'. Which continuation is the
real one is what a model forgets under collapse. `--benchmark-limits` then times the task on the trained model
at each limit, to show how the cost grows with the questions asked.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import synthmix.trainer.collapse.benchmarks as benchmarks  # noqa: E402
import synthmix.trainer.collapse.indicators as indicators  # noqa: E402
import synthmix.trainer.collapse.monitor as collapse  # noqa: E402
import synthmix.trainer.reporting.live as live  # noqa: E402
import synthmix.trainer.runtime.loop as loop  # noqa: E402
from synthmix.data_mixers.builtin import builtin_texts  # noqa: E402
from synthmix.trainer.config import RunConfig, load_config  # noqa: E402
from synthmix.trainer.reporting.events import METRICS, read_events  # noqa: E402

PARTS = ("held_out", "sampling", "indicators", "self_bleu")


def _timed(fn, record):
    """`fn`, calling `record(seconds)` with the duration of each call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(time.perf_counter() - started)

    return wrapper


class HookClock:
    """Seconds spent in each part of every `measure` call (one record per eval), and in each report write."""

    def __init__(self) -> None:
        self.evals: list[dict[str, float]] = []
        self.reports: list[float] = []
        self._inside = False

    def install(self) -> None:
        monitor = collapse.CollapseMonitor
        monitor.measure = self._measure(monitor.measure)
        monitor._score_held_out = self._part("held_out", monitor._score_held_out)
        monitor._indicators = self._part("indicators", monitor._indicators)
        # The tail indicators: samples (and, once, the real continuations) scored by the base model.
        monitor._embed = self._part("base_scoring", monitor._embed)
        monitor._model_scored = self._part("vendi", monitor._model_scored)
        collapse.sample_continuations = self._part("sampling", collapse.sample_continuations)
        indicators.self_bleu = self._part("self_bleu", indicators.self_bleu)  # computed once per eval
        benchmarks.Benchmarks.score = self._part("benchmarks", benchmarks.Benchmarks.score)
        live.LiveReport.write = self._report(live.LiveReport.write)

    def _measure(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.evals.append(defaultdict(float))
            self._inside = True
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside = False

        return wrapper

    def _part(self, name: str, fn):
        def record(seconds: float) -> None:
            if self._inside:
                self.evals[-1][name] += seconds

        return _timed(fn, record)

    def _report(self, fn):
        return _timed(fn, self.reports.append)


def default_config() -> tuple[Path, str]:
    """configs/demo.yaml when the demo's cached inputs exist, else configs/tiny.yaml; and why."""
    demo = REPO / "configs" / "demo.yaml"
    if demo.is_file():
        config = load_config(demo)
        needed = [Path(config.model.name or "")] + [Path(s.path) for s in config.data.sources if s.path]
        missing = [str(p) for p in needed if not (REPO / p).exists()]
        if not missing:
            return demo, "configs/demo.yaml (the demo's stage 3)"
        return REPO / "configs" / "tiny.yaml", f"configs/tiny.yaml: demo.yaml needs `make demo`'s {', '.join(missing)}"
    return REPO / "configs" / "tiny.yaml", "configs/tiny.yaml (no configs/demo.yaml)"


def epoch_rows(events: list[dict[str, Any]], clock: HookClock) -> list[dict[str, Any]]:
    """Per eval: its seconds and parts, the report after it, and the training time of the epoch it closes."""
    train = [e for e in events if e["event"] == "train"]
    rows = []
    for index, ev in enumerate(e for e in events if e["event"] == "eval"):
        row: dict[str, Any] = {"epoch": ev["epoch"], "eval_s": ev["seconds"], **(clock.evals[index])}
        steps = [e for e in train if e["epoch"] == ev["epoch"]] if ev["epoch"] else []
        if len(steps) >= 2:
            span = steps[-1]["time"] - steps[0]["time"]
            row["train_s"] = span * len(steps) / (len(steps) - 1)  # the first step ran before its timestamp
            row["steps"] = len(steps)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def s(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    lines = [
        "| epoch | steps | training s | eval s | held-out scoring s | sampling s | indicators s (self_bleu) "
        "| base-model scoring s (Vendi) | benchmarks s | eval / training | benchmarks / training |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        train_s = r.get("train_s")
        share = f"{100 * r['eval_s'] / train_s:.1f}%" if train_s else "— (baseline, once)"
        bench = r.get("benchmarks")
        bench_share = f"{100 * bench / train_s:.1f}%" if train_s and bench is not None else "—"
        lines.append(
            f"| {r['epoch']} | {r.get('steps', '—')} | {s(train_s)} | {s(r['eval_s'])} | {s(r.get('held_out'))} "
            f"| {s(r.get('sampling'))} | {s(r.get('indicators'))} ({s(r.get('self_bleu'))}) "
            f"| {s(r.get('base_scoring'))} ({s(r.get('vendi'))}) | {s(r.get('benchmarks'))} "
            f"| {share} | {bench_share} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load}{gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def settings(config: RunConfig) -> str:
    c = config.collapse
    return (
        f"num_prompts {c.num_prompts}, prompt_tokens {c.prompt_tokens}, max_new_tokens {c.sampling.max_new_tokens}, "
        f"sampling batch {c.sampling.batch_size}, max_eval_texts {c.max_eval_texts}, eval_seq_len {c.eval_seq_len}, "
        f"self_bleu_samples {c.self_bleu_samples}; train batch {config.train.per_device_train_batch_size} x "
        f"{config.train.seq_len}, {config.train.epochs} epoch(s)"
    )


def continuation_task(folder: Path, questions: int, seed: int = 0) -> Path:
    """A local lm-eval task: which of four 12-word continuations follows a passage's first 24 words."""
    import json
    import random

    import yaml

    words = [text.split() for text in builtin_texts("python_docs") if len(text.split()) >= 36]
    rng = random.Random(seed)
    rng.shuffle(words)
    if len(words) < questions + 3:
        raise SystemExit(f"--benchmark-questions: at most {len(words) - 3} passages are long enough")
    rows = []
    for i in range(questions):
        others = rng.sample([w for j, w in enumerate(words) if j != i], 3)
        choices = [" ".join(w[24:36]) for w in [words[i], *others]]
        answer = rng.randrange(4)
        choices[0], choices[answer] = choices[answer], choices[0]
        rows.append({"question": " ".join(words[i][:24]), "choices": choices, "answer": answer})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "continuations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "docs_continuation", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(folder / "continuations.jsonl")}},
        "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}],
    }  # fmt: skip
    (folder / "continuations.yaml").write_text(yaml.safe_dump(task))
    return folder


def time_limits(config: RunConfig, out: Path, limits: list[int]) -> list[tuple[int, float, float]]:
    """The trained model (base + the run's adapter) scored at each limit: (limit, seconds, accuracy)."""
    import dataclasses

    from synthmix.trainer.modeling.model import load_for_sampling

    model, tokenizer = load_for_sampling(config.model.name, str(out / "tokenizer"), str(out / "adapter"), False, "cpu")
    rows = []
    for limit in limits:
        scorer = benchmarks.Benchmarks(dataclasses.replace(config.collapse.benchmarks, limit=limit), tokenizer)
        started = time.perf_counter()
        values = scorer.score(model)
        rows.append((limit, time.perf_counter() - started, values["benchmark.docs_continuation.acc"]))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="run config (default: demo.yaml if cached, else tiny.yaml)")
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs for the run (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder and print where it is")
    parser.add_argument("--benchmark-questions", type=int, help="add a local lm-eval task of this many questions")
    parser.add_argument("--benchmark-limits", default="", help="comma-separated limits timed on the trained model")
    args, overrides = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path, why = (args.config.resolve(), str(args.config)) if args.config else default_config()
    os.chdir(REPO)  # configs name their inputs relative to the repository
    out = Path(tempfile.mkdtemp(prefix="bench-collapse-"))
    if args.benchmark_questions:
        task = continuation_task(out / "tasks", args.benchmark_questions)
        overrides = ["--collapse.benchmarks.tasks", "[docs_continuation]",
                     "--collapse.benchmarks.include_path", str(task), *overrides]  # fmt: skip
    config = load_config(
        path, ["--output_dir", str(out / "run"), "--train.epochs", str(args.epochs), "--train.progress", "false"]
        + overrides
    )  # fmt: skip
    clock = HookClock()
    clock.install()
    print(f"config: {why}; overrides: {' '.join(overrides) or 'none'}", flush=True)
    print(f"hook: {settings(config)}", flush=True)
    started = time.perf_counter()
    loop.train(config)
    total = time.perf_counter() - started
    rows = epoch_rows(read_events(out / "run" / METRICS), clock)
    print(f"\n{datetime.date.today().isoformat()} | {machine()}")
    print(f"run: {total:.1f} s in all\n")
    print(table(rows))
    epochs = [r for r in rows if r.get("train_s")]
    if epochs:
        share = sum(r["eval_s"] for r in epochs) / sum(r["train_s"] for r in epochs)
        print(f"\nhook per epoch: {100 * share:.1f}% of the epoch's training time (target < 10%)")
    reports = ", ".join(f"{seconds:.2f} s" for seconds in clock.reports) or "none"
    print(f"report drawings (not in the eval's seconds): {reports}")
    limits = [int(part) for part in args.benchmark_limits.split(",") if part.strip()]
    if limits and args.benchmark_questions and epochs:
        train_s = sum(r["train_s"] for r in epochs) / len(epochs)
        print("\n| questions asked | seconds | s per question | of an epoch's training | accuracy |")
        print("|---:|---:|---:|---:|---:|")
        for limit, seconds, accuracy in time_limits(config, out / "run", limits):
            share = 100 * seconds / train_s
            print(f"| {limit} | {seconds:.2f} | {seconds / limit:.3f} | {share:.1f}% | {accuracy:.3f} |")
    if args.keep:
        print(f"run folder: {out / 'run'}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
