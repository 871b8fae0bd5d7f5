"""synthmix.trainer.modeling.loss: the chunked LM-head loss equals the cross-entropy of the full logits (values and
gradients) without holding them, per position as the loop needs it; the choice of loss for a model and a device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import synthmix.trainer.modeling.loss as loss_module
from synthmix.data_mixers.labels import IGNORE
from synthmix.data_mixers.mixer import Example
from synthmix.trainer.modeling.loss import ChunkedNLL, LossChoice, choose_loss, model_kwargs, per_token_nll
from synthmix.trainer.modeling.packing import pack_rows


def reference_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")


@pytest.mark.parametrize("chunk_elements", [1 << 25, 7 * 50])  # one chunk; chunks of 7 tokens (a ragged last)
def test_the_chunked_loss_and_its_gradients_equal_the_full_logits_cross_entropy(
    chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (40,), generator=generator)
    targets[::5] = IGNORE
    upstream = torch.rand(40, generator=generator)
    ours = ChunkedNLL.apply(hidden, weight, targets)
    theirs = reference_nll(hidden, weight, targets)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
    assert torch.all(ours[::5] == 0)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), (hidden, weight))
    theirs_grads = torch.autograd.grad((theirs * upstream).sum(), (hidden, weight))
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


def test_the_chunked_loss_passes_gradcheck_in_double_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", 3 * 11)
    hidden = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, IGNORE, 10, 4, 4, IGNORE, 1])

    assert torch.autograd.gradcheck(lambda h, w: ChunkedNLL.apply(h, w, targets), (hidden, weight))


def test_per_token_nll_through_a_model_equals_its_own_logits_path(tiny_tokenizer, tiny_model) -> None:
    model = tiny_model(tiny_tokenizer).train()
    ids = np.random.default_rng(1).integers(5, 300, 20)
    mask = np.ones(20, dtype=bool)
    mask[:6] = False
    batch = pack_rows([[Example("s", "real", 0, ids, mask)]], 24, tiny_tokenizer.pad_token_id)
    values, grads = {}, {}
    for kind in ("chunked", "full"):
        choice = LossChoice(kind, "test")
        output = model(input_ids=batch.input_ids, position_ids=batch.position_ids, **model_kwargs(choice))
        nll = per_token_nll(choice, output, model, batch.labels)
        assert nll.shape == (1, 23) and nll.dtype == torch.float32
        values[kind] = nll.detach()
        grads[kind] = torch.autograd.grad(nll.sum(), list(model.parameters()))
    torch.testing.assert_close(values["chunked"], values["full"], rtol=0, atol=2e-6)
    assert int((values["chunked"] > 0).sum()) == batch.loss_tokens == 14
    for a, b in zip(grads["chunked"], grads["full"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_loss_choice_names_why(tiny_tokenizer, tiny_model) -> None:
    model = tiny_model(tiny_tokenizer)
    auto = choose_loss("auto", model, torch.device("cpu"))
    assert auto.kind == "chunked" and "liger: it needs a CUDA GPU" in auto.reason
    assert choose_loss("full", model, torch.device("cpu")).kind == "full"
    model.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(len(tiny_tokenizer)))
    biased = choose_loss("chunked", model, torch.device("cpu"))
    assert biased.kind == "full" and "a bias" in biased.reason


def test_liger_is_refused_by_name_where_it_cannot_run(tiny_tokenizer, tiny_model) -> None:
    from synthmix.trainer.errors import TrainerError

    with pytest.raises(TrainerError, match=r"train.loss: liger cannot be used here \(it needs a CUDA GPU\)"):
        choose_loss("liger", tiny_model(tiny_tokenizer), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel's fused loss runs on CUDA only")
def test_liger_equals_the_chunked_loss_on_a_gpu(tiny_tokenizer, tiny_model) -> None:
    model = tiny_model(tiny_tokenizer).cuda()
    choice = choose_loss("auto", model, torch.device("cuda"))
    assert choice.kind in ("liger", "chunked")  # chunked when liger-kernel is not installed
