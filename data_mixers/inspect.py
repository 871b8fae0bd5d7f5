"""What training would see, without training: each source's size, and per epoch the planned and realized
token and example counts by kind (the numbers are the mixer's own, from the plan training follows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_mixers.config import DataConfig, TokenizerConfig
from data_mixers.corpus import build_corpora
from data_mixers.mixer import Mixer
from synthmix.files import atomic_file


def inspect_mix(
    data: DataConfig, tokenizer: TokenizerConfig, seed: int, epochs: int, dump: Path | None = None
) -> dict[str, Any]:
    """Build the corpora and the mixer of a (validated) config and describe sources and epochs as plain data."""
    corpora = build_corpora(data, tokenizer)
    mixer = Mixer(corpora.train, data, seed, epochs)
    report: dict[str, Any] = {
        "unit": data.unit,
        "sources": [vars(r) for r in corpora.reports],
        "held_out_examples": len(corpora.held_out),
        "skipped": corpora.skipped_messages,
        "epochs": [mixer.summary(e) for e in range(1, epochs + 1)],
    }
    if dump is not None:
        report["dump"] = {"path": str(dump), "examples": write_dump(mixer, dump)}
    return report


def write_dump(mixer: Mixer, path: Path) -> int:
    """Write epoch 1's stream, one JSON line per example; returns the number of lines."""
    mixer.set_epoch(1)
    lines = 0
    with atomic_file(path) as out:
        for example in mixer:
            record = {"source": example.source, "kind": example.kind, "index": example.index}
            out.write(json.dumps({**record, "n_tokens": len(example.ids)}) + "\n")
            lines += 1
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text tables."""
    lines = [f"config: {report.get('config', '?')}  (ratio counted in {report['unit']})", "", "sources:"]
    header = f"  {'name':<24}{'kind':<11}{'loaded':>9}{'held out':>10}{'dupes':>8}{'contam':>8}"
    lines.append(header + f"{'filtered':>10}{'examples':>10}{'tokens':>12}")
    for s in report["sources"]:
        lines.append(
            f"  {s['name']:<24}{s['kind']:<11}{s['loaded']:>9,}{s['held_out']:>10,}{s['duplicates']:>8,}"
            f"{s['contaminated']:>8,}{s['filtered']:>10,}{s['examples']:>10,}{s['tokens']:>12,}"
        )
    lines += ["", f"held-out examples: {report['held_out_examples']:,}", "", "epochs:"]
    lines.append(
        f"  {'epoch':>5}{'target':>8}{'planned syn':>13}{'real tok':>12}{'syn tok':>12}"
        f"{'real ex':>10}{'syn ex':>10}{'token ratio':>13}{'example ratio':>15}"
    )
    for e in report["epochs"]:
        lines.append(
            f"  {e['epoch']:>5}{e['target_synthetic_ratio']:>8.3f}{e['budgets']['synthetic']:>13,}"
            f"{e['tokens']['real']:>12,}{e['tokens']['synthetic']:>12,}{e['examples']['real']:>10,}"
            f"{e['examples']['synthetic']:>10,}{e['realized_token_ratio']:>13.4f}{e['realized_example_ratio']:>15.4f}"
        )
    if report["skipped"]:
        lines += ["", f"skipped {len(report['skipped'])} malformed records (on_error: skip), first ones:"]
        lines += [f"  {msg}" for msg in report["skipped"][:5]]
    if "dump" in report:
        lines += ["", f"wrote {report['dump']['examples']:,} lines of epoch 1 to {report['dump']['path']}"]
    return "\n".join(lines)
