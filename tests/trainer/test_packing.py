"""Packing: pieces of examples share a row without seeing each other; labels, positions and kinds per token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.utils import is_flash_attn_2_available

from synthmix.data_mixers.labels import FILLER_KIND, IGNORE, KIND_CODES
from synthmix.data_mixers.mixer import Example
from synthmix.trainer.config import ModelConfig
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.attention import AttentionChoice, attention_inputs, choose_attention
from synthmix.trainer.modeling.model import build_model
from synthmix.trainer.modeling.packing import pack_rows

PAD = 1


def piece(ids, kind: str = "real", mask=None, start: int = 0) -> Example:
    """An example piece as the mixer yields it."""
    return Example("src", kind, 0, np.asarray(ids, np.int32), None if mask is None else np.asarray(mask, bool), start)


CUDA_FLASH = pytest.mark.skipif(
    not torch.cuda.is_available() or not is_flash_attn_2_available(), reason="flash-attn runs on CUDA GPUs only"
)
ATTENTION_PATHS = [
    "sdpa",
    "eager",
    # The BlockMask is built and checked on CPU, at rows of 128 tokens: the only lengths the CPU kernel gets right
    # (which is why training refuses flex_attention on CPU). The first forward compiles: ~35 s.
    pytest.param("flex_attention", marks=pytest.mark.slow),
    pytest.param("flash_attention_2", marks=CUDA_FLASH),
]


def build(tokenizer, arch, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights whatever the attention
    arch = {**arch, "num_hidden_layers": 2, "num_attention_heads": 4}  # two layers, grouped-query attention
    built = build_model(ModelConfig(arch=arch), tokenizer, torch.float32, attention)
    assert built.config._attn_implementation == attention
    device = "cuda" if attention.startswith("flash") else "cpu"
    return built.to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()


@pytest.fixture(scope="module", params=ATTENTION_PATHS)
def model(request, tiny_tokenizer, tiny_arch):
    return build(tiny_tokenizer, tiny_arch, request.param)


@pytest.fixture(scope="module")
def unpacked(tiny_tokenizer, tiny_arch):
    """The same weights with plain sdpa on CPU: what each piece gives run alone."""
    return build(tiny_tokenizer, tiny_arch, "sdpa")


@st.composite
def rows_of_pieces(draw, seq_len: int = 24):
    """Rows of pieces (some empty, some continuing an example, some with a loss mask) that fit `seq_len`."""
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        room, row = seq_len, []
        for _ in range(draw(st.integers(0, 5))):
            n = draw(st.integers(0, room))
            ids = draw(st.lists(st.integers(2, 299), min_size=n, max_size=n))
            mask = draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n))
            kind = draw(st.sampled_from(list(KIND_CODES)))
            row.append(piece(ids, kind, mask, start=draw(st.sampled_from([0, 0, 3]))))
            room -= n
        rows.append(row)
    return rows


@settings(max_examples=150, deadline=None)
@given(rows_of_pieces())
def test_every_token_gets_its_piece_label_position_segment_and_kind(rows: list[list[Example]]) -> None:
    seq_len = 24
    batch = pack_rows(rows, seq_len, PAD)
    assert batch.input_ids.shape == batch.labels.shape == batch.kinds.shape == (len(rows), seq_len)
    started = {kind: 0 for kind in KIND_CODES}
    for r, row in enumerate(rows):
        cursor, segment = 0, 0
        for p in row:
            n = len(p.ids)
            if n == 0:
                continue
            segment += 1
            span = slice(cursor, cursor + n)
            expected = np.where(p.loss_mask if p.loss_mask is not None else True, p.ids, IGNORE)
            expected[0] = IGNORE  # nothing before a piece in its row is its context
            assert batch.input_ids[r, span].tolist() == p.ids.tolist()
            assert batch.labels[r, span].tolist() == expected.tolist()
            assert batch.position_ids[r, span].tolist() == list(range(n))
            assert batch.segment_ids[r, span].tolist() == [segment] * n
            assert batch.kinds[r, span].tolist() == [KIND_CODES[p.kind]] * n
            started[p.kind] += p.start == 0
            cursor += n
        padding = slice(cursor, seq_len)
        assert batch.input_ids[r, padding].tolist() == [PAD] * (seq_len - cursor)
        assert batch.labels[r, padding].tolist() == [IGNORE] * (seq_len - cursor)
        assert batch.kinds[r, padding].tolist() == [FILLER_KIND] * (seq_len - cursor)
        assert batch.segment_ids[r, padding].tolist() == [0] * (seq_len - cursor)
        assert batch.position_ids[r, padding].tolist() == list(range(seq_len - cursor))
    assert batch.examples_started.tolist() == [started[kind] for kind in KIND_CODES]
    assert batch.loss_tokens == int((batch.labels != IGNORE).sum())

    # The mask lets a token see earlier tokens of its own piece (or of the padding) and nothing else.
    mask = batch.attention_mask(torch.float32)
    assert mask.shape == (len(rows), 1, seq_len, seq_len)
    segments = batch.segment_ids
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    assert torch.equal(mask[:, 0] == 0, allowed)
    assert torch.all(mask[:, 0][~allowed] == torch.finfo(torch.float32).min)


def test_a_row_longer_than_seq_len_is_refused() -> None:
    with pytest.raises(ValueError, match="row 1 holds 9 tokens, more than seq_len 8"):
        pack_rows([[piece([5] * 8)], [piece([5] * 4), piece([6] * 5)]], 8, PAD)


@torch.no_grad()
def test_packed_pieces_give_the_logits_of_each_piece_run_alone(model, unpacked) -> None:
    rng = np.random.default_rng(0)
    rows = [
        [piece(rng.integers(2, 300, n)) for n in (7, 5, 9)],
        [piece(rng.integers(2, 300, 12)), piece(rng.integers(2, 300, 10), "synthetic", start=4)],
    ]
    batch = pack_rows(rows, 128, PAD).to(model.device)  # mostly padding; 128: see ATTENTION_PATHS
    choice = AttentionChoice(model.config._attn_implementation, "test")
    inputs, attention = attention_inputs(choice, batch, model.dtype)
    packed = model(input_ids=inputs.input_ids, position_ids=inputs.position_ids, use_cache=False, **attention)
    packed = packed.logits.float().cpu().view(len(rows), 128, -1)  # one row for the variable-length kernel
    tolerance = 1e-5 if model.dtype == torch.float32 else 5e-2
    for r, row in enumerate(rows):
        cursor = 0
        for p in row:
            alone = unpacked(input_ids=torch.from_numpy(p.ids.astype(np.int64))[None]).logits[0]
            span = slice(cursor, cursor + len(p.ids))
            torch.testing.assert_close(packed[r, span], alone, rtol=0, atol=tolerance)
            cursor += len(p.ids)


@torch.no_grad()
def test_without_isolation_later_pieces_would_see_earlier_ones(unpacked) -> None:
    """What the test above can tell apart: restarting position ids alone (with a KV cache, transformers does not
    look for packed sequences) lets every piece after the first see the ones before it."""
    rng = np.random.default_rng(0)
    rows = [[piece(rng.integers(2, 300, n)) for n in (7, 5, 9)]]
    batch = pack_rows(rows, 24, PAD)
    leaky = unpacked(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    for cursor, p in ((7, rows[0][1]), (12, rows[0][2])):
        alone = unpacked(input_ids=torch.from_numpy(p.ids.astype(np.int64))[None]).logits[0]
        assert float((leaky[0, cursor : cursor + len(p.ids)] - alone).abs().max()) > 1e-2


def test_one_row_keeps_every_piece_apart_and_every_loss() -> None:
    rows = [[piece([5, 6, 7]), piece([8, 9])], [piece([3, 4], "synthetic", start=2)], []]
    batch = pack_rows(rows, 6, PAD)
    flat = batch.as_one_row()
    assert flat.input_ids.shape == (1, 18)
    assert flat.segment_ids.tolist() == [[1, 1, 1, 2, 2, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert flat.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]
    assert flat.loss_tokens == batch.loss_tokens
    # Per position but the last, 0 where the next label is ignored, as trainer.loss returns it.
    nll = torch.rand(3, 5) * (batch.labels[:, 1:] != IGNORE)
    flat_nll = torch.cat([torch.cat([row, torch.zeros(1)]) for row in nll])[:-1][None]  # a row's end: no loss
    torch.testing.assert_close(flat.sums_by_kind(flat_nll), batch.sums_by_kind(nll))


def test_auto_attention_on_cpu_is_sdpa_and_a_kernel_that_cannot_run_is_refused() -> None:
    cpu = torch.device("cpu")
    assert choose_attention("auto", cpu).kind == "sdpa"
    with pytest.raises(TrainerError, match="flex_attention cannot run here .*wrong for lengths off its 128-token"):
        choose_attention("flex_attention", cpu)
    assert choose_attention("eager", cpu).isolation == "dense 4D block-diagonal mask"
    for kind in ("flash_attention_2", "flash_attention_3"):
        with pytest.raises(TrainerError, match=f"model.attn_implementation: {kind} cannot run here .*needs a CUDA GPU"):
            choose_attention(kind, cpu)
