"""trainer.generation: seeded, batched sampling that leaves the caller's RNG and model modes untouched."""

from __future__ import annotations

import json
import pydoc_data.topics

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.generation import (
    GenerationError,
    SamplingConfig,
    generate_corpus,
    prompts_from_texts,
    sample_continuations,
)

TEXTS = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:40]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from more threads, and a busy shared CPU makes several threads much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXTS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


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


def test_generation_stops_at_eos_and_drops_it(tokenizer, prompts):
    eos = tokenizer.eos_token_id
    assert eos == 0
    model = tiny_llama(tokenizer)
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
    cold = SamplingConfig(max_new_tokens=12, batch_size=5, temperature=1e-4, seed=3)
    assert sample_continuations(model, tokenizer, prompts, cold) == greedy
    zero = SamplingConfig(max_new_tokens=12, batch_size=5, temperature=0.0, seed=4)
    assert sample_continuations(model, tokenizer, prompts, zero) == greedy


def test_truncated_sampling_runs(model, tokenizer, prompts):
    config = SamplingConfig(max_new_tokens=8, top_p=0.9, top_k=20, temperature=0.8)
    assert len(sample_continuations(model, tokenizer, prompts, config)) == len(prompts)


def test_train_and_eval_modes_are_restored(tokenizer, prompts):
    model = tiny_llama(tokenizer)
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


def test_peft_wrapped_model(tokenizer, prompts):
    from peft import LoraConfig, get_peft_model

    base_output = sample_continuations(tiny_llama(tokenizer), tokenizer, prompts, GREEDY)
    peft_model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
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
def test_invalid_sampling_settings_name_the_field(field, value):
    with pytest.raises(GenerationError, match=field):
        SamplingConfig(**{field: value})


def test_prompts_from_texts_is_seeded_and_skips_short_texts(tokenizer):
    texts = ["tiny", *TEXTS[:10], "x y"]
    prompts = prompts_from_texts(tokenizer, texts, n=6, prompt_tokens=8, seed=0)
    assert prompts == prompts_from_texts(tokenizer, texts, n=6, prompt_tokens=8, seed=0)
    assert prompts != prompts_from_texts(tokenizer, texts, n=6, prompt_tokens=8, seed=1)
    assert len(prompts) == 6 and all(len(p) == 8 for p in prompts)
    starts = {tuple(tokenizer(t)["input_ids"][:8]) for t in TEXTS[:10]}
    assert {tuple(p) for p in prompts} <= starts


def test_prompts_keep_the_tokenizers_bos(tokenizer):
    from tokenizers.processors import TemplateProcessing

    bpe = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    pad = tokenizer.pad_token_id
    bpe.post_processor = TemplateProcessing(single="<|pad|> $A", special_tokens=[("<|pad|>", pad)])
    with_bos = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|pad|>", eos_token="<|endoftext|>")
    prompts = prompts_from_texts(with_bos, TEXTS, n=4, prompt_tokens=5, seed=0)
    assert all(len(p) == 6 and p[0] == pad and pad not in p[1:] for p in prompts)


def test_prompts_reuse_texts_when_n_exceeds_them(tokenizer):
    prompts = prompts_from_texts(tokenizer, TEXTS[:3], n=7, prompt_tokens=4, seed=0)
    assert len(prompts) == 7 and len({tuple(p) for p in prompts}) == 3
    with pytest.raises(GenerationError, match="prompt_tokens=4"):
        prompts_from_texts(tokenizer, ["a", "b c"], n=2, prompt_tokens=4, seed=0)


def test_generate_corpus_writes_provenance(model, tokenizer, tmp_path):
    out = tmp_path / "corpus" / "synthetic.jsonl"
    config = SamplingConfig(max_new_tokens=10, batch_size=4, seed=5)
    written = generate_corpus(model, tokenizer, TEXTS, 9, 6, config, "tiny-llama", "real.jsonl", out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == len(lines) == 9
    for line in lines:
        assert set(line) == {"text", "generator", "prompt_source", "sampling"}
        assert line["generator"] == "tiny-llama"
        assert line["prompt_source"]["file"] == "real.jsonl"
        assert line["sampling"] == vars(config)
        prompt = tokenizer.decode(tokenizer(TEXTS[line["prompt_source"]["index"]])["input_ids"][:6])
        assert line["text"].startswith(prompt)
    assert list(out.parent.iterdir()) == [out]
    again = tmp_path / "again.jsonl"
    generate_corpus(model, tokenizer, TEXTS, 9, 6, config, "tiny-llama", "real.jsonl", again)
    assert again.read_bytes() == out.read_bytes()


def test_generate_corpus_leaves_no_partial_file(model, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "synthetic.jsonl"
    out.write_text("previous corpus\n", encoding="utf-8")
    calls = []

    def failing_decode(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return "text"

    monkeypatch.setattr(tokenizer, "decode", failing_decode)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(model, tokenizer, TEXTS, 8, 6, SAMPLE, "m", "real.jsonl", out)
    assert out.read_text(encoding="utf-8") == "previous corpus\n"
    assert list(tmp_path.iterdir()) == [out]
