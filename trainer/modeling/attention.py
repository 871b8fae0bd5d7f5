"""Attention over packed rows: each piece sees only the earlier tokens of its own piece, by one of three means.

- `flash_attention_3` / `flash_attention_2` (GPU, flash-attn installed): no mask at all. The batch's rows are
  laid end to end as one row, and the position ids, which restart at 0 for every piece (and for the padding),
  tell transformers where each sequence starts, so it runs flash-attn's variable-length kernel per piece.
  Nothing of size [L, L] exists.
- `flex_attention` (torch's own, CUDA, compiled): a `BlockMask` built from the segment ids; blocks with no
  allowed pair are skipped. Refused on CPU, where torch 2.13's compiled kernel gives wrong outputs for lengths
  that are not a multiple of its 128-token block (our tests build the mask on CPU at 128-token rows only).
- `sdpa` / `eager`: the dense additive [B, 1, L, L] block-diagonal causal mask (`PackedBatch.attention_mask`).
  It grows with L^2 and keeps sdpa off its flash kernel, but works with every model that takes a 4D mask.

`auto` picks the fastest that can run here: flash_attention_3 on Hopper or newer with flash-attn 3 installed,
then flash_attention_2 with flash-attn 2, then flex_attention on a CUDA GPU, else sdpa (CPU). The run's `config`
event records the choice and why.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.packing import PackedBatch

VARLEN = ("flash_attention_3", "flash_attention_2")


@dataclasses.dataclass(frozen=True)
class AttentionChoice:
    """The attention implementation a run uses (transformers' `attn_implementation`), and why."""

    kind: str
    reason: str

    @property
    def isolation(self) -> str:
        """How packed pieces are kept apart with this kind."""
        if self.kind in VARLEN:
            return "variable-length kernel from restarting position ids"
        if self.kind == "flex_attention":
            return "BlockMask from segment ids"
        return "dense 4D block-diagonal mask"


def choose_attention(requested: str, device: torch.device) -> AttentionChoice:
    """`model.attn_implementation` (auto or a kind) resolved for `device`; a kind that cannot run is an error."""
    available = {kind: _problem(kind, device) for kind in (*VARLEN, "flex_attention")}
    if requested == "auto":
        if device.type != "cuda":
            return AttentionChoice("sdpa", "auto on CPU: sdpa with the dense mask")
        for kind in (*VARLEN, "flex_attention"):
            if available[kind] is None:
                return AttentionChoice(kind, f"auto: the fastest available on {torch.cuda.get_device_name(device)}")
        return AttentionChoice("sdpa", f"auto: {available['flex_attention']}")
    problem = available.get(requested)
    if problem is not None:
        raise TrainerError(f"model.attn_implementation: {requested} cannot run here ({problem}); use auto or sdpa")
    return AttentionChoice(requested, f"model.attn_implementation: {requested}")


def _problem(kind: str, device: torch.device) -> str | None:
    """Why `kind` cannot run on `device`, or None."""
    from transformers.utils import import_utils

    if kind == "flex_attention":
        if not import_utils.is_torch_flex_attn_available():
            return "this torch has no flex_attention"
        if device.type == "cpu":
            # Measured with torch 2.13: wherever a length is not a multiple of the 128-token block (the eval hook's
            # and generation's lengths vary), the compiled CPU kernel's output is off by up to 0.1, at times NaN.
            return "on CPU, torch's compiled flex_attention is wrong for lengths off its 128-token blocks"
        return None if device.type == "cuda" else f"flex_attention does not run on {device.type}"
    if device.type != "cuda":
        return f"{kind} needs a CUDA GPU"
    if kind == "flash_attention_3":
        if torch.cuda.get_device_capability(device)[0] < 9:
            return "flash_attention_3 needs a Hopper (sm90) or newer GPU"
        return None if import_utils.is_flash_attn_3_available() else "flash-attn 3 is not installed"
    return None if import_utils.is_flash_attn_2_available() else "flash-attn is not installed (pip install flash-attn)"


def attention_inputs(choice: AttentionChoice, batch: PackedBatch, dtype: torch.dtype) -> tuple[PackedBatch, dict]:
    """The batch as the model should see it and the mask argument that keeps its pieces apart."""
    if choice.kind in VARLEN:
        # transformers detects packed sequences from position ids only in a batch of one row.
        return batch.as_one_row(), {"attention_mask": None}
    if choice.kind == "flex_attention":
        return batch, {"attention_mask": block_mask(batch.segment_ids)}
    return batch, {"attention_mask": batch.attention_mask(dtype)}


def block_mask(segment_ids: torch.Tensor) -> Any:
    """flex_attention's BlockMask: a token sees earlier tokens of its own segment (padding: of the padding)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_piece_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (segment_ids[b, q] == segment_ids[b, kv]) & (q >= kv)

    rows, length = segment_ids.shape
    return create_block_mask(same_piece_causal, rows, None, length, length, device=segment_ids.device)
