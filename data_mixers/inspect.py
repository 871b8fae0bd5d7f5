"""What training would see, without training: each source's size and where its tokens came from (the store,
or built now), and per epoch the planned and realized token and example counts by kind, the rows, their
padding efficiency and what the overflow policy removed (the numbers are the mixer's own, from the plan
training follows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthmix.data_mixers.config import DataConfig, TokenizerConfig, resolved_packing
from synthmix.data_mixers.corpus import build_corpora
from synthmix.data_mixers.mixer import Mixer
from synthmix.files import atomic_file


def inspect_mix(
    data: DataConfig,
    tokenizer: TokenizerConfig,
    seed: int,
    epochs: int,
    seq_len: int,
    dump: Path | None = None,
    rows: Path | None = None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """Build the corpora and the mixer of a (validated) config and describe sources and epochs as plain data;
    `dump` writes epoch 1's examples, `rows` its packed rows, as JSONL; `base_model` is the run's model.name
    (what `data.filters.verifier.model: base` scores with)."""
    corpora = build_corpora(data, tokenizer, base_model=base_model)
    mixer = Mixer(corpora.train, data, seed, epochs, seq_len=seq_len)
    report: dict[str, Any] = {
        "unit": data.unit,
        "packing": resolved_packing(data),
        "seq_len": seq_len,
        "sources": [vars(r) for r in corpora.reports],
        "cleaning": corpora.cleaning,
        "held_out_examples": len(corpora.held_out),
        "skipped": corpora.skipped_messages,
        "epochs": [mixer.summary(e) for e in range(1, epochs + 1)],
    }
    if dump is not None:
        report["dump"] = {"path": str(dump), "examples": write_dump(mixer, dump)}
    if rows is not None:
        report["rows_file"] = {"path": str(rows), "rows": write_rows(mixer, rows)}
    return report


def write_dump(mixer: Mixer, path: Path) -> int:
    """Write epoch 1's stream, one JSON line per example piece; returns the number of lines."""
    mixer.set_epoch(1)
    lines = 0
    with atomic_file(path) as out:
        for example in mixer:
            record = {"source": example.source, "kind": example.kind, "index": example.index}
            out.write(json.dumps({**record, "n_tokens": len(example.ids)}) + "\n")
            lines += 1
    return lines


def write_rows(mixer: Mixer, path: Path) -> int:
    """Write epoch 1's rows as one process would train on them, one JSON line per row: its pieces (source, kind,
    index in the source, start offset inside the example, tokens) and its padding; returns the rows written."""
    mixer.set_epoch(1)
    count = 0
    with atomic_file(path) as out:
        while row := mixer.next_row():
            pieces = [
                {"source": p.source, "kind": p.kind, "index": p.index, "start": p.start, "tokens": len(p.ids)}
                for p in row
            ]
            padding = mixer.seq_len - sum(piece["tokens"] for piece in pieces)
            out.write(json.dumps({"row": count, "pieces": pieces, "padding": padding}) + "\n")
            count += 1
    return count


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text tables."""
    lines = [
        f"config: {report.get('config', '?')}  (ratio counted in {report['unit']}; packing {report['packing']}, "
        f"rows of {report['seq_len']} tokens)",
        "",
        "sources:",
    ]
    cleaning = report["cleaning"]
    # The verifier's lower bound and the diversity selection have columns only when they are on.
    extra = [("too_typical", "typical")] if (cleaning.get("verifier") or {}).get("min_threshold") is not None else []
    extra += [("not_novel", "not novel"), ("near_duplicates", "near dup")] if cleaning.get("diversity") else []
    header = f"  {'name':<24}{'kind':<11}{'loaded':>9}{'held out':>10}{'dupes':>8}{'contam':>8}"
    header += f"{'filtered':>10}{'verifier':>10}" + "".join(f"{label:>10}" for _, label in extra)
    lines.append(header + f"{'examples':>10}{'tokens':>13}  store")
    for s in report["sources"]:
        lines.append(
            f"  {s['name']:<24}{s['kind']:<11}{s['loaded']:>9,}{s['held_out']:>10,}{s['duplicates']:>8,}"
            f"{s['contaminated']:>8,}{s['filtered']:>10,}{s['unverified']:>10,}"
            + "".join(f"{s.get(key, 0):>10,}" for key, _ in extra)
            + f"{s['examples']:>10,}{s['tokens']:>13,}  {s['store']} in {s['seconds']:.2f} s"
        )
    lines.append(
        f"  cleaning: {cleaning['store']} in {cleaning['seconds']:.2f} s; store entries under "
        f"{Path(cleaning['entry']).parent}"
    )
    verifier = cleaning.get("verifier")
    if verifier:
        real = (
            f"; {verifier['real_scored']:,} real examples scored, median {verifier['real_ppl_median']:.4g}"
            if verifier["real_scored"]
            else ""  # an absolute max_ppl scores no real text
        )
        low = verifier.get("min_threshold")
        bar = f"{verifier['threshold']:.4g}" if low is None else f"{low:.4g} to {verifier['threshold']:.4g}"
        lines.append(
            f"  verifier {verifier['model']}: kept {verifier['kept']:,} of {verifier['synthetic_scored']:,} synthetic "
            f"examples ({verifier['rule']}: {bar}{real}) in {verifier['seconds']:.1f} s"
        )
    diversity = cleaning.get("diversity")
    if diversity:
        named = (("min_novelty", "novelty >="), ("max_overlap", "overlap <="))
        limits = [f"{label} {diversity[key]:g}" for key, label in named if diversity[key] is not None]
        novelty = (
            f"; median novelty {diversity['novelty_median']:.3g}" if diversity["novelty_median"] is not None else ""
        )
        lines.append(
            f"  diversity ({diversity['ngram']}-grams, {', '.join(limits)}): kept {diversity['kept']:,} of "
            f"{diversity['synthetic_compared']:,} synthetic examples ({diversity['not_novel']:,} not novel, "
            f"{diversity['near_duplicates']:,} near duplicates{novelty}) in {diversity['seconds']:.1f} s"
        )
    lines += [
        "",
        f"held-out examples: {report['held_out_examples']:,}",
        "",
        "epochs:",
    ]
    lines.append(
        f"  {'epoch':>5}{'target':>8}{'planned syn':>13}{'real tok':>12}{'syn tok':>12}{'real ex':>10}"
        f"{'syn ex':>10}{'token ratio':>13}{'example ratio':>15}{'rows':>9}{'padding eff':>13}"
    )
    for e in report["epochs"]:
        lines.append(
            f"  {e['epoch']:>5}{e['target_synthetic_ratio']:>8.3f}{e['budgets']['synthetic']:>13,}"
            f"{e['tokens']['real']:>12,}{e['tokens']['synthetic']:>12,}{e['examples']['real']:>10,}"
            f"{e['examples']['synthetic']:>10,}{e['realized_token_ratio']:>13.4f}{e['realized_example_ratio']:>15.4f}"
            f"{e['rows']:>9,}{e['padding_efficiency']:>13.4f}"
        )
    overflow = report["epochs"][0]["overflow"] if report["epochs"] else {}
    if overflow:
        lines.append(
            f"  overflow ({overflow['policy']}, epoch 1): "
            + "; ".join(
                f"{kind} {overflow[kind]['examples']:,} examples longer than a row, {overflow[kind]['tokens']:,} "
                "tokens removed"
                for kind in ("real", "synthetic")
            )
        )
    if report["skipped"]:
        lines += ["", f"skipped {len(report['skipped'])} malformed records (on_error: skip), first ones:"]
        lines += [f"  {msg}" for msg in report["skipped"][:5]]
    if "dump" in report:
        lines += ["", f"wrote {report['dump']['examples']:,} lines of epoch 1 to {report['dump']['path']}"]
    if "rows_file" in report:
        lines += ["", f"wrote {report['rows_file']['rows']:,} rows of epoch 1 to {report['rows_file']['path']}"]
    return "\n".join(lines)
