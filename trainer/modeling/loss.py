"""The training loss: the negative log-likelihood of every position, computed from the model's final hidden
states and its output embedding, in chunks of tokens, so the [tokens x vocabulary] float32 logits are never
held whole (at a 152k vocabulary they would be most of a LoRA step's memory).

Three ways to compute it, one contract (`per_token_nll`: [B, L-1] float32, 0 where the label is ignored):
- `chunked` (everywhere): a custom autograd function; the forward keeps only the per-token losses, the backward
  recomputes each chunk's logits to form its gradient (one more LM-head matmul, no stored logits);
- `liger` (CUDA, with liger-kernel installed): its fused linear cross-entropy, used only after it has been
  checked equal to `chunked` on this machine;
- `full`: the model's own logits, for models whose head the others do not reproduce (a bias, a logit scale or
  soft-capping).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from synthmix.data_mixers.labels import IGNORE
from synthmix.extras import install_command

_CHUNK_ELEMENTS = 1 << 25  # logits of one chunk: 128 MiB in float32


@dataclasses.dataclass(frozen=True)
class LossChoice:
    """Which loss a run uses, and why (logged in the run's config event)."""

    kind: str
    reason: str


def choose_loss(requested: str, model: Any, device: torch.device) -> LossChoice:
    """`requested` (train.loss: auto, chunked, liger, full) resolved for this model and device."""
    unsupported = _head_extras(model)
    if unsupported:
        return LossChoice("full", f"the model's head has {unsupported}, which only its own forward applies")
    if requested == "full":
        return LossChoice("full", "train.loss: full")
    if requested in ("auto", "liger"):
        problem = _liger_problem(model, device)
        if problem is None:
            return LossChoice("liger", "liger-kernel's fused linear cross-entropy, checked equal to chunked")
        if requested == "liger":
            from synthmix.trainer.errors import TrainerError

            raise TrainerError(f"train.loss: liger cannot be used here ({problem}); use auto or chunked")
        return LossChoice("chunked", f"chunked LM-head loss (liger: {problem})")
    return LossChoice("chunked", "train.loss: chunked")


def model_kwargs(choice: LossChoice) -> dict[str, Any]:
    """What the forward call needs: the final hidden states instead of the logits (none at all are computed)."""
    if choice.kind == "full":
        return {}
    return {"output_hidden_states": True, "logits_to_keep": torch.zeros(0, dtype=torch.long)}


def per_token_nll(choice: LossChoice, output: Any, model: Any, labels: torch.Tensor) -> torch.Tensor:
    """The loss of every position but the last, [B, L-1] float32 (0 where the next label is ignored)."""
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)  # position t predicts label t+1
    if choice.kind == "full":
        logits = output.logits
        nll = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none"
        )
        return nll.view(labels.shape)[:, :-1]
    hidden = output.hidden_states[-1].flatten(0, 1)
    weight = output_weight(model)
    if choice.kind == "liger":
        nll = _liger_nll(hidden, weight, targets.flatten())
    else:
        nll = ChunkedNLL.apply(hidden, weight, targets.flatten())
    return nll.view(labels.shape)[:, :-1]


def output_weight(model: Any) -> torch.Tensor:
    """The output embedding's weight [V, d] (through DDP and peft wrappers)."""
    inner = getattr(model, "module", model)
    return inner.get_output_embeddings().weight


class ChunkedNLL(torch.autograd.Function):
    """Per-token cross-entropy of `hidden @ weight.T` against `targets`, a chunk of tokens at a time."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nll = torch.zeros(hidden.shape[0], dtype=_accumulation(hidden), device=hidden.device)
        chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            logits = _logits(hidden[start : start + chunk], weight)
            target = targets[start : start + chunk]
            valid = target != IGNORE
            picked = logits.gather(1, target.clamp(min=0)[:, None])[:, 0]
            nll[start : start + chunk] = torch.where(valid, torch.logsumexp(logits, dim=1) - picked, 0.0)
        ctx.save_for_backward(hidden, weight, targets)
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=_accumulation(hidden), device=weight.device)
        chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            target = targets[start : start + chunk]
            valid = target != IGNORE
            # d nll / d logits = softmax - one-hot, scaled by each token's upstream gradient (0 if ignored).
            grad_logits = torch.softmax(_logits(h, weight), dim=1)
            rows = torch.arange(len(target), device=target.device)
            grad_logits[rows[valid], target[valid]] -= 1.0
            grad_logits *= torch.where(valid, grad_nll[start : start + chunk], 0.0)[:, None]
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = (grad_logits.to(h.dtype) @ weight.to(h.dtype)).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ h.to(grad_logits.dtype)
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # The matmul in the activations' dtype (bf16 under autocast), the softmax in float32 (or wider), as the
    # model's own forward and cross-entropy would do it.
    return (hidden @ weight.to(hidden.dtype).T).to(_accumulation(hidden))


def _accumulation(hidden: torch.Tensor) -> torch.dtype:
    return torch.promote_types(hidden.dtype, torch.float32)


def _head_extras(model: Any) -> str:
    """What about the output head the hidden-state losses would not reproduce ('' when nothing)."""
    inner = getattr(model, "module", model)
    config = inner.config
    extras = []
    if getattr(inner.get_output_embeddings(), "bias", None) is not None:
        extras.append("a bias")
    if getattr(config, "final_logit_softcapping", None):
        extras.append("logit soft-capping")
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        extras.append("a logit scale")
    return " and ".join(extras)


def _liger_problem(model: Any, device: torch.device) -> str | None:
    """Why liger-kernel's fused loss cannot be used here, or None after checking it equal to chunked."""
    if device.type != "cuda":
        return "it needs a CUDA GPU"
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss  # noqa: F401
    except ImportError:
        return f"liger-kernel is not installed ({install_command('gpu')})"
    weight = output_weight(model).detach()
    generator = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(256, weight.shape[1], device=device, dtype=weight.dtype, generator=generator)
    targets = torch.randint(0, weight.shape[0], (256,), device=device, generator=generator)
    targets[::7] = IGNORE
    try:
        ours, theirs = ChunkedNLL.apply(hidden, weight, targets), _liger_nll(hidden, weight, targets)
    except Exception as err:  # an older liger-kernel without per-token losses, a kernel that fails to build
        return f"its fused loss failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    gap = float((ours - theirs).abs().max())
    return None if gap <= 2e-2 * float(ours.abs().max() + 1) else f"it differs from chunked by {gap:.3g}"


def _liger_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="none")
    out = loss(weight, hidden, targets)
    if not isinstance(out, torch.Tensor):  # newer releases may return (loss, z_loss) or an output object
        out = out[0] if isinstance(out, tuple) else out.loss
    return out.float()
