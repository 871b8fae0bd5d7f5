"""`python -m data_mixers inspect --config CONFIG [--json] [--dump FILE] [--epochs N] [--section.key value ...]`

Shows what training would see, without training: each source's size, and per epoch the planned and
realized token and example counts by kind. `--dump` writes epoch 1's exact stream as JSONL.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from data_mixers.config import load_mixer_settings, load_yaml
from data_mixers.corpus import build_corpora
from data_mixers.errors import MixerError
from data_mixers.mixer import Mixer


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run `inspect`, and turn a MixerError into one line on stderr (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m data_mixers", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="sizes, planned and realized counts per epoch")
    inspect.add_argument("--config", required=True, help="run config (YAML)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    inspect.add_argument("--dump", type=Path, help="write epoch 1's stream as JSONL (source, kind, index, n_tokens)")
    inspect.add_argument("--epochs", type=int, help="epochs to plan (default: train.epochs of the config, or 1)")
    inspect.add_argument("--debug", action="store_true", help="show tracebacks")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        report = run_inspect(Path(args.config), overrides, args.epochs, args.dump)
    except MixerError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_inspect(config_path: Path, overrides: list[str], epochs: int | None, dump: Path | None) -> dict[str, Any]:
    """Build the corpora and mixer of a config and describe sources and epochs as plain data."""
    settings = load_mixer_settings(config_path, overrides)
    if epochs is None:
        epochs = int((load_yaml(config_path).get("train") or {}).get("epochs", 1))
    corpora = build_corpora(settings.data, settings.tokenizer)
    mixer = Mixer(corpora.train, settings.data, settings.seed, epochs)
    report = {
        "config": str(config_path),
        "unit": settings.data.unit,
        "sources": [vars(r) for r in corpora.reports],
        "held_out_examples": len(corpora.held_out),
        "skipped": corpora.skipped_messages,
        "epochs": [_epoch_row(mixer, e) for e in range(1, epochs + 1)],
    }
    if dump is not None:
        report["dump"] = {"path": str(dump), "examples": write_dump(mixer, dump)}
    return report


def write_dump(mixer: Mixer, path: Path) -> int:
    """Write epoch 1's stream, one JSON line per example; returns the number of lines."""
    mixer.set_epoch(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = 0
    with path.open("w", encoding="utf-8") as out:
        for example in mixer:
            record = {"source": example.source, "kind": example.kind, "index": example.index}
            out.write(json.dumps({**record, "n_tokens": len(example.ids)}) + "\n")
            lines += 1
    return lines


def _epoch_row(mixer: Mixer, epoch: int) -> dict[str, Any]:
    summary = mixer.summary(epoch)
    ratio = summary["target_synthetic_ratio"]
    unit_key = "tokens" if mixer.data.unit == "tokens" else "examples"
    real = summary[unit_key]["real"]
    planned = real * ratio / (1 - ratio) if ratio < 1 else summary[unit_key]["synthetic"]
    summary["planned_synthetic"] = {unit_key: round(planned, 1)}
    return summary


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text tables."""
    lines = [f"config: {report['config']}  (ratio counted in {report['unit']})", "", "sources:"]
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
        planned = next(iter(e["planned_synthetic"].values()))
        lines.append(
            f"  {e['epoch']:>5}{e['target_synthetic_ratio']:>8.3f}{planned:>13,.0f}{e['tokens']['real']:>12,}"
            f"{e['tokens']['synthetic']:>12,}{e['examples']['real']:>10,}{e['examples']['synthetic']:>10,}"
            f"{e['realized_token_ratio']:>13.4f}{e['realized_example_ratio']:>15.4f}"
        )
    if report["skipped"]:
        lines += ["", f"skipped {len(report['skipped'])} malformed records (on_error: skip), first ones:"]
        lines += [f"  {msg}" for msg in report["skipped"][:5]]
    if "dump" in report:
        lines += ["", f"wrote {report['dump']['examples']:,} lines of epoch 1 to {report['dump']['path']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
