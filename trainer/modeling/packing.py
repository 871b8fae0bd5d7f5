"""Packing: example pieces concatenated into fixed-length rows that do not attend to each other.

Each row is filled to `seq_len` tokens from the mixer's stream (an example that does not fit continues in
the next row). Isolation: position ids restart at 0 for every piece, and the batch offers what each attention
path needs (trainer/attention.py chooses): segment ids for a BlockMask, the rows as one row for the
variable-length flash kernel, or a 4D block-diagonal causal mask (additive: 0 where allowed, the dtype's
minimum elsewhere). Restarting position ids alone do not isolate pieces with sdpa or eager attention
(measured: logits differ by 0.4-0.6); with the 4D mask, a packed piece's logits equal those of the piece run
alone to 1e-7. The first token of every piece gets no loss: nothing before it in the row is its context.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from synthmix.data_mixers.labels import FILLER_KIND, IGNORE, KIND_CODES, piece_labels
from synthmix.data_mixers.mixer import Example


@dataclasses.dataclass
class PackedBatch:
    """Packed rows and what the loss needs: labels, per-token kind, segment of each token."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    """Pieces are numbered 1, 2, ... within a row; padding is segment 0."""
    kinds: torch.Tensor
    """0 real, 1 synthetic, -1 padding."""
    examples_started: torch.Tensor
    """Examples whose first token is in this batch, by kind [real, synthetic] (the ratio in `unit: examples`)."""

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive [B, 1, L, L] mask: a token sees earlier tokens of its own piece only."""
        seg = self.segment_ids
        length = seg.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal
        mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]

    def as_one_row(self) -> PackedBatch:
        """The rows laid end to end as one row [1, B*L] (for variable-length attention, which finds the pieces
        from the restarting position ids). Segment ids are renumbered to stay distinct across the old rows; the
        loss is unchanged, since the first token of every row starts a piece and carries none."""
        rows, length = self.segment_ids.shape
        first = torch.cat([self.segment_ids.new_zeros(1), self.segment_ids.amax(dim=1).cumsum(0)[:-1]])
        segments = torch.where(self.segment_ids > 0, self.segment_ids + first[:, None], 0)
        flat = [t.reshape(1, rows * length) for t in (self.input_ids, self.labels, self.position_ids)]
        return PackedBatch(*flat, segments.reshape(1, -1), self.kinds.reshape(1, -1), self.examples_started)

    def to(self, device: torch.device) -> PackedBatch:
        """The same batch on `device`."""
        return PackedBatch(*(t.to(device, non_blocking=True) for t in dataclasses.astuple(self)))

    def sums_by_kind(self, nll: torch.Tensor) -> torch.Tensor:
        """[nll, loss tokens, tokens, examples started], each for real then synthetic (float64), from the
        per-position losses `trainer.loss.per_token_nll` returned for this batch."""
        kinds = self.kinds[:, 1:]
        has_loss = self.labels[:, 1:] != IGNORE
        values = [nll[kinds == code].double().sum() for code in KIND_CODES.values()]
        values += [(has_loss & (kinds == code)).sum().double() for code in KIND_CODES.values()]
        values += [(self.kinds == code).sum().double() for code in KIND_CODES.values()]
        values.extend(self.examples_started.double())
        return torch.stack(values)

    @property
    def loss_tokens(self) -> int:
        """Tokens that carry a loss (labels are predicted from the previous position)."""
        return int((self.labels[:, 1:] != IGNORE).sum())


def pack_rows(rows: list[list[Example]], seq_len: int, pad_id: int) -> PackedBatch:
    """One batch from rows of example pieces (each row at most `seq_len` tokens; the rest is padding)."""
    shape = (len(rows), seq_len)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    segment_ids = np.zeros(shape, dtype=np.int64)
    kinds = np.full(shape, FILLER_KIND, dtype=np.int64)
    started = np.zeros(len(KIND_CODES), dtype=np.int64)
    for r, row in enumerate(rows):
        pieces = [piece for piece in row if len(piece.ids)]  # an empty piece has no first token to mask
        filled = sum(len(piece.ids) for piece in pieces)
        if filled > seq_len:  # checked first: numpy would fail with a shape error while filling the row
            raise ValueError(f"row {r} holds {filled} tokens, more than seq_len {seq_len}")
        cursor = 0
        for segment, piece in enumerate(pieces, start=1):
            n = len(piece.ids)
            span = slice(cursor, cursor + n)
            input_ids[r, span] = piece.ids
            labels[r, span] = piece_labels(piece)
            position_ids[r, span] = np.arange(n)
            segment_ids[r, span] = segment
            kinds[r, span] = KIND_CODES[piece.kind]
            started[KIND_CODES[piece.kind]] += piece.start == 0
            cursor += n
        position_ids[r, cursor:] = np.arange(seq_len - cursor)
    tensors = (input_ids, labels, position_ids, segment_ids, kinds, started)
    return PackedBatch(*(torch.from_numpy(t) for t in tensors))
