"""The sweep's page: the verdict, each indicator's final value against the synthetic ratio (mean and min-max
over seeds, the tolerated region shaded), the per-ratio table, and every run's evals overlaid against the step."""

from __future__ import annotations

import html
import itertools
from pathlib import Path
from typing import Any

from synthmix.files import write_text
from synthmix.trainer.config import indicator_direction, known_indicators
from synthmix.trainer.reporting.plots import PALETTE, sweep_overlay_plot, sweep_ratio_plot
from synthmix.trainer.reporting.records import load_run, num
from synthmix.trainer.reporting.report import CSS, _card, _fmt, collapse_direction

PAGE_FILE = "sweep.html"


def write_sweep_page(run_dir: Path, rows: list[dict[str, Any]], result: dict[str, Any], runs: list[Path]) -> Path:
    """RUN_DIR/sweep.html, self-contained (plots embedded as PNG); the against-the-ratio plots also go to
    RUN_DIR/plots/ratio_<indicator>.png."""
    tolerances = result["tolerances"]
    names = [n for n in known_indicators(k for r in rows for k in r) if any(num(r.get(n)) is not None for r in rows)]
    names = [n for n in tolerances if n in names] + [n for n in names if n not in tolerances]
    ratios = sorted({r["ratio"] for r in rows})
    cards = []
    (run_dir / "plots").mkdir(exist_ok=True)
    for name in names:
        by_ratio = {ratio: [r.get(name) for r in rows if r["ratio"] == ratio] for ratio in ratios}
        png = sweep_ratio_plot(name, by_ratio, tolerances.get(name), indicator_direction(name))
        (run_dir / "plots" / f"ratio_{name}.png").write_bytes(png)
        note = f"tolerance {tolerances[name]:.0%} (past the red line: unsafe)" if name in tolerances else ""
        cards.append(_card(png, name, collapse_direction(name)[1], note))
    records = [(row["ratio"], load_run(Path(row["run"]))) for row in rows]
    overlays = [_card(sweep_overlay_plot(name, records), name) for name in names]
    e = html.escape
    legend = "".join(
        f"<span><span class='swatch' style='border-color:{c}'></span>ratio {e(_fmt(r))}</span>"
        for r, c in zip(ratios, itertools.cycle(PALETTE))
    )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>synthmix sweep: {e(run_dir.name)}</title>"
        f"<style>{CSS}</style></head><body><h1>synthmix sweep: {e(str(run_dir))}</h1>"
        f"<p class='meta'><b>runs:</b> {len(rows)} · <b>ratios:</b> {e(', '.join(_fmt(r) for r in ratios))} · "
        f"<b>seeds:</b> {e(', '.join(str(s) for s in result['seeds']))} · <b>steps per run:</b> {result['steps']}</p>"
        f"{_verdict_box(result)}<h2>Final value against the synthetic ratio</h2>"
        "<p class='meta'>Line: mean over seeds; band: min-max over seeds; dotted: the ratio-0 mean; red: past "
        f"the tolerance, the way collapse moves the indicator.</p><div class='grid'>{''.join(cards)}</div>"
        f"<h2>Per ratio (mean over seeds, change vs ratio 0)</h2>{_table(rows, names, ratios)}"
        f"<h2>Every run's evals against the step</h2><p class='legend'>{legend}</p>"
        f"<div class='grid'>{''.join(overlays)}</div></body></html>\n"
    )
    out = run_dir / PAGE_FILE
    write_text(out, page)
    return out


def _verdict_box(result: dict[str, Any]) -> str:
    unsafe = result["safe_ratio"] is None
    tolerances = ", ".join(f"{name} {value:.0%}" for name, value in result["tolerances"].items())
    return (
        f"<div class='alerts{'' if unsafe or result['limited_by'] else ' none'}'><h2>Verdict</h2>"
        f"<b>{html.escape(result['message'])}</b><br><small>tolerances vs ratio 0: {html.escape(tolerances)}</small>"
        "</div>"
    )


def _table(rows: list[dict[str, Any]], names: list[str], ratios: list[float]) -> str:
    e = html.escape
    head = "".join(f"<th>ratio {e(_fmt(r))}</th>" for r in ratios)
    body = []
    for name in names:
        means = []
        for ratio in ratios:
            values = [num(r.get(name)) for r in rows if r["ratio"] == ratio]
            values = [v for v in values if v is not None]
            means.append(sum(values) / len(values) if values else None)
        cells = [f"<td>{e(name)}</td>"]
        for mean in means:
            moved = None if mean is None or not means[0] else 100 * (mean - means[0]) / abs(means[0])
            change = "" if moved is None else f"<small>{moved:+.1f}%</small>"
            cells.append(f"<td>{e(_fmt(mean))}{change}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table><tr><th>indicator</th>{head}</tr>{''.join(body)}</table></div>"
