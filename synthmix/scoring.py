"""Scoring token sequences with a causal LM, shared by the collapse hook and the synthetic-data verifier."""

from __future__ import annotations

import torch


def padded_nll(
    model: torch.nn.Module, rows: list[list[int]], pad_id: int, hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward of `rows`, right-padded into a batch on the model's device: the NLL of each next token
    [B, T-1], which of those next tokens are real (not padding) [B, T-1], the logits [B, T-1, V] in float32 and,
    when asked, the last hidden state [B, T, d] in float32."""
    device = next(model.parameters()).device
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
    logits = out.logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return nll, mask[:, 1:].bool(), logits, (out.hidden_states[-1].float() if hidden else None)
