"""How the tokens of a packed row are labelled, for every trainer (synthmix's own loop and the stream for
transformers' `Trainer`): the label the loss ignores, the code of each kind of token, and the labels of one
example piece."""

from __future__ import annotations

import numpy as np

from synthmix.data_mixers.config import KINDS
from synthmix.data_mixers.mixer import Example

IGNORE = -100
"""The label of a token that carries no loss (PyTorch's and transformers' `ignore_index`)."""
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}
"""The code of each kind of token: 0 real, 1 synthetic."""
FILLER_KIND = -1
"""The code of padding, and of the filler rows that top a rank's share up to whole steps."""


def piece_labels(piece: Example) -> np.ndarray:
    """The labels of one example piece (int64): its ids, IGNORE where its loss mask is off and on its first token,
    which has nothing before it in the row to be predicted from."""
    labels = piece.ids.astype(np.int64)
    if piece.loss_mask is not None:
        labels = np.where(piece.loss_mask, labels, IGNORE)
    labels[0] = IGNORE
    return labels
