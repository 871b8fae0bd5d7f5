"""One self-contained HTML page (and PNG plots) per run, or comparing runs, read from run folders only.

`python -m trainer.report RUN_DIR [RUN_DIR ...] [--out FILE]` prints the path it wrote. The page embeds every
plot as a base64 PNG, so it can be mailed or archived alone; a single-run report also leaves `plots/*.png`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import itertools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from trainer.errors import TrainerError
from trainer.indicators import INDICATOR_DIRECTION

# The sentence under each indicator's plot.
COLLAPSE_SENTENCES: dict[str, str] = {
    "real_ppl": "Rises under collapse: the model forgets the real distribution.",
    "distinct_1": "Falls under collapse: fewer different tokens in the samples.",
    "distinct_2": "Falls under collapse: samples reuse the same token pairs.",
    "distinct_3": "Falls under collapse: samples reuse the same phrases.",
    "unigram_entropy": "Falls under collapse: the token distribution narrows.",
    "self_bleu": "Rises under collapse: samples look more like one another.",
    "repetition_rate": "Rises under collapse: samples repeat themselves.",
    "mean_length": "Drifts under collapse (shorter or run-on samples); watch for any trend.",
    "std_length": "Falls under collapse: sample lengths become uniform.",
    "tail_mass": "Falls under collapse: the rare tokens of the real text disappear first.",
    "js_divergence": "Rises under collapse: samples drift away from the real token distribution.",
    "compression_ratio": "Falls under collapse: repetitive samples compress better (compressed / raw size shrinks).",
    "next_token_entropy": "Falls under collapse: the model grows over-confident.",
}
# (collapse direction, sentence): INDICATOR_DIRECTION says which way is healthy, collapse moves the other way.
COLLAPSE_DIRECTION: dict[str, tuple[int, str]] = {
    name: (-INDICATOR_DIRECTION[name], sentence) for name, sentence in COLLAPSE_SENTENCES.items()
}
UNKNOWN_DIRECTION = (0, "Not a documented collapse indicator; shown as logged.")
NOT_INDICATORS = {
    "event",
    "time",
    "step",
    "epoch",
    "generation",
    "seed",
    "real_fraction",
    "seconds",
    "realized_synthetic_ratio",
    "target_synthetic_ratio",
}
# tab10 without its red, which marks alerts.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
ALERT_RED = "#d62728"
SIGNIFICANT_CHANGE = 10.0  # percent vs baseline, in the collapse direction, that the table paints red
DPI = 90


class ReportError(TrainerError):
    """A run folder the report cannot read, phrased for the user (file and line)."""


@dataclasses.dataclass
class Run:
    """Everything the report uses from one run folder."""

    path: Path
    label: str = ""
    config: dict = dataclasses.field(default_factory=dict)
    train: list[dict] = dataclasses.field(default_factory=list)
    evals: list[dict] = dataclasses.field(default_factory=list)
    reference: dict = dataclasses.field(default_factory=dict)
    alerts: list[dict] = dataclasses.field(default_factory=list)
    epochs: list[dict] = dataclasses.field(default_factory=list)
    end: dict | None = None
    generations: list[dict] = dataclasses.field(default_factory=list)

    @property
    def synthetic_ratio(self) -> Any:
        """The configured `data.synthetic_ratio`, else the last logged target, else None."""
        data = self.config.get("data")
        if isinstance(data, dict) and data.get("synthetic_ratio") is not None:
            return data["synthetic_ratio"]
        targets = [e.get("target_synthetic_ratio") for e in self.epochs + self.evals]
        return next((t for t in reversed(targets) if t is not None), None)

    @property
    def status(self) -> str:
        """`end` event's status, else the stop alert that ended the run, else incomplete."""
        stop = next((a for a in self.alerts if a.get("action") == "stop"), None)
        if self.end is not None and self.end.get("status"):
            return str(self.end["status"]) + (f" ({self.end['reason']})" if self.end.get("reason") else "")
        if stop is not None:
            return f"stopped by alert at epoch {stop.get('epoch', '?')} ({stop.get('indicator', '?')})"
        if self.end is not None:
            return "finished"
        return "incomplete: no end event (still running or interrupted)"


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ReportError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ReportError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def load_run(run_dir: Path) -> Run:
    """Read `metrics.jsonl` (and `generations.jsonl` if present) of one run folder; unknown events are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run folder not found")
    run = Run(path=run_dir)
    if not (run_dir / "metrics.jsonl").exists() and (run_dir / "generations.jsonl").is_file():
        run.generations = _read_jsonl(run_dir / "generations.jsonl")  # a self-consuming experiment's folder
        return run
    events = _read_jsonl(run_dir / "metrics.jsonl")
    if not events:
        raise ReportError(f"{run_dir / 'metrics.jsonl'}: no events")
    for row in events:
        kind = row.get("event")
        if kind == "config" and isinstance(row.get("config"), dict):
            run.config = row["config"]
        elif kind == "train":
            run.train.append(row)
        elif kind == "eval":
            run.evals.append(row)
        elif kind == "reference":
            run.reference = row
        elif kind == "alert":
            run.alerts.append(row)
        elif kind == "epoch":
            run.epochs.append(row)
        elif kind == "end":
            run.end = row
    # A resumed run may log an epoch twice: the last record wins. An eval without an epoch cannot be placed.
    by_epoch = {_num(e.get("epoch")): e for e in run.evals if _num(e.get("epoch")) is not None}
    run.evals = [by_epoch[k] for k in sorted(by_epoch)]
    if (run_dir / "generations.jsonl").is_file():
        run.generations = _read_jsonl(run_dir / "generations.jsonl")
    return run


def _num(value: Any, default: Any = None) -> Any:
    """A finite int/float as float, else `default` (bools, strings, None and NaN are not values)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _indicators(rows: list[dict]) -> list[str]:
    """Known indicators in their documented order, then any other numeric field the rows carry."""
    present = {k for r in rows for k, v in r.items() if k not in NOT_INDICATORS and _num(v) is not None}
    known = [k for k in COLLAPSE_DIRECTION if k in present]
    return known + sorted(present - set(known))


def _fmt(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "—" if value is None else str(value)
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _change(value: Any, baseline: Any) -> float | None:
    v, b = _num(value), _num(baseline)
    return None if v is None or b is None or b == 0 else 100.0 * (v - b) / abs(b)


# ---------------------------------------------------------------- plots
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
    pairs = [(_num(r.get(xkey)), _num(r.get(ykey))) for r in rows]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _indicator_plot(name: str, runs: list[Run]) -> bytes:
    fig, ax = _figure(name, "epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for run, color in zip(runs, itertools.cycle(PALETTE)):
        xs, ys = _xy(run.evals, "epoch", name)
        ax.plot(xs, ys, "-o", color=color, lw=1.6, ms=3.5)
        baseline = next((y for x, y in zip(xs, ys) if x == 0), None)
        if baseline is not None:
            ax.axhline(baseline, color=color, ls="--", lw=1, alpha=0.7)
        alerts = [(_num(a.get("epoch")), _num(a.get("value"))) for a in run.alerts if a.get("indicator") == name]
        alerts = [(x, y) for x, y in alerts if x is not None and y is not None]
        if alerts:
            ax.plot(*zip(*alerts), "x", color=ALERT_RED, ms=9, mew=2.2, zorder=5, clip_on=False)
    reference = _num(runs[0].reference.get(name))
    if reference is not None:
        ax.axhline(reference, color="black", ls=":", lw=1.4)
    return _png(fig)


def _loss_plots(runs: list[Run]) -> dict[str, bytes]:
    kinds = ["loss", "loss_real", "loss_synthetic"]
    if len(runs) == 1:
        fig, ax = _figure("training loss by kind", "step", wide=True)
        for kind, color in zip(kinds, ["#333333", PALETTE[2], PALETTE[1]]):
            ax.plot(*_xy(runs[0].train, "step", kind), color=color, lw=1.1, label=kind)
        for epoch in runs[0].epochs:
            if _num(epoch.get("step")) is not None:
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


def _ratio_plot(runs: list[Run]) -> bytes:
    fig, ax = _figure("synthetic share of training tokens", "epoch", wide=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for run, color in zip(runs, itertools.cycle(PALETTE)):
        rows = run.epochs or [e for e in run.evals if _num(e.get("epoch"), 0) > 0]
        tx, ty = _xy(rows, "epoch", "target_synthetic_ratio")
        ax.plot(*_xy(rows, "epoch", "realized_synthetic_ratio"), "-o", color=color, lw=1.6, ms=3.5, label="realized")
        ax.plot(tx, ty, "--", color=color, lw=1.2, label="target")
        if len(runs) == 1 and tx:
            ax.fill_between(tx, [t - 0.01 for t in ty], [t + 0.01 for t in ty], color=color, alpha=0.12, label="±1 pp")
    if len(runs) == 1:
        ax.legend(fontsize=7)
    return _png(fig)


def _generation_plot(name: str, runs: list[Run]) -> bytes:
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


# ---------------------------------------------------------------- HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:24px 32px;background:#fafafa}
h1{font-size:22px;margin:0 0 6px} h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #ddd}
.meta{color:#444} .meta b{color:#111}
.alerts{border:2px solid #d62728;background:#fdecea;border-radius:6px;padding:10px 16px;margin:16px 0}
.alerts.none{border-color:#9ccc9c;background:#eef7ee} .alerts h2{border:0;margin:0 0 4px;font-size:16px}
.alerts ul{margin:4px 0;padding-left:20px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(520px,1fr))}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;text-align:center}
.card img{max-width:100%} .card p{margin:2px 6px;font-size:12.5px;color:#444;text-align:left}
.legend span{margin-right:18px;white-space:nowrap} .swatch{display:inline-block;width:26px;height:0;
vertical-align:middle;margin-right:6px;border-top:2px solid}
table{border-collapse:collapse;background:#fff;font-size:12.5px} th,td{border:1px solid #ddd;padding:3px 8px}
th{background:#f0f0f0} td{text-align:right;font-variant-numeric:tabular-nums} td:first-child{text-align:left}
td small{display:block;color:#777} td small.bad{color:#d62728} td.alert{background:#fdecea}
.scroll{overflow-x:auto} details{margin:10px 0} pre{background:#fff;border:1px solid #ddd;padding:10px}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _card(png: bytes, title: str, *captions: str) -> str:
    text = "".join(f"<p>{html.escape(c)}</p>" for c in captions if c)
    return f'<div class="card">{_img(png, title)}{text}</div>'


def _header(runs: list[Run]) -> str:
    e = html.escape
    if len(runs) == 1:
        run = runs[0]
        done = max((int(_num(x.get("epoch"), 0)) for x in run.evals), default=0)
        return (
            f"<h1>synthmix report: {e(run.path.name)}</h1><p class='meta'><b>Status:</b> {e(run.status)} · "
            f"<b>target synthetic ratio:</b> {e(_fmt(run.synthetic_ratio))} · <b>epochs evaluated:</b> {done} · "
            f"<b>folder:</b> {e(str(run.path))}</p>"
        )
    rows = "".join(
        f"<tr><td><span class='swatch' style='border-color:{c}'></span>{e(r.path.name)}</td>"
        f"<td>{e(_fmt(r.synthetic_ratio))}</td><td>{e(r.status)}</td><td>{len(r.alerts)}</td></tr>"
        for r, c in zip(runs, itertools.cycle(PALETTE))
    )
    return (
        f"<h1>synthmix comparison: {e(', '.join(r.path.name for r in runs))}</h1><table><tr><th>run</th>"
        f"<th>target synthetic ratio</th><th>status</th><th>alerts</th></tr>{rows}</table>"
    )


def _alerts(runs: list[Run]) -> str:
    items = [
        f"<li>{html.escape(f'{run.label}: ' if len(runs) > 1 else '')}epoch {html.escape(_fmt(a.get('epoch')))}, "
        f"<b>{html.escape(str(a.get('action', 'warn')))}</b>: "
        f"{html.escape(str(a.get('message') or a.get('rule') or a.get('indicator', '')))}</li>"
        for run in runs
        for a in run.alerts
    ]
    if not items:
        return "<div class='alerts none'><h2>Alerts</h2>No alerts</div>"
    return f"<div class='alerts'><h2>Alerts ({len(items)})</h2><ul>{''.join(items)}</ul></div>"


def _legend(runs: list[Run]) -> str:
    def item(color: str, style: str, text: str) -> str:
        swatch = f"<span class='swatch' style='border-top-style:{style};border-color:{color}'></span>"
        return f"<span>{swatch}{html.escape(text)}</span>"

    single = len(runs) == 1
    lines = (
        [(PALETTE[0], "value per epoch")] if single else list(zip(itertools.cycle(PALETTE), (r.label for r in runs)))
    )
    return (
        "<p class='legend'>"
        + "".join(item(color, "solid", text) for color, text in lines)
        + item(PALETTE[0] if single else "#777", "dashed", "baseline (epoch 0, before any update)")
        + item("#000", "dotted", "reference: the held-out real text's own value")
        + f"<span style='color:{ALERT_RED}'><b>✕</b> alert</span></p>"
    )


def _caption_now(run: Run, name: str) -> str:
    if len(run.evals) < 2:
        return ""
    last, base = run.evals[-1], run.evals[0]
    change = _change(last.get(name), base.get(name))
    delta = f" ({change:+.1f}% vs baseline)" if change is not None else ""
    return f"Epoch {_fmt(last.get('epoch'))}: {_fmt(last.get(name))}{delta}."


def _eval_table(run: Run, names: list[str]) -> str:
    e = html.escape
    base = run.evals[0] if run.evals else {}
    alerted = {(a.get("indicator"), _num(a.get("epoch"))) for a in run.alerts}
    head = "".join(f"<th>epoch {e(_fmt(ev.get('epoch')))}</th>" for ev in run.evals)
    body = []
    for name in names:
        direction = COLLAPSE_DIRECTION.get(name, UNKNOWN_DIRECTION)[0]
        cells = [f"<td>{e(name)}</td><td>{e(_fmt(run.reference.get(name)))}</td>"]
        for ev in run.evals:
            change = _change(ev.get(name), base.get(name)) if ev is not base else None
            bad = change is not None and direction * change >= SIGNIFICANT_CHANGE
            pct = f"<small class='{'bad' if bad else ''}'>{change:+.1f}%</small>" if change is not None else ""
            cls = " class='alert'" if (name, _num(ev.get("epoch"))) in alerted else ""
            cells.append(f"<td{cls}>{e(_fmt(ev.get(name)))}{pct}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table><tr><th>indicator</th><th>reference</th>{head}</tr>{''.join(body)}</table></div>"
        f"<p class='meta'>Under each value: change vs baseline (epoch 0), red when it moved {SIGNIFICANT_CHANGE:.0f}% "
        "or more the way collapse moves it. A shaded cell raised an alert.</p>"
    )


def _config_block(run: Run) -> str:
    shown = dict(run.config)
    sampling = next((ev["sampling"] for ev in reversed(run.evals) if isinstance(ev.get("sampling"), dict)), None)
    if sampling:
        shown = {**shown, "sampling (last eval)": sampling}
    text = yaml.safe_dump(shown, sort_keys=False, default_flow_style=False, allow_unicode=True) if shown else "—"
    summary = f"Configuration: {html.escape(run.label)}"
    return f"<details><summary>{summary}</summary><pre>{html.escape(text)}</pre></details>"


def _label_runs(runs: list[Run]) -> None:
    names = [r.path.name for r in runs]
    for run in runs:
        name = run.path.name if names.count(run.path.name) == 1 else f"{run.path.parent.name}/{run.path.name}"
        ratio = run.synthetic_ratio
        run.label = name if ratio is None or len(runs) == 1 else f"{name} (synthetic_ratio={_fmt(ratio)})"


def _indicator_section(runs: list[Run], names: list[str], pngs: dict[str, bytes]) -> str:
    cards = []
    for name in names:
        pngs[name] = _indicator_plot(name, runs)
        now = _caption_now(runs[0], name) if len(runs) == 1 else ""
        cards.append(_card(pngs[name], name, COLLAPSE_DIRECTION.get(name, UNKNOWN_DIRECTION)[1], now))
    body = f"{_legend(runs)}<div class='grid'>{''.join(cards)}</div>" if cards else "<p>No eval event logged yet.</p>"
    return "<h2>Collapse indicators per epoch</h2>" + body


def _training_section(runs: list[Run], pngs: dict[str, bytes]) -> str:
    cards = []
    if any(r.train for r in runs):
        losses = _loss_plots(runs)
        pngs.update(losses)
        note = "Per optimizer step; grey lines mark epoch ends." if len(runs) == 1 else "Per optimizer step, per run."
        cards += [_card(png, kind, note) for kind, png in losses.items()]
    if any(_num(e.get("realized_synthetic_ratio")) is not None for r in runs for e in r.epochs + r.evals):
        pngs["synthetic_ratio"] = _ratio_plot(runs)
        cards.append(
            _card(pngs["synthetic_ratio"], "synthetic ratio", "Realized (solid) vs target (dashed) per epoch.")
        )
    return f"<h2>Training</h2><div class='grid wide'>{''.join(cards) or '<p>No train event logged yet.</p>'}</div>"


def _generation_section(runs: list[Run], pngs: dict[str, bytes]) -> str:
    runs = [r for r in runs if r.generations]
    if not runs:
        return ""
    cards = []
    for name in _indicators([g for r in runs for g in r.generations]):
        pngs[f"generations_{name}"] = png = _generation_plot(name, runs)
        cards.append(_card(png, name, COLLAPSE_DIRECTION.get(name, UNKNOWN_DIRECTION)[1]))
    return (
        "<h2>Self-consuming generations</h2><p class='meta'>Each generation trains on samples of the one before; "
        f"one line per strategy.</p><div class='grid'>{''.join(cards)}</div>"
    )


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write one self-contained HTML page for one run (plus `plots/*.png`) or comparing several; return its path."""
    if not run_dirs:
        raise ReportError("no run folder given")
    runs = [load_run(Path(d)) for d in run_dirs]
    _label_runs(runs)
    single = len(runs) == 1
    out = Path(out) if out else runs[0].path / ("report.html" if single else "compare.html")
    pngs: dict[str, bytes] = {}
    names = _indicators([e for r in runs for e in r.evals])
    sections = [_indicator_section(runs, names, pngs), _training_section(runs, pngs), _generation_section(runs, pngs)]
    for run in runs:
        title = "Eval values per epoch" + ("" if single else f": {run.label}")
        sections.append(f"<h2>{html.escape(title)}</h2>" + (_eval_table(run, names) if run.evals else "<p>—</p>"))
    sections.append("<h2>Configuration</h2>" + "".join(_config_block(r) for r in runs))
    title = html.escape("synthmix: " + ", ".join(r.path.name for r in runs))
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
        f"</head><body>{_header(runs)}{_alerts(runs)}{''.join(sections)}</body></html>\n"
    )
    if single:
        plots = runs[0].path / "plots"
        plots.mkdir(exist_ok=True)
        for name, png in pngs.items():
            (plots / f"{name}.png").write_bytes(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written aside then renamed, so a browser refreshing during a live run never sees half a page.
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: write the report of one run, or a comparison of several, and print its path."""
    parser = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folder(s) with metrics.jsonl")
    parser.add_argument("--out", type=Path, help="HTML file to write (default RUN_DIR/report.html or compare.html)")
    parser.add_argument("--debug", action="store_true", help="show the traceback on error")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dirs, args.out))
    except (ReportError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
