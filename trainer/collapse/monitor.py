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
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from synthmix.data_mixers.corpus import HeldOutExample
from synthmix.scoring import padded_nll
from synthmix.trainer.collapse.benchmarks import Benchmarks
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
from synthmix.trainer.generation.prompts import (
    content_ids,
    cut_at_stop,
    end_of_turn_id,
    eval_prompts,
    leading_special_tokens,
)
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

    def __init__(
        self, config: CollapseConfig, tokenizer: Any, held_out: Sequence[HeldOutExample | Sequence[int]]
    ) -> None:
        """`held_out`: the held-out real examples as the store holds them (tokenized as training examples are;
        plain token ids are texts). The hook scores them (the tokens training's loss counts), prompts the model
        with them (a text's first tokens, a chat's conversation up to its last reply, a pair's prompt), and
        compares its samples with what the real examples have there."""
        if not held_out:
            raise TrainerError(
                "the collapse hook needs held-out real text: set data.held_out.fraction or "
                "data.held_out.sources (or collapse.enabled: false)"
            )
        self.config = config
        self.tokenizer = tokenizer
        examples = [e if isinstance(e, HeldOutExample) else HeldOutExample(np.asarray(e)) for e in held_out]
        self.examples = examples
        rows = [_scored_row(e, config.eval_seq_len) for e in examples[: config.max_eval_texts]]
        self.eval_rows = [row for row in rows if row is not None]
        end_of_turn = end_of_turn_id(tokenizer)
        self.stop_ids = [t for t in (tokenizer.eos_token_id, end_of_turn) if t is not None]
        self.prompts = eval_prompts(
            tokenizer, examples, config.num_prompts, config.prompt_tokens, config.sampling.max_new_tokens,
            config.sampling.seed, self.stop_ids, config.eval_seq_len,
        )  # fmt: skip
        # The real text the samples are compared with: texts without what tokenizing added, chats' last replies.
        prefix, eos = leading_special_tokens(tokenizer), tokenizer.eos_token_id
        self.real_tokens = [t for e in examples for t in _real_content(e, prefix, eos, self.stop_ids)]
        self.rare = rare_tokens(self.real_tokens, config.tail_share)
        self.baseline: dict[str, float] | None = None
        # A prompt drawn twice counts once in the reference (its real continuation is always the same).
        unique = {p.example: p for p in self.prompts}.values()
        self.real_continuations = [(p.prompt, p.reference) for p in unique]
        self.reference = self._indicators([reference for _, reference in self.real_continuations])
        """The sample indicators of the real text itself: what follows each prompt, as long as a sample."""
        self.model_reference: dict[str, float] | None = None
        """The real continuations scored by the base model, measured with the baseline."""
        self.center: torch.Tensor | None = None
        """The mean embedding of the real continuations, which Vendi scores subtract (set with the baseline)."""
        self.benchmarks = Benchmarks(config.benchmarks, tokenizer) if config.benchmarks.tasks else None

    def sample_records(self, samples: list[list[int]]) -> list[dict[str, Any]]:
        """One readable record per sample: its prompt and completion as text, and where the prompt came from."""
        records = []
        for number, (prompt, sample) in enumerate(zip(self.prompts, samples, strict=True)):
            example = self.examples[prompt.example]
            records.append(
                {
                    "sample": number,
                    # A chat's prompt keeps its template (the turns and the generation prompt are what the model saw).
                    "prompt": self.tokenizer.decode(prompt.prompt, skip_special_tokens=not prompt.reply),
                    "completion": self.tokenizer.decode(sample, skip_special_tokens=True),
                    "form": "reply" if prompt.reply else "text",
                    "source": example.source,
                    "index": example.index,
                    "completion_tokens": len(sample),
                }
            )
        return records

    def _indicators(self, samples: list[list[int]]) -> dict[str, float]:
        texts = self.tokenizer.batch_decode(samples, skip_special_tokens=True)
        values = sample_indicators(
            samples, texts, self.rare, self.real_tokens, self.config.self_bleu_samples, self.config.sampling.seed
        )
        return {k: float(v) for k, v in values.items()}

    @torch.no_grad()
    def measure(self, model: torch.nn.Module) -> Measured:
        """Every indicator for `model`: held-out perplexity (pooled and its per-text percentiles) and entropy,
        the samples' indicators, and the samples scored by the base model (their perplexity, their Vendi score).
        The first call also scores the real continuations the same way: the reference values, and the center
        that every later Vendi score subtracts."""
        was_training = model.training
        model.eval()
        prompts = [p.prompt for p in self.prompts]
        try:
            scores = self._score_held_out(model)
            samples = sample_continuations(model, self.tokenizer, prompts, self.config.sampling, stop_ids=self.stop_ids)
            if self.model_reference is None:
                real = self._embed(model, self.real_continuations)
                self.center = real.pooled[real.counts > 0].mean(dim=0)
                self.model_reference = self._model_scored(real, isinstance(model, PeftModel))
                self.reference.update(self.model_reference)
            scored = self._embed(model, list(zip(prompts, samples, strict=True)))
        finally:
            model.train(was_training)
        values = {**scores, **self._indicators(samples), **self._model_scored(scored, isinstance(model, PeftModel))}
        if self.benchmarks is not None:
            started = time.perf_counter()
            values.update(self.benchmarks.score(model))
            values["benchmark_seconds"] = round(time.perf_counter() - started, 3)
        return Measured(values, samples)

    def _score_held_out(self, model: torch.nn.Module) -> dict[str, float]:
        nll_sums, counts, entropy_sum = [], [], 0.0
        rows, counted = [row for row, _ in self.eval_rows], [mask for _, mask in self.eval_rows]
        for nll, targets, logits, _ in self._forward(model, rows, counted):
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
        counted = [np.arange(len(row)) >= len(prompt) for row, (prompt, _) in zip(rows, pairs, strict=True)]
        nll_sums, counts, pooled = [], [], []
        with model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
            for nll, targets, _, hidden in self._forward(model, rows, counted, hidden=True):
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
        self, model: torch.nn.Module, rows: list[list[int]], counted: list[np.ndarray], hidden: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per batch of rows (right-padded): the per-token NLL of each next token [B, T-1], which of them are
        scored (`counted[i][t]`: token t of row i; the first token is never predicted) [B, T-1], the logits
        [B, T-1, V] and, when asked, the last hidden state [B, T, d]."""
        pad = self.tokenizer.pad_token_id or 0
        size = self.config.eval_batch_size
        for first in range(0, len(rows), size):
            batch = rows[first : first + size]
            nll, real, logits, last_hidden = padded_nll(model, batch, pad, hidden)
            scored = torch.zeros(real.shape, dtype=torch.bool)
            for r, mask in enumerate(counted[first : first + size]):
                scored[r, : len(mask) - 1] = torch.from_numpy(np.asarray(mask[1:], dtype=bool))
            yield nll, real & scored.to(real.device), logits, last_hidden

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


@dataclasses.dataclass(frozen=True)
class Measured:
    """One measurement: the indicators' values, and the samples they were computed from (token ids, per prompt)."""

    values: dict[str, float]
    samples: list[list[int]]


def _scored_row(example: HeldOutExample, max_tokens: int) -> tuple[list[int], np.ndarray] | None:
    """An example's first `max_tokens` ids and which of them held-out perplexity counts: those training's loss
    counts (every token, or the assistant's or completion's under assistant_only_loss/completion_only_loss).
    None when no token after the first is counted."""
    ids = [int(t) for t in example.ids[:max_tokens]]
    mask = np.ones(len(ids), dtype=bool) if example.loss_mask is None else np.asarray(example.loss_mask[:max_tokens])
    return (ids, mask) if mask[1:].any() else None


def _real_content(example: HeldOutExample, prefix: list[int], eos: int | None, stop_ids: list[int]) -> list[int]:
    """What the samples' token distribution is compared with: a text without the special tokens tokenizing
    added, a chat's or pair's last reply up to its end of turn."""
    ids = [int(t) for t in example.ids]
    if example.reply_start is None:
        return content_ids(ids, prefix, eos)
    return cut_at_stop(ids[example.reply_start :], stop_ids)


def _percent(fraction: float) -> str:
    """0.2 -> '20%', 0.0001 -> '0.01%': as many digits as the value needs (a 0.0001 limit is not '0%')."""
    return f"{fraction * 100:.3g}%"


def _limit(threshold: float, base: float) -> str:
    return _percent(threshold) if base != 0 else f"{threshold:g} (absolute, from 0)"
