"""Model cards and data cards in the Hugging Face format (a YAML header, then Markdown).

`model_card(events)` is a pure function of a run's metrics.jsonl events (the config event's sources, the epoch
events' ratios, the eval events' indicators, the alerts), so the card says exactly what the run logged.
`data_card(...)` describes a synthetic corpus written by `synthmix generate`: generator, prompts, sampling,
count and date.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml

from synthmix.trainer.config import known_indicators

CARD = "README.md"
TAGS = ["synthmix", "synthetic-data", "model-collapse-monitoring"]


def _header(fields: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump({k: v for k, v in fields.items() if v}, sort_keys=False) + "---\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return "—" if value is None else str(value)


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == kind]


def model_card(events: list[dict[str, Any]], folder_name: str = "adapter") -> str:
    """The card of a run's saved weights (`adapter`, `model` or `merged`), from the run's events."""
    (start,) = _of(events, "config")[:1] or [{}]
    config = start.get("config", {})
    model, lora = config.get("model", {}), config.get("lora", {})
    sources = start.get("sources", [])
    adapter = folder_name == "adapter"
    base = model.get("name")
    datasets = [s["hub"] for s in config.get("data", {}).get("sources", []) if s.get("hub")]
    header = _header(
        {
            "base_model": base,
            "library_name": "peft" if adapter else "transformers",
            "pipeline_tag": "text-generation",
            "tags": TAGS + (["lora"] if adapter else []),
            "datasets": datasets,  # hub dataset ids only: local sources are listed in the card's body
        }
    )
    what = (
        f"A LoRA adapter (r {lora.get('r')}, alpha {lora.get('alpha')}, on {', '.join(lora.get('target_modules', []))})"
        if adapter
        else "A causal language model"
    )
    built = base or f"a model built from `model.arch` ({model.get('arch', {}).get('model_type', '?')})"
    parts = [
        header,
        f"# {config.get('output_dir', 'synthmix run')}\n",
        f"{what} fine-tuned from {built} with synthmix on a mix of real "
        f"and synthetic text (target synthetic ratio {_fmt(config.get('data', {}).get('synthetic_ratio'))}, "
        f"counted in {config.get('data', {}).get('unit', 'tokens')}).\n",
        _sources_section(sources),
        _ratio_section(_of(events, "epoch")),
        _indicator_section(_of(events, "eval")),
        _alerts_section(_of(events, "alert")),
        _usage(base, adapter),
    ]
    return "\n".join(parts)


def _table(head: list[str], align: str, rows: list[list[Any]]) -> str:
    """A Markdown table; `align` has one letter per column: l (left) or r (right)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _sources_section(sources: list[dict[str, Any]]) -> str:
    head = [
        "source",
        "kind",
        "examples",
        "tokens",
        "held out",
        "removed (duplicates, contaminated, filtered, verifier)",
    ]
    rows = [
        [s["name"], s["kind"], f"{s.get('examples', 0):,}", f"{s.get('tokens', 0):,}", f"{s.get('held_out', 0):,}",
         ", ".join(str(s.get(k, 0)) for k in ("duplicates", "contaminated", "filtered", "unverified"))]
        for s in sources
    ]  # fmt: skip
    selection = ("too_typical", "not_novel", "near_duplicates")  # the verifier's lower bound, data.filters.diversity
    if any(s.get(k) for s in sources for k in selection):
        head.append("removed (too typical, not novel, near duplicates)")
        for row, s in zip(rows, sources, strict=True):
            row.append(", ".join(str(s.get(k, 0)) for k in selection))
    return "## Training data\n\n" + _table(head, "llrrrl" + "l" * (len(head) - 6), rows)


def _ratio_section(epochs: list[dict[str, Any]]) -> str:
    if not epochs:
        return "## Synthetic ratio per epoch\n\nNo epoch was completed.\n"
    by_epoch = {e["epoch"]: e for e in epochs}  # a resumed run may log an epoch twice: the last one counts
    rows = [
        [epoch, _fmt(e.get("target_synthetic_ratio")), _fmt(e.get("realized_synthetic_ratio")), e.get("unit", "")]
        for epoch, e in sorted(by_epoch.items())
    ]
    return "## Synthetic ratio per epoch\n\n" + _table(["epoch", "target", "realized", "unit"], "rrrl", rows)


def _indicator_section(evals: list[dict[str, Any]]) -> str:
    if not evals:
        return "## Collapse indicators\n\nThe collapse hook was off.\n"
    baseline, final = evals[0], evals[-1]
    rows = []
    for name in known_indicators(final):
        before, after = baseline.get(name), final.get(name)
        numbers = isinstance(before, (int, float)) and isinstance(after, (int, float)) and before
        rows.append(
            [name, _fmt(before), _fmt(after), f"{100 * (after - before) / abs(before):+.1f}%" if numbers else "—"]
        )
    intro = (
        f"Measured by the collapse hook at step 0 (the baseline) and at step {final.get('step')} (the last eval).\n\n"
    )
    return "## Collapse indicators\n\n" + intro + _table(["indicator", "baseline", "final", "change"], "lrrr", rows)


def _alerts_section(alerts: list[dict[str, Any]]) -> str:
    if not alerts:
        return "## Alerts\n\nNo collapse rule fired.\n"
    items = [f"- step {a.get('step')}, {a.get('action')}: {a.get('message')}" for a in alerts]
    return "## Alerts\n\n" + "\n".join(items) + "\n"


def _usage(base: str | None, adapter: bool) -> str:
    if adapter:
        code = (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE_MODEL"}")\n'
            'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")\n'
        )
    else:
        code = 'from transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained("PATH")\n'
    return f"## How to load\n\n```python\n{code}```\n"


def data_card_path(corpus: Path) -> Path:
    """Where a corpus file's card goes: synthetic.jsonl -> synthetic.card.md, beside it."""
    return corpus.with_name(corpus.stem + ".card.md")


def data_card(
    count: int, generator: str, prompt_file: str, prompt_tokens: int, sampling: dict[str, Any], corpus_name: str,
    *, backend: str = "hf", prompt_unit: str = "tokens", usage: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """The data card of a synthetic corpus written by `synthmix generate`. `backend` is hf (sampled in-process)
    or openai (a served model); `prompt_unit` what `prompt_tokens` counts (tokens or words), or `conversation`
    for chats prompted up to their last user turn; `usage` the served backend's totals (lines, tokens)."""
    header = _header(
        {
            "tags": ["synthetic", "synthmix"],
            "task_categories": ["text-generation"],
            "size_categories": [_size_category(count)],
        }
    )
    settings = "\n".join(f"| {k} | {v} |" for k, v in sampling.items())
    if prompt_unit == "conversation":
        what = f"{count:,} chats, each a conversation from a real chat up to its last user turn and the model's reply"
        prompts = f"{prompt_file} (conversations drawn by a seeded shuffle, cut after their last user turn)"
    else:
        what = f"{count:,} texts, each a prompt of {prompt_tokens} {prompt_unit} from a real text and the model's "
        what += "continuation"
        prompts = f"{prompt_file} (the first {prompt_tokens} {prompt_unit} of texts drawn by a seeded shuffle)"
    totals = ""
    if usage:
        rows = "\n".join(f"| {k.replace('_', ' ')} | {_fmt_total(v)} |" for k, v in usage.items())
        totals = f"## Totals\n\n| total | value |\n|---|---|\n{rows}\n\n"
    return (
        f"{header}\n# {corpus_name}\n\nA synthetic corpus: {what}, sampled by `synthmix generate` on "
        f"{datetime.date.today().isoformat()}. Every line of the JSONL file repeats its provenance (generator, "
        f"prompt file and index, sampling settings).\n\n"
        f"- **generator**: {generator}\n- **backend**: {backend}\n- **prompts**: {prompts}\n- **count**: {count:,}\n\n"
        f"## Sampling\n\n| setting | value |\n|---|---|\n{settings}\n\n{totals}"
        "Use it as a `kind: synthetic` source of a synthmix config; it is model-generated text, "
        "not human-written.\n"
    )


def _fmt_total(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return name
    return "n>1M"
