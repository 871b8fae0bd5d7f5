"""The verifier filter: synthetic examples scored by their perplexity under a reference model, and kept only
when it lies within what the real data scores (Feng et al. 2024, "Beyond Model Collapse": selecting synthetic
data with a verifier prevents collapse).

A synthetic example is kept when its perplexity is at most the `quantile` of the perplexities of real examples
under the same model (or at most `max_ppl`): text the reference model finds less likely than nearly all real
text is what a drifting generator adds. With `min_quantile` (or `min_ppl`) the bar has a lower end too, a band:
text more likely than nearly all real text is dropped as well, since a generator fed its own output drifts
toward over-typical text, and keeping only the most likely text makes collapse worse (Gambetta et al. 2024).
The real examples are the held-out ones by default: a base model that was trained on the training text (as the
demo's was) scores it optimistically, and would reject new text that is as good as the real data. The cleaning
entry of the store holds the result, keyed by the verifier's settings and the model's identity, so a second run
with the same data scores nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthmix.data_mixers.config import VerifierConfig
from synthmix.data_mixers.errors import MixerError

BASE = "base"
"""`data.filters.verifier.model: base` names the run's own base model (its model.name)."""


def resolve_model(verifier: VerifierConfig, base_model: str | None) -> str:
    """The model the verifier loads: its own name, or the run's base model for `base`."""
    assert verifier.model is not None
    if verifier.model != BASE:
        return verifier.model
    if base_model is None:
        raise MixerError(
            "data.filters.verifier.model: 'base' scores with the run's base model, but the run has none "
            "(set model.name, or name a verifier model)"
        )
    return base_model


def model_identity(name: str) -> dict[str, Any]:
    """What decides the scores besides the settings: a local folder's files (name, size, mtime), or a hub name."""
    folder = Path(name)
    if not folder.is_dir():
        return {"hub": name}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listing = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return {"folder": str(folder.resolve()), "files": hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]}


def keep_threshold(real_ppls: Sequence[float], verifier: VerifierConfig) -> float:
    """The largest perplexity a synthetic example may have: `max_ppl`, or the `quantile` of the real ones."""
    if verifier.max_ppl is not None:
        return float(verifier.max_ppl)
    return _real_quantile(real_ppls, verifier.quantile)


def lower_threshold(real_ppls: Sequence[float], verifier: VerifierConfig) -> float | None:
    """The smallest perplexity a synthetic example may have: `min_ppl`, the `min_quantile` of the real ones, or
    None (no lower bound)."""
    if verifier.min_ppl is not None:
        return float(verifier.min_ppl)
    if verifier.min_quantile is None:
        return None
    return _real_quantile(real_ppls, verifier.min_quantile)


def needs_real_scores(verifier: VerifierConfig) -> bool:
    """Whether either end of the bar is placed by the real examples' perplexities."""
    return verifier.max_ppl is None or (verifier.min_quantile is not None and verifier.min_ppl is None)


def _real_quantile(real_ppls: Sequence[float], quantile: float) -> float:
    finite = np.asarray([p for p in real_ppls if np.isfinite(p)], dtype=np.float64)
    if finite.size == 0:
        raise MixerError("data.filters.verifier: no real example could be scored to set the threshold")
    return float(np.quantile(finite, quantile))


@dataclasses.dataclass
class Verdict:
    """What the verifier says of one synthetic source's examples."""

    too_surprising: np.ndarray
    """Perplexity above the upper bound (or unscorable): counted as `unverified`."""
    too_typical: np.ndarray
    """Perplexity below the lower bound: counted as `too_typical`."""

    @property
    def passing(self) -> np.ndarray:
        """Inside the band."""
        return ~(self.too_surprising | self.too_typical)


class Verifier:
    """A loaded reference model that scores token-id sequences (ids of the run's tokenizer)."""

    def __init__(self, verifier: VerifierConfig, name: str, run_tokenizer: Any, progress: bool | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from synthmix.data_mixers.tokenizer import tokenizer_fingerprint

        self.config, self.name, self.run_tokenizer, self.progress = verifier, name, run_tokenizer, progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=verifier.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                name,
                dtype=torch.bfloat16 if self.device == "cuda" else torch.float32,
                trust_remote_code=verifier.trust_remote_code,
            )
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MixerError(f"data.filters.verifier.model: cannot load {name!r}: {first}") from err
        self.model.to(self.device).eval()
        # Ids of the run's tokenizer are scored as they are when the verifier reads them alike; otherwise the
        # text is decoded and encoded again with the verifier's own tokenizer.
        same = tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(run_tokenizer)
        self.tokenizer = None if same else tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def perplexities(self, examples: list[np.ndarray], desc: str) -> np.ndarray:
        """exp(mean NLL) of each example's first `max_tokens` tokens (inf for fewer than two tokens)."""
        import torch
        from tqdm.auto import tqdm

        from synthmix.scoring import padded_nll

        rows = [self._ids(ids)[: self.config.max_tokens] for ids in examples]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths batch with little padding
        result = np.full(len(rows), np.inf)
        size = self.config.batch_size
        bar = tqdm(total=len(rows), desc=desc, unit="example", disable=self.progress is False, leave=False)
        with torch.inference_mode():
            for start in range(0, len(order), size):
                chosen = [i for i in order[start : start + size] if len(rows[i]) >= 2]
                bar.update(min(size, len(order) - start))
                if not chosen:
                    continue
                nll, real, _, _ = padded_nll(self.model, [rows[i] for i in chosen], self.pad)
                scored = real.float()
                mean = (nll * scored).sum(dim=1) / scored.sum(dim=1)
                result[chosen] = torch.exp(mean).cpu().double().numpy()
        bar.close()
        return result

    def _ids(self, ids: np.ndarray) -> list[int]:
        if self.tokenizer is None:
            return [int(t) for t in ids]
        text = self.run_tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]


def verify_synthetic(
    verifier: Verifier, real: list[np.ndarray], synthetic: list[list[np.ndarray]], seed: int = 0
) -> tuple[list[Verdict], dict[str, Any]]:
    """The verdict on each synthetic source's examples and what set the bar: the real examples scored (a seeded
    subset of at most `real_examples`), the thresholds and the time taken."""
    started = time.perf_counter()
    config = verifier.config
    # Absolute limits need no real text scored.
    count = config.real_examples if needs_real_scores(config) else 0
    chosen = np.random.default_rng(seed).permutation(len(real))[:count]
    real_ppls = verifier.perplexities([real[i] for i in sorted(chosen)], "verifier: real") if len(chosen) else []
    threshold = keep_threshold(list(real_ppls), config)
    low = lower_threshold(list(real_ppls), config)
    if low is not None and low >= threshold:
        raise MixerError(
            f"data.filters.verifier: the lower bound ({_lower(config)}: {low:.4g}) is not below the upper bound "
            f"({_upper(config)}: {threshold:.4g}); lower min_quantile or min_ppl"
        )
    verdicts = []
    for examples in synthetic:
        ppls = verifier.perplexities(examples, "verifier: synthetic")
        too_typical = ppls < low if low is not None else np.zeros(len(ppls), dtype=bool)
        verdicts.append(Verdict(too_surprising=~(ppls <= threshold), too_typical=too_typical))
    passing = np.concatenate([v.passing for v in verdicts]) if verdicts else np.zeros(0, bool)
    meta = {
        "model": verifier.name,
        "threshold": threshold,
        "min_threshold": low,
        "rule": f"ppl <= {_upper(config)}" if low is None else f"{_lower(config)} <= ppl <= {_upper(config)}",
        "real_from": config.real_from,
        "real_scored": len(chosen),
        "real_ppl_median": float(np.median(real_ppls)) if len(chosen) else None,
        "synthetic_scored": int(passing.size),
        "kept": int(passing.sum()),
        "too_typical": int(sum(int(v.too_typical.sum()) for v in verdicts)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return verdicts, meta


def _upper(config: VerifierConfig) -> str:
    return f"{config.max_ppl}" if config.max_ppl is not None else f"quantile {config.quantile:g} of real"


def _lower(config: VerifierConfig) -> str:
    return f"{config.min_ppl}" if config.min_ppl is not None else f"quantile {config.min_quantile:g} of real"
