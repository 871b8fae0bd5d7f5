"""The collapse eval hook: indicators at step 0, at every epoch end, every `collapse.every_steps` and at the last
step, compared with the baseline and with the real text itself, and rules that warn, stop the run, or lower the
synthetic ratio.

Inputs are fixed for the whole run (the same held-out texts, the same prompts, the same sampling seed), so a
change in an indicator is a change in the model. The hook runs on the main process; sampling happens under a
forked RNG and the model is put back in its train/eval modes, so resumed runs stay bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from synthmix.scoring import padded_nll
from synthmix.trainer.collapse.indicators import (
    next_token_entropy,
    per_example_perplexity,
    perplexity,
    perplexity_quantiles,
    rare_tokens,
    relative_change,
    sample_indicators,
    vendi_score,
)
from synthmix.trainer.config import CollapseConfig
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.generation.prompts import choose_prompts_from_ids, content_ids, leading_special_tokens
from synthmix.trainer.generation.sampling import sample_continuations

PPL_PERCENTILES = (50, 90, 99)


@dataclasses.dataclass
class _Scored:
    """Continuations scored by the base model: NLL sum and token count of each, and its pooled embedding."""

    nll_sums: list[float]
    counts: torch.Tensor
    pooled: torch.Tensor


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
        self.model_reference: dict[str, float] | None = None
        """The real continuations scored by the base model, measured with the baseline."""
        self.center: torch.Tensor | None = None
        """The mean embedding of the real continuations, which Vendi scores subtract (set with the baseline)."""

    def _reference(self, contents: list[list[int]], chosen: list[tuple[int, list[int]]]) -> dict[str, float]:
        """The sample indicators of the real text itself: what follows each prompt, as long as a sample."""
        start, length = self.config.prompt_tokens, self.config.sampling.max_new_tokens
        # A text reused as a prompt counts once (its prompt is always the same).
        self.real_continuations = [
            (prompt, contents[index][start : start + length]) for index, prompt in dict(chosen).items()
        ]
        return self._indicators([continuation for _, continuation in self.real_continuations])

    def _indicators(self, samples: list[list[int]]) -> dict[str, float]:
        texts = self.tokenizer.batch_decode(samples, skip_special_tokens=True)
        values = sample_indicators(
            samples, texts, self.rare, self.real_tokens, self.config.self_bleu_samples, self.config.sampling.seed
        )
        return {k: float(v) for k, v in values.items()}

    @torch.no_grad()
    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Every indicator for `model`: held-out perplexity (pooled and its per-text percentiles) and entropy,
        the samples' indicators, and the samples scored by the base model (their perplexity, their Vendi score).
        The first call also scores the real continuations the same way: the reference values, and the center
        that every later Vendi score subtracts."""
        was_training = model.training
        model.eval()
        try:
            scores = self._score_held_out(model)
            samples = sample_continuations(model, self.tokenizer, self.prompts, self.config.sampling)
            if self.model_reference is None:
                real = self._embed(model, self.real_continuations)
                self.center = real.pooled[real.counts > 0].mean(dim=0)
                self.model_reference = self._model_scored(real, isinstance(model, PeftModel))
                self.reference.update(self.model_reference)
            scored = self._embed(model, list(zip(self.prompts, samples, strict=True)))
        finally:
            model.train(was_training)
        return {**scores, **self._indicators(samples), **self._model_scored(scored, isinstance(model, PeftModel))}

    def _score_held_out(self, model: torch.nn.Module) -> dict[str, float]:
        nll_sums, counts, entropy_sum = [], [], 0.0
        for nll, targets, logits, _ in self._forward(model, self.eval_ids, [0] * len(self.eval_ids)):
            nll_sums += (nll * targets).sum(dim=1).tolist()
            counts += targets.sum(dim=1).tolist()
            entropy_sum += next_token_entropy(logits, targets) * int(targets.sum())
        tokens = sum(counts)
        quantiles = perplexity_quantiles(nll_sums, counts, PPL_PERCENTILES)
        return {
            "real_ppl": perplexity(sum(nll_sums), tokens),
            **{f"real_ppl_p{p}": value for p, value in quantiles.items()},
            "next_token_entropy": entropy_sum / max(tokens, 1),
        }

    def _embed(self, model: torch.nn.Module, pairs: list[tuple[list[int], list[int]]]) -> _Scored:
        """Each continuation scored after its prompt by the base model (the adapter disabled; without an adapter,
        the model as it is): its NLL, and its mean-pooled last hidden state. The base model embeds every eval's
        samples, so the Vendi scores of a run are comparable."""
        rows = [prompt + continuation for prompt, continuation in pairs]
        starts = [len(prompt) for prompt, _ in pairs]
        nll_sums, counts, pooled = [], [], []
        with model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
            for nll, targets, _, hidden in self._forward(model, rows, starts, hidden=True):
                nll_sums += (nll * targets).sum(dim=1).tolist()
                counts += targets.sum(dim=1).tolist()
                # Hidden state at position t read token t; targets[:, t-1] marks continuation token t.
                keep = torch.nn.functional.pad(targets, (1, 0)).unsqueeze(-1).to(hidden.dtype)
                pooled.append((hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1))
        return _Scored(nll_sums, torch.tensor(counts), torch.cat(pooled).float().cpu())

    def _model_scored(self, scored: _Scored, base_is_separate: bool) -> dict[str, float]:
        """With an adapter: the base model's perplexity of each continuation (mean and p90) and the Vendi score
        of the non-empty continuations around the fixed center. Without one (full training) nothing: the model
        that scored them changes from eval to eval, so neither value would compare with the last."""
        if not base_is_separate:
            return {}
        counts = scored.counts.tolist()
        ppls = per_example_perplexity(scored.nll_sums, counts)
        return {
            "vendi_score": vendi_score(scored.pooled[scored.counts > 0], self.center),
            "sample_base_ppl_mean": float(np.mean(ppls)) if ppls else math.nan,
            "sample_base_ppl_p90": perplexity_quantiles(scored.nll_sums, counts, (90,))[90],
        }

    def _forward(
        self, model: torch.nn.Module, rows: list[list[int]], starts: list[int], hidden: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per batch of rows (right-padded): the per-token NLL of each next token [B, T-1], which of them are
        scored (real tokens at or after the row's start) [B, T-1], the logits [B, T-1, V] and, when asked, the
        last hidden state [B, T, d]."""
        pad = self.tokenizer.pad_token_id or 0
        size = self.config.eval_batch_size
        for first in range(0, len(rows), size):
            batch, batch_starts = rows[first : first + size], starts[first : first + size]
            nll, real, logits, last_hidden = padded_nll(model, batch, pad, hidden)
            position = torch.arange(1, nll.shape[1] + 1, device=nll.device)
            begin = torch.tensor(batch_starts, device=nll.device).clamp(min=1)
            yield nll, real & (position[None, :] >= begin[:, None]), logits, last_hidden

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
            change = relative_change(float(value), base)
            if (rule.direction == "down" and change < -rule.threshold) or (
                rule.direction == "up" and change > rule.threshold
            ):
                verb = "fell" if change < 0 else "rose"
                moved = _percent(abs(change)) if base != 0 else f"by {abs(change):.4g}"
                message = (
                    f"{rule.indicator} {verb} {moved} vs {rule.against} ({base:.4g} -> {value:.4g}) at step "
                    f"{step} (epoch {epoch}), past the {_limit(rule.threshold, base)} limit; action: {rule.action}"
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
        """The baseline, which alerts after a resume are measured against, and the model-scored reference."""
        center = None if self.center is None else self.center.tolist()
        return {"baseline": self.baseline, "model_reference": self.model_reference, "center": center}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the baseline and the model-scored reference values."""
        self.baseline = state.get("baseline")
        self.model_reference = state.get("model_reference")
        self.center = None if state.get("center") is None else torch.tensor(state["center"], dtype=torch.float32)
        if self.model_reference is not None:
            self.reference.update(self.model_reference)


def _percent(fraction: float) -> str:
    """0.2 -> '20%', 0.0001 -> '0.01%': as many digits as the value needs (a 0.0001 limit is not '0%')."""
    return f"{fraction * 100:.3g}%"


def _limit(threshold: float, base: float) -> str:
    return _percent(threshold) if base != 0 else f"{threshold:g} (absolute, from 0)"
