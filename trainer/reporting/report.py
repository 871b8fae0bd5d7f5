"""One self-contained HTML page (and PNG plots) per run, or comparing runs, read from run folders only.

`synthmix report RUN_DIR [RUN_DIR ...] [--out FILE]` prints the path it wrote. The page embeds every plot as a
base64 PNG, so it can be mailed or archived alone; a single-run report also leaves `plots/*.png`.
"""

from __future__ import annotations

import base64
import html
import itertools
from pathlib import Path
from typing import Any

import yaml

from synthmix.files import write_text
from synthmix.trainer.config import BENCHMARK_PREFIX, INDICATOR_DIRECTION
from synthmix.trainer.reporting.plots import ALERT_RED, PALETTE, generation_plot, indicator_plot, loss_plots, ratio_plot
from synthmix.trainer.reporting.records import ReportError, RunRecord, indicator_names, load_run, num
from synthmix.trainer.reporting.samples import read_samples, sample_files

# The sentence under each indicator's plot.
COLLAPSE_SENTENCES: dict[str, str] = {
    "real_ppl": "Rises under collapse: the model forgets the real distribution.",
    "real_ppl_p50": "Rises under collapse: the typical held-out text is modelled worse.",
    "real_ppl_p90": "Rises under collapse: the worst-modelled tenth of the real texts gets worse first.",
    "real_ppl_p99": "Rises under collapse: the rarest real texts (the tail) are forgotten first.",
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
    "sample_base_ppl_mean": "Drifts under collapse: samples grow over-typical for the base model (falls) or wander "
    "where it finds text unlikely (rises).",
    "sample_base_ppl_p90": "Drifts under collapse: the least likely tenth of the samples, by the base model.",
    "vendi_score": "Falls under collapse: the samples say fewer distinct things (effective count of distinct items).",
}
# (collapse direction, sentence): INDICATOR_DIRECTION says which way is healthy, collapse moves the other way.
COLLAPSE_DIRECTION: dict[str, tuple[int, str]] = {
    name: (-INDICATOR_DIRECTION[name], sentence) for name, sentence in COLLAPSE_SENTENCES.items()
}
UNKNOWN_DIRECTION = (0, "Not a documented collapse indicator; shown as logged.")
BENCHMARK_DIRECTION = (-1, "Falls under collapse: the model does worse on this lm-evaluation-harness task.")


def collapse_direction(name: str) -> tuple[int, str]:
    """The way collapse moves an indicator (+1 up, -1 down, 0 either) and the sentence that says so."""
    if name.startswith(BENCHMARK_PREFIX):
        return BENCHMARK_DIRECTION
    return COLLAPSE_DIRECTION.get(name, UNKNOWN_DIRECTION)


SIGNIFICANT_CHANGE = 10.0  # percent vs baseline, in the collapse direction, that the table paints red


def _fmt(value: Any) -> str:
    v = num(value)
    if v is None:
        return "—" if value is None else str(value)
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _change(value: Any, baseline: Any) -> float | None:
    v, b = num(value), num(baseline)
    return None if v is None or b is None or b == 0 else 100.0 * (v - b) / abs(b)


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
td.text{text-align:left;white-space:pre-wrap;font-family:ui-monospace,monospace;max-width:900px}
pre.prompt{white-space:pre-wrap;margin:4px 0}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _card(png: bytes, title: str, *captions: str) -> str:
    text = "".join(f"<p>{html.escape(c)}</p>" for c in captions if c)
    return f'<div class="card">{_img(png, title)}{text}</div>'


def _header(runs: list[RunRecord]) -> str:
    e = html.escape
    if len(runs) == 1:
        run = runs[0]
        done = max((int(num(x.get("epoch"), 0)) for x in run.evals), default=0)
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


def _alerts(runs: list[RunRecord]) -> str:
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


def _legend(runs: list[RunRecord]) -> str:
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


def _caption_now(run: RunRecord, name: str) -> str:
    if len(run.evals) < 2:
        return ""
    last, base = run.evals[-1], run.evals[0]
    change = _change(last.get(name), base.get(name))
    delta = f" ({change:+.1f}% vs baseline)" if change is not None else ""
    return f"{_when(last).capitalize()}: {_fmt(last.get(name))}{delta}."


def _when(row: dict) -> str:
    """'epoch 2', or 'step 40 (epoch 1)' for an eval that is not at an epoch's end."""
    if row.get("at_epoch_end", True):
        return f"epoch {_fmt(row.get('epoch'))}"
    return f"step {_fmt(row.get('step'))} (epoch {_fmt(row.get('epoch'))})"


def _eval_table(run: RunRecord, names: list[str]) -> str:
    e = html.escape
    base = run.evals[0] if run.evals else {}
    alerted = {(a.get("indicator"), num(a.get("step"))) for a in run.alerts}
    head = "".join(f"<th>{e(_when(ev))}</th>" for ev in run.evals)
    body = []
    for name in names:
        direction = collapse_direction(name)[0]
        cells = [f"<td>{e(name)}</td><td>{e(_fmt(run.reference.get(name)))}</td>"]
        for ev in run.evals:
            change = _change(ev.get(name), base.get(name)) if ev is not base else None
            bad = change is not None and direction * change >= SIGNIFICANT_CHANGE
            pct = f"<small class='{'bad' if bad else ''}'>{change:+.1f}%</small>" if change is not None else ""
            cls = " class='alert'" if (name, num(ev.get("step"))) in alerted else ""
            cells.append(f"<td{cls}>{e(_fmt(ev.get(name)))}{pct}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table><tr><th>indicator</th><th>reference</th>{head}</tr>{''.join(body)}</table></div>"
        f"<p class='meta'>Under each value: change vs baseline (epoch 0), red when it moved {SIGNIFICANT_CHANGE:.0f}% "
        "or more the way collapse moves it. A shaded cell raised an alert.</p>"
    )


def _config_block(run: RunRecord) -> str:
    shown = dict(run.config)
    sampling = next((ev["sampling"] for ev in reversed(run.evals) if isinstance(ev.get("sampling"), dict)), None)
    if sampling:
        shown = {**shown, "sampling (last eval)": sampling}
    text = yaml.safe_dump(shown, sort_keys=False, default_flow_style=False, allow_unicode=True) if shown else "—"
    summary = f"Configuration: {html.escape(run.label)}"
    return f"<details><summary>{summary}</summary><pre>{html.escape(text)}</pre></details>"


def _label_runs(runs: list[RunRecord]) -> None:
    names = [r.path.name for r in runs]
    for run in runs:
        name = run.path.name if names.count(run.path.name) == 1 else f"{run.path.parent.name}/{run.path.name}"
        ratio = run.synthetic_ratio
        run.label = name if ratio is None or len(runs) == 1 else f"{name} (synthetic_ratio={_fmt(ratio)})"


def _indicator_section(runs: list[RunRecord], names: list[str], pngs: dict[str, bytes]) -> str:
    cards = []
    for name in names:
        pngs[name] = indicator_plot(name, runs)
        now = _caption_now(runs[0], name) if len(runs) == 1 else ""
        cards.append(_card(pngs[name], name, collapse_direction(name)[1], now))
    body = f"{_legend(runs)}<div class='grid'>{''.join(cards)}</div>" if cards else "<p>No eval event logged yet.</p>"
    return "<h2>Collapse indicators per eval</h2>" + body


def _training_section(runs: list[RunRecord], pngs: dict[str, bytes]) -> str:
    cards = []
    if any(r.train for r in runs):
        losses = loss_plots(runs)
        pngs.update(losses)
        note = "Per optimizer step; grey lines mark epoch ends." if len(runs) == 1 else "Per optimizer step, per run."
        cards += [_card(png, kind, note) for kind, png in losses.items()]
    if any(num(e.get("realized_synthetic_ratio")) is not None for r in runs for e in r.epochs + r.evals):
        pngs["synthetic_ratio"] = ratio_plot(runs)
        cards.append(
            _card(pngs["synthetic_ratio"], "synthetic ratio", "Realized (solid) vs target (dashed) per epoch.")
        )
    return f"<h2>Training</h2><div class='grid wide'>{''.join(cards) or '<p>No train event logged yet.</p>'}</div>"


def _generation_section(runs: list[RunRecord], pngs: dict[str, bytes]) -> str:
    runs = [r for r in runs if r.generations]
    if not runs:
        return ""
    cards = []
    for name in indicator_names([g for r in runs for g in r.generations]):
        pngs[f"generations_{name}"] = png = generation_plot(name, runs)
        cards.append(_card(png, name, collapse_direction(name)[1]))
    return (
        "<h2>Self-consuming generations</h2><p class='meta'>Each generation trains on samples of the one before; "
        f"one line per strategy.</p><div class='grid'>{''.join(cards)}</div>"
    )


SHOWN_PROMPTS = 3
"""Prompts whose completions the report shows eval by eval."""
SHOWN_CHARS = 400


def _samples_section(run: RunRecord) -> str:
    """For the first prompts, the prompt and each eval's completion side by side: the drift, to read."""
    files = sample_files(run.path)
    if not files:
        return ""
    by_step = {step: read_samples(path)[:SHOWN_PROMPTS] for step, path in files.items()}
    e = html.escape
    clip = lambda text: e(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " …")  # noqa: E731
    blocks = []
    for k, first in enumerate(next(iter(by_step.values()))):
        rows = "".join(
            f"<tr><td>step {step}</td><td class='text'>{clip(records[k]['completion'])}</td></tr>"
            for step, records in by_step.items()
            if k < len(records)
        )
        where = f"{first.get('source', '')} #{first.get('index', '')}"
        blocks.append(
            f"<p class='meta'>Prompt {k} ({e(where)}):</p><pre class='prompt'>{clip(first['prompt'])}</pre>"
            f"<div class='scroll'><table><tr><th>eval</th><th>completion</th></tr>{rows}</table></div>"
        )
    return (
        f"<h2>Samples</h2><p class='meta'>The first {SHOWN_PROMPTS} prompts of the hook and what the model wrote at "
        f"each eval (same prompt, same seed); every sample is in <code>samples/step-N.jsonl</code>.</p>"
        + "".join(blocks)
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
    names = indicator_names([e for r in runs for e in r.evals])
    sections = [_indicator_section(runs, names, pngs), _training_section(runs, pngs), _generation_section(runs, pngs)]
    for run in runs:
        title = "Eval values per epoch" + ("" if single else f": {run.label}")
        sections.append(f"<h2>{html.escape(title)}</h2>" + (_eval_table(run, names) if run.evals else "<p>—</p>"))
    if single:
        sections.append(_samples_section(runs[0]))
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
    write_text(out, page)  # atomically: a browser refreshing during a live run never sees half a page
    return out
