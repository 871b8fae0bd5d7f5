"""The collapse eval hook: indicators at step 0 and every epoch end, compared with the baseline and with the
real text itself, and rules that warn, stop the run, or lower the synthetic ratio.

Inputs are fixed for the whole run (the same held-out texts, the same prompts, the same sampling seed), so a
change in an indicator is a change in the model. The hook runs on the main process; sampling happens under a
forked RNG and the model is put back in its train/eval modes, so resumed runs stay bit-identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.config import CollapseConfig
from trainer.errors import TrainerError
from trainer.indicators import next_token_entropy, perplexity, rare_tokens, sample_indicators
from trainer.prompts import choose_prompts_from_ids, content_ids, leading_special_tokens
from trainer.sampling import sample_continuations


class CollapseMonitor:
    """Fixed eval inputs, the reference values of the real text, and the baseline once measured."""

    def __init__(self, config: CollapseConfig, tokenizer: Any, held_out: list[Any]) -> None:
        """`held_out`: the held-out real examples' token ids, as the store holds them (tokenized as training
        text is); the hook scores them, prompts the model with their beginnings, and counts their tokens."""
        if not held_out:
            raise TrainerError(
                "the collapse hook needs held-out real text: set data.held_out.fraction or "
                "data.held_out.sources (or collapse.enabled: false)"
            )
        self.config = config
        self.tokenizer = tokenizer
        eval_ids = [[int(t) for t in ids[: config.eval_seq_len]] for ids in held_out[: config.max_eval_texts]]
        self.eval_ids = [ids for ids in eval_ids if len(ids) >= 2]
        prefix = leading_special_tokens(tokenizer)
        contents = [content_ids(ids, prefix, tokenizer.eos_token_id) for ids in held_out]
        seed = config.sampling.seed
        chosen = choose_prompts_from_ids(tokenizer, contents, config.num_prompts, config.prompt_tokens, seed)
        self.prompts = [ids for _, ids in chosen]
        self.real_tokens = [t for ids in contents for t in ids]
        self.rare = rare_tokens(self.real_tokens, config.tail_share)
        self.baseline: dict[str, float] | None = None
        self.reference = self._reference(contents, chosen)

    def _reference(self, contents: list[list[int]], chosen: list[tuple[int, list[int]]]) -> dict[str, float]:
        """The sample indicators of the real text itself: what follows each prompt, as long as a sample."""
        start, length = self.config.prompt_tokens, self.config.sampling.max_new_tokens
        # A text reused as a prompt counts once.
        continuations = [contents[index][start : start + length] for index in dict.fromkeys(i for i, _ in chosen)]
        return self._indicators(continuations)

    def _indicators(self, samples: list[list[int]]) -> dict[str, float]:
        texts = self.tokenizer.batch_decode(samples, skip_special_tokens=True)
        values = sample_indicators(
            samples, texts, self.rare, self.real_tokens, self.config.self_bleu_samples, self.config.sampling.seed
        )
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
