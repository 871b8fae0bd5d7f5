"""Whole-example rows: best-fit decreasing (BFD) bin packing of example lengths into rows of `capacity` tokens.

Items are taken longest first; each goes into the open row with the least room that still fits it, or opens a
new row. The rows with room are kept as a bitset of "some row has exactly c tokens free" (a Python integer),
so finding the best fit for a length L is a shift and a lowest-set-bit: about a microsecond per item, where a
segment tree in Python (TRL's `_SegmentTree`) costs tens of bit operations per item.
"""

from __future__ import annotations

import numpy as np


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """The row of each item (rows numbered in the order they were opened); every length must be in
    [1, capacity]. Deterministic: ties between equal lengths keep the items' order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"lengths must lie in [1, {capacity}], got {lengths.min()}..{lengths.max()}")
    row_of = np.empty(len(lengths), dtype=np.int64)
    rows_with_room: dict[int, list[int]] = {}  # free tokens -> rows with exactly that room (a stack)
    room_mask = 0  # bit c is set while some row has exactly c tokens free
    rows = 0
    for item in np.argsort(-lengths, kind="stable").tolist():
        length = int(lengths[item])
        fitting = room_mask >> length
        if fitting:
            room = length + ((fitting & -fitting).bit_length() - 1)  # the least room that still fits
            stack = rows_with_room[room]
            row = stack.pop()
            if not stack:
                room_mask ^= 1 << room
        else:
            row, room = rows, capacity
            rows += 1
        row_of[item] = row
        left = room - length
        if left:
            rows_with_room.setdefault(left, []).append(row)
            room_mask |= 1 << left
    return row_of


def rows_from_assignment(row_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, items): row r holds items[starts[r]:starts[r + 1]], in the order of the items."""
    count = int(row_of.max()) + 1 if len(row_of) else 0
    items = np.argsort(row_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=count))]).astype(np.int64)
    return starts, items
