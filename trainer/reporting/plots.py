"""The report's plots: matplotlib figures rendered to PNG bytes (Agg, no display), one function per plot."""

from __future__ import annotations

import io
import itertools
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from synthmix.trainer.reporting.records import RunRecord, num

# tab10 without its red, which marks alerts.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
ALERT_RED = "#d62728"
DPI = 90


def _figure(title: str, xlabel: str, wide: bool = False) -> tuple[Figure, Any]:
    # Fixed margins: constrained layout would double the drawing time of these small figures.
    fig = Figure(figsize=(5.6 if wide else 3.6, 2.5), dpi=DPI)
    fig.subplots_adjust(left=0.17 if not wide else 0.12, right=0.97, top=0.89, bottom=0.19)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _xy(rows: list[dict], xkey: str, ykey: str) -> tuple[list[float], list[float]]:
    pairs = [(num(r.get(xkey)), num(r.get(ykey))) for r in rows]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def eval_axis(runs: list[RunRecord]) -> str:
    """'epoch' when every run evaluates at most once per epoch, else 'step' (collapse.every_steps)."""
    for run in runs:
        epochs = [num(e.get("epoch")) for e in run.evals]
        if len(epochs) != len(set(epochs)):
            return "step"
    return "epoch"


def indicator_plot(name: str, runs: list[RunRecord]) -> bytes:
    axis = eval_axis(runs)
    fig, ax = _figure(name, axis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for run, color in zip(runs, itertools.cycle(PALETTE)):
        xs, ys = _xy(run.evals, axis, name)
        ax.plot(xs, ys, "-o", color=color, lw=1.6, ms=3.5)
        baseline = next((y for x, y in zip(xs, ys) if x == 0), None)
        if baseline is not None:
            ax.axhline(baseline, color=color, ls="--", lw=1, alpha=0.7)
        alerts = [(num(a.get(axis)), num(a.get("value"))) for a in run.alerts if a.get("indicator") == name]
        alerts = [(x, y) for x, y in alerts if x is not None and y is not None]
        if alerts:
            ax.plot(*zip(*alerts), "x", color=ALERT_RED, ms=9, mew=2.2, zorder=5, clip_on=False)
    reference = num(runs[0].reference.get(name))
    if reference is not None:
        ax.axhline(reference, color="black", ls=":", lw=1.4)
    return _png(fig)


def loss_plots(runs: list[RunRecord]) -> dict[str, bytes]:
    kinds = ["loss", "loss_real", "loss_synthetic"]
    if len(runs) == 1:
        fig, ax = _figure("training loss by kind", "step", wide=True)
        for kind, color in zip(kinds, ["#333333", PALETTE[2], PALETTE[1]]):
            ax.plot(*_xy(runs[0].train, "step", kind), color=color, lw=1.1, label=kind)
        for epoch in runs[0].epochs:
            if num(epoch.get("step")) is not None:
                ax.axvline(epoch["step"], color="grey", lw=0.6, alpha=0.5)
        ax.legend(fontsize=7)
        return {"loss": _png(fig)}
    plots = {}
    for kind in kinds:
        fig, ax = _figure(kind, "step", wide=True)
        for run, color in zip(runs, itertools.cycle(PALETTE)):
            ax.plot(*_xy(run.train, "step", kind), color=color, lw=1.1)
        plots[kind] = _png(fig)
    return plots


def ratio_plot(runs: list[RunRecord]) -> bytes:
    fig, ax = _figure("synthetic share of training tokens", "epoch", wide=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for run, color in zip(runs, itertools.cycle(PALETTE)):
        rows = run.epochs or [e for e in run.evals if num(e.get("epoch"), 0) > 0]
        tx, ty = _xy(rows, "epoch", "target_synthetic_ratio")
        ax.plot(*_xy(rows, "epoch", "realized_synthetic_ratio"), "-o", color=color, lw=1.6, ms=3.5, label="realized")
        ax.plot(tx, ty, "--", color=color, lw=1.2, label="target")
        if len(runs) == 1 and tx:
            ax.fill_between(tx, [t - 0.01 for t in ty], [t + 0.01 for t in ty], color=color, alpha=0.12, label="±1 pp")
    if len(runs) == 1:
        ax.legend(fontsize=7)
    return _png(fig)


def generation_plot(name: str, runs: list[RunRecord]) -> bytes:
    fig, ax = _figure(name, "generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    styles = ["-o", "--s", ":^", "-.d"]
    for run, color in zip(runs, itertools.cycle(PALETTE)):
        strategies = list(dict.fromkeys(str(g.get("strategy", "")) for g in run.generations))
        for strategy, style in zip(strategies, itertools.cycle(styles)):
            rows = [g for g in run.generations if str(g.get("strategy", "")) == strategy]
            label = strategy if len(runs) == 1 else f"{run.label} {strategy}"
            ax.plot(*_xy(rows, "generation", name), style, color=color, lw=1.4, ms=3.5, label=label)
    ax.legend(fontsize=7)
    return _png(fig)


def sweep_ratio_plot(name: str, by_ratio: dict[float, list[float]], tolerance: float | None, direction: int) -> bytes:
    """An indicator's final value against the synthetic ratio: mean over seeds, min-max band, and the region
    that the verdict's tolerance allows around the ratio-0 mean (shaded)."""
    fig, ax = _figure(name, "synthetic ratio")
    ratios = sorted(by_ratio)
    values = [[v for v in by_ratio[r] if num(v) is not None] for r in ratios]
    kept = [(r, v) for r, v in zip(ratios, values) if v]
    if not kept:
        return _png(fig)
    xs = [r for r, _ in kept]
    ax.fill_between(xs, [min(v) for _, v in kept], [max(v) for _, v in kept], color=PALETTE[0], alpha=0.2, lw=0)
    ax.plot(xs, [sum(v) / len(v) for _, v in kept], "-o", color=PALETTE[0], lw=1.6, ms=3.5)
    if tolerance is not None and kept[0][0] == 0:
        anchor = sum(kept[0][1]) / len(kept[0][1])
        ax.axhline(anchor, color="black", ls=":", lw=1.2)
        band = tolerance * abs(anchor) if anchor != 0 else tolerance  # from 0 the verdict takes the absolute change
        limits = [anchor - band] if direction >= 0 else []
        limits += [anchor + band] if direction <= 0 else []
        bottom, top = ax.get_ylim()
        bottom, top = min(bottom, *limits), max(top, *limits)
        pad = 0.06 * (top - bottom)  # some of the red side stays in view
        bottom, top = bottom - (pad if min(limits) < anchor else 0), top + (pad if max(limits) > anchor else 0)
        for limit in limits:  # past the limit, the way collapse moves it: unsafe (shaded red)
            ax.axhline(limit, color=ALERT_RED, ls="--", lw=1)
            ax.axhspan(limit, top if limit > anchor else bottom, color=ALERT_RED, alpha=0.08, lw=0)
        ax.set_ylim(bottom, top)
    return _png(fig)


def sweep_overlay_plot(name: str, runs: list[tuple[float, RunRecord]]) -> bytes:
    """Every run's evals of an indicator against the step, one color per ratio (its seeds share it)."""
    fig, ax = _figure(name, "step")
    colors = {ratio: color for ratio, color in zip(sorted({r for r, _ in runs}), itertools.cycle(PALETTE))}
    for ratio, run in runs:
        ax.plot(*_xy(run.evals, "step", name), "-", color=colors[ratio], lw=1.1, alpha=0.85)
    return _png(fig)
