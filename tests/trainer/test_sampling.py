"""synthmix.trainer.generation.sampling: seeded, batched sampling that leaves the caller's RNG and model modes
untouched."""

from __future__ import annotations

import pydoc_data.topics

import pytest
import torch

from synthmix.errors import ConfigError
from synthmix.trainer.config import SamplingConfig, validate_sampling
from synthmix.trainer.generation.sampling import GenerationError, sample_continuations

TEXTS = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:40]
# Wider than the shared tiny Llama, so sampled text varies enough for the seed tests.
WIDER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


@pytest.fixture(scope="module")
def model(tiny_tokenizer, tiny_model):
    return tiny_model(tiny_tokenizer, **WIDER)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    # Different lengths on purpose: batches need left padding and sorting.
    return [tokenizer(text)["input_ids"][: 3 + (7 * i) % 13] for i, text in enumerate(TEXTS[:12])]


SAMPLE = SamplingConfig(max_new_tokens=12, batch_size=5, seed=1)
GREEDY = SamplingConfig(max_new_tokens=12, batch_size=5, do_sample=False)


def test_same_seed_same_text_other_seed_other_text(model, tokenizer, prompts):
    first = sample_continuations(model, tokenizer, prompts, SAMPLE)
    assert first == sample_continuations(model, tokenizer, prompts, SAMPLE, progress=True)
    assert first != sample_continuations(model, tokenizer, prompts, SamplingConfig(**{**vars(SAMPLE), "seed": 2}))
    assert len(first) == len(prompts) and all(len(ids) <= SAMPLE.max_new_tokens for ids in first)


def test_caller_rng_is_not_consumed(model, tokenizer, prompts):
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    sample_continuations(model, tokenizer, prompts, SAMPLE)
    assert torch.equal(torch.rand(5), expected)


def test_outputs_follow_input_order_whatever_the_batching(model, tokenizer, prompts):
    batched = sample_continuations(model, tokenizer, prompts, GREEDY)
    alone = [sample_continuations(model, tokenizer, [p], GREEDY)[0] for p in prompts]
    assert batched == alone
    reversed_batched = sample_continuations(model, tokenizer, prompts[::-1], GREEDY)
    assert reversed_batched == batched[::-1]


def test_generation_stops_at_eos_and_drops_it(tokenizer, prompts, tiny_model):
    eos = tokenizer.eos_token_id
    assert eos == 0
    model = tiny_model(tokenizer, **WIDER)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distribution; argmax ties go to id 0, the eos
    assert sample_continuations(model, tokenizer, prompts, GREEDY) == [[] for _ in prompts]
    config = SamplingConfig(max_new_tokens=64, batch_size=12, seed=0)
    sampled = sample_continuations(model, tokenizer, prompts, config)
    assert all(eos not in ids for ids in sampled)
    assert any(len(ids) < config.max_new_tokens for ids in sampled)  # stopped early: eos was drawn
    assert any(len(ids) == config.max_new_tokens for ids in sampled)


def test_greedy_and_beam_search_ignore_the_seed(model, tokenizer, prompts):
    beam = SamplingConfig(max_new_tokens=8, num_beams=3, do_sample=False, batch_size=4)
    for config in (GREEDY, beam):
        out = sample_continuations(model, tokenizer, prompts, config)
        again = sample_continuations(model, tokenizer, prompts, SamplingConfig(**{**vars(config), "seed": 9}))
        assert out == again and any(out)
    beam_sampling = SamplingConfig(max_new_tokens=8, num_beams=2, batch_size=4)
    assert len(sample_continuations(model, tokenizer, prompts, beam_sampling)) == len(prompts)


def test_temperature_near_zero_is_greedy(model, tokenizer, prompts):
    greedy = sample_continuations(model, tokenizer, prompts, GREEDY)
    cold = SamplingConfig(max_new_tokens=12, batch_size=5, temperature=1e-7, seed=3)
    assert sample_continuations(model, tokenizer, prompts, cold) == greedy
    zero = SamplingConfig(max_new_tokens=12, batch_size=5, temperature=0.0, seed=4)
    assert sample_continuations(model, tokenizer, prompts, zero) == greedy


def test_truncated_sampling_runs(model, tokenizer, prompts):
    config = SamplingConfig(max_new_tokens=8, top_p=0.9, top_k=20, temperature=0.8)
    assert len(sample_continuations(model, tokenizer, prompts, config)) == len(prompts)


def test_train_and_eval_modes_are_restored(tokenizer, prompts, tiny_model):
    model = tiny_model(tokenizer, **WIDER)
    # As the trainer leaves it mid-run: checkpointing on, cache off, training mode.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    model.model.layers[0].eval()  # a caller's own choice, kept as it was
    before = [m.training for m in model.modules()]
    sample_continuations(model, tokenizer, prompts[:3], SAMPLE)
    assert [m.training for m in model.modules()] == before
    model.eval()
    sample_continuations(model, tokenizer, prompts[:3], SAMPLE)
    assert not any(m.training for m in model.modules())


def test_peft_wrapped_model(tokenizer, prompts, tiny_model):
    from peft import LoraConfig, get_peft_model

    base_output = sample_continuations(tiny_model(tokenizer, **WIDER), tokenizer, prompts, GREEDY)
    peft_model = get_peft_model(tiny_model(tokenizer, **WIDER), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    # A fresh LoRA adapter (B = 0) leaves the function unchanged.
    assert sample_continuations(peft_model, tokenizer, prompts, GREEDY) == base_output
    sampled = sample_continuations(peft_model, tokenizer, prompts, SAMPLE)
    assert sampled == sample_continuations(peft_model, tokenizer, prompts, SAMPLE)
    assert peft_model.training


def test_empty_prompt_list_and_empty_prompt(model, tokenizer):
    assert sample_continuations(model, tokenizer, [], SAMPLE) == []
    with pytest.raises(GenerationError, match="prompt 1 is empty"):
        sample_continuations(model, tokenizer, [[5], []], SAMPLE)


@pytest.mark.parametrize(
    "field, value",
    [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_k", -1), ("num_beams", 0)],
)
def test_invalid_sampling_settings_name_the_key(field, value):
    with pytest.raises(ConfigError, match=rf"^collapse.sampling.{field}: must be"):
        validate_sampling(SamplingConfig(**{field: value}), lambda name: f"collapse.sampling.{name}")
