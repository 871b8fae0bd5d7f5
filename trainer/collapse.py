"""The collapse eval hook: indicators at step 0 and every epoch end, compared with the baseline and with the
real text itself, and rules that warn, stop the run, or lower the synthetic ratio.

Inputs are fixed for the whole run (the same held-out texts, the same prompts, the same sampling seed), so a
change in an indicator is a change in the model. The hook runs on the main process; sampling happens under a
forked RNG and the model is put back in its train/eval modes, so resumed runs stay bit-identical.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch

from trainer.errors import TrainerError
from trainer.generation import SamplingConfig, choose_prompts, sample_continuations
from trainer.indicators import (
    INDICATOR_DIRECTION,
    next_token_entropy,
    perplexity,
    rare_tokens,
    sample_indicators,
    self_bleu,
)

# Measured on held-out text, not on samples: the real text has no value of its own to compare them with.
HELD_OUT_INDICATORS = ("real_ppl", "next_token_entropy")


@dataclasses.dataclass
class AlertRule:
    """Raise an alert when an indicator moves too far from the baseline (or from the real text's value)."""

    indicator: str
    """An indicator name, e.g. distinct_2, real_ppl, tail_mass."""
    direction: Literal["down", "up"]
    """Which move is a warning sign."""
    threshold: float
    """Relative change that triggers, e.g. 0.2 for 20% (an absolute change when the compared value is 0)."""
    against: Literal["baseline", "reference"] = "baseline"
    """Compare with the step-0 baseline, or with the held-out real text's own value (sample indicators only)."""
    action: Literal["warn", "stop", "reduce_ratio"] = "warn"
    """warn: log and print; stop: checkpoint and end the run; reduce_ratio: scale the synthetic ratio down."""


def _default_rules() -> list[AlertRule]:
    return [AlertRule("distinct_2", "down", 0.2), AlertRule("real_ppl", "up", 0.1)]


@dataclasses.dataclass
class CollapseConfig:
    """The eval hook's inputs, sampling settings and alert rules."""

    enabled: bool = True
    """Run the hook at step 0 and at the end of every epoch (needs held-out real text)."""
    num_prompts: int = 64
    """Fixed prompts, taken from the held-out real text, that the model continues each time."""
    prompt_tokens: int = 16
    """Tokens of held-out text in each prompt."""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """How samples are drawn; plain ancestral sampling at temperature 1 by default (truncation hides collapse)."""
    max_eval_texts: int = 256
    """Held-out texts scored for real_ppl and next_token_entropy."""
    eval_seq_len: int = 256
    """Tokens of each held-out text scored."""
    eval_batch_size: int = 16
    """Held-out texts per forward pass."""
    tail_share: float = 0.1
    """The rare tail: the least frequent real tokens that make up this share of the held-out token mass."""
    self_bleu_samples: int = 64
    """Samples scored as hypotheses in self_bleu (each against all others), chosen with the sampling seed."""
    rules: list[AlertRule] = dataclasses.field(default_factory=_default_rules)
    """Alert rules, checked at every epoch end."""
    reduce_factor: float = 0.5
    """reduce_ratio multiplies the synthetic ratio of the following epochs by this."""
    report: bool = True
    """Rewrite OUTPUT_DIR/report.html after every eval."""


def validate_collapse(config: CollapseConfig) -> None:
    """Rules name known indicators; counts and factors are in range."""
    from data_mixers.errors import ConfigError

    for i, rule in enumerate(config.rules):
        if rule.indicator not in INDICATOR_DIRECTION:
            known = ", ".join(sorted(INDICATOR_DIRECTION))
            raise ConfigError(f"collapse.rules[{i}].indicator: unknown {rule.indicator!r} (known: {known})")
        if rule.threshold <= 0:
            raise ConfigError(f"collapse.rules[{i}].threshold: must be > 0, got {rule.threshold}")
        if rule.against == "reference" and rule.indicator in HELD_OUT_INDICATORS:
            raise ConfigError(
                f"collapse.rules[{i}].against: {rule.indicator} is measured on the held-out text itself, so it "
                "has no reference value; use against: baseline"
            )
    if not 0 < config.reduce_factor < 1:
        raise ConfigError(f"collapse.reduce_factor: must be in (0, 1), got {config.reduce_factor}")
    if not 0 < config.tail_share <= 1:
        raise ConfigError(f"collapse.tail_share: must be in (0, 1], got {config.tail_share}")
    counts = ("num_prompts", "prompt_tokens", "max_eval_texts", "eval_seq_len", "eval_batch_size", "self_bleu_samples")
    for key in counts:
        if getattr(config, key) < 1:
            raise ConfigError(f"collapse.{key}: must be at least 1, got {getattr(config, key)}")


class CollapseMonitor:
    """Fixed eval inputs, the reference values of the real text, and the baseline once measured."""

    def __init__(self, config: CollapseConfig, tokenizer: Any, held_out: list[str]) -> None:
        if not held_out:
            raise TrainerError(
                "the collapse hook needs held-out real text: set data.held_out.fraction or "
                "data.held_out.sources (or collapse.enabled: false)"
            )
        self.config = config
        self.tokenizer = tokenizer
        texts = held_out[: config.max_eval_texts]
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=config.eval_seq_len)
        self.eval_ids = [ids for ids in encoded["input_ids"] if len(ids) >= 2]
        chosen = choose_prompts(tokenizer, held_out, config.num_prompts, config.prompt_tokens, config.sampling.seed)
        self.prompts = [ids for _, ids in chosen]
        real_tokens = [t for ids in tokenizer(held_out, add_special_tokens=False)["input_ids"] for t in ids]
        self.real_tokens = real_tokens
        self.rare = rare_tokens(real_tokens, config.tail_share)
        self.baseline: dict[str, float] | None = None
        self.reference = self._reference(held_out, chosen)

    def _reference(self, held_out: list[str], chosen: list[tuple[int, list[int]]]) -> dict[str, float]:
        """The sample indicators of the real text itself: what follows each prompt, as long as a sample."""
        start, length = self.config.prompt_tokens, self.config.sampling.max_new_tokens
        continuations = []
        for index in dict.fromkeys(index for index, _ in chosen):  # a text reused as a prompt counts once
            ids = self.tokenizer(held_out[index], add_special_tokens=False)["input_ids"]
            continuations.append(ids[start : start + length])
        return self._indicators(continuations)

    def _indicators(self, samples: list[list[int]]) -> dict[str, float]:
        texts = self.tokenizer.batch_decode(samples, skip_special_tokens=True)
        values = sample_indicators(samples, texts, self.rare, self.real_tokens)
        # sample_indicators scores self_bleu on at most 64 hypotheses drawn with seed 0; where the configured
        # count and seed could draw another subset, the configured ones win.
        count, seed = self.config.self_bleu_samples, self.config.sampling.seed
        if len(samples) > min(count, 64) and (count, seed) != (64, 0):
            values["self_bleu"] = self_bleu(samples, count, seed)
        return {k: float(v) for k, v in values.items()}

    @torch.no_grad()
    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Every indicator for `model`: held-out perplexity and entropy, then the samples' indicators."""
        was_training = model.training
        model.eval()
        try:
            scores = self._score_held_out(model)
        finally:
            model.train(was_training)
        samples = sample_continuations(model, self.tokenizer, self.prompts, self.config.sampling)
        return {**scores, **self._indicators(samples)}

    def _score_held_out(self, model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        nll_sum, tokens, entropy_sum = 0.0, 0, 0.0
        pad = self.tokenizer.pad_token_id or 0
        size = self.config.eval_batch_size
        for start in range(0, len(self.eval_ids), size):
            rows = self.eval_ids[start : start + size]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            targets = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            count = int(targets.sum())
            nll_sum += float(nll[targets].sum())
            entropy_sum += next_token_entropy(logits[:, :-1], targets) * count
            tokens += count
        return {"real_ppl": perplexity(nll_sum, tokens), "next_token_entropy": entropy_sum / max(tokens, 1)}

    def alerts(self, values: dict[str, float], step: int, epoch: int) -> list[dict[str, Any]]:
        """The rules that `values` break, as `alert` event fields.

        The change is relative to the anchor (baseline or reference); from an anchor of 0 it is the absolute
        change, so that a rule such as `repetition_rate up 0.2` still fires for a model that started at 0.
        An infinite value (real_ppl overflowing) is an infinite rise; a NaN value breaks no rule.
        """
        fired = []
        for rule in self.config.rules:
            anchor = (self.baseline or {}) if rule.against == "baseline" else self.reference
            base, value = anchor.get(rule.indicator), values.get(rule.indicator)
            if base is None or value is None or not np.isfinite(base) or np.isnan(value):
                continue
            if np.isinf(value):
                change = float(value)
            else:
                change = (value - base) / abs(base) if base != 0 else value - base
            if (rule.direction == "down" and change < -rule.threshold) or (
                rule.direction == "up" and change > rule.threshold
            ):
                verb = "fell" if change < 0 else "rose"
                moved = _percent(abs(change)) if base != 0 else f"by {abs(change):.4g}"
                message = (
                    f"{rule.indicator} {verb} {moved} vs {rule.against} ({base:.4g} -> {value:.4g}) at epoch "
                    f"{epoch}, past the {_limit(rule.threshold, base)} limit; action: {rule.action}"
                )
                fired.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "indicator": rule.indicator,
                        "value": value,
                        "baseline": base,
                        "against": rule.against,
                        "change": change,
                        "rule": f"{rule.indicator} {rule.direction} > {_percent(rule.threshold)} vs {rule.against}",
                        "action": rule.action,
                        "message": message,
                    }
                )
        return fired

    def state_dict(self) -> dict[str, Any]:
        """The baseline, which alerts after a resume are measured against."""
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the baseline."""
        self.baseline = state.get("baseline")


def _percent(fraction: float) -> str:
    """0.2 -> '20%', 0.0001 -> '0.01%': as many digits as the value needs (a 0.0001 limit is not '0%')."""
    return f"{fraction * 100:.3g}%"


def _limit(threshold: float, base: float) -> str:
    return _percent(threshold) if base != 0 else f"{threshold:g} (absolute, from 0)"
