"""The model: built from a config (seeded) or loaded by path, LoRA on the chosen modules, errors that name keys."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoTokenizer

from synthmix.cli import main
from synthmix.data_mixers.tokenizer import train_bpe
from synthmix.trainer.config import LoraConfig, ModelConfig, load_config
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.model import add_lora, build_model, resolve_dtype
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.loop import train

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 3]])


@pytest.fixture(scope="module")
def built(tiny_arch):
    """`built(tokenizer, seed, **model_config)`: the tiny Llama (two layers) through `build_model`."""

    def build(tokenizer, seed: int = 0, **model: object) -> torch.nn.Module:
        torch.manual_seed(seed)
        arch = {**tiny_arch, "num_hidden_layers": 2}
        return build_model(ModelConfig(arch=arch, **model), tokenizer, torch.float32, "sdpa")  # type: ignore[arg-type]

    return build


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_built_model_is_a_function_of_the_torch_seed(tiny_tokenizer, built) -> None:
    first, again, other = built(tiny_tokenizer, 0), built(tiny_tokenizer, 0), built(tiny_tokenizer, 1)
    assert same_weights(first, again) and not same_weights(first, other)
    assert first.get_input_embeddings().num_embeddings == len(tiny_tokenizer)
    assert first.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert first.config.eos_token_id == tiny_tokenizer.eos_token_id


def test_a_saved_model_loads_by_path(tiny_tokenizer, built, tmp_path: Path) -> None:
    model = built(tiny_tokenizer)
    model.save_pretrained(tmp_path / "base")
    loaded = build_model(ModelConfig(name=str(tmp_path / "base")), tiny_tokenizer, torch.float32, "sdpa")
    assert same_weights(model, loaded)


def test_a_model_that_cannot_load_names_model_name(tiny_tokenizer, built, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(TrainerError, match=rf"^model.name '{missing}': cannot load"):
        build_model(ModelConfig(name=missing), tiny_tokenizer, torch.float32, "sdpa")


def test_an_unknown_architecture_names_model_arch(tiny_tokenizer, built) -> None:
    with pytest.raises(TrainerError, match=r"^model.arch: "):
        build_model(ModelConfig(arch={"model_type": "no-such-model"}), tiny_tokenizer, torch.float32, "sdpa")


def test_a_tokenizer_larger_than_the_embedding_is_refused(tiny_tokenizer, tiny_arch) -> None:
    with pytest.raises(
        TrainerError, match=r"has 300 tokens but the model built from model.arch has 100 embedding rows"
    ):
        build_model(ModelConfig(arch={**tiny_arch, "vocab_size": 100}), tiny_tokenizer, torch.float32, "sdpa")


# ---------------------------------------------------------------------------------------------- its tokenizer
@pytest.mark.slow
def test_a_pretrained_model_trains_with_its_own_tokenizer_when_none_is_named(
    make_config, base_model: Path, tmp_path: Path
) -> None:
    """The tiny config trains a 512-token BPE for its model.arch; switched to a pretrained folder (whose own
    tokenizer has 384 tokens) without naming a tokenizer, it trains with the folder's."""
    switch = [
        "--model.arch",
        "{}",
        "--model.name",
        str(base_model),
        "--train.max_steps",
        "2",
        "--collapse.enabled",
        "false",
    ]
    out = train(load_config(make_config(), ["--output_dir", str(tmp_path / "run"), *switch]))
    own, saved = AutoTokenizer.from_pretrained(base_model), AutoTokenizer.from_pretrained(out / "tokenizer")
    assert len(own) == 384 and saved.get_vocab() == own.get_vocab()
    (config,) = [e for e in read_events(out / METRICS) if e["event"] == "config"]
    assert config["tokenizer"]["tokens"] == 384 and config["tokenizer"]["from"].startswith("the model's own")
    assert config["config"]["tokenizer"]["name"] is None  # the config as written; the event says what ran


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_a_tokenizer_of_another_vocabulary_is_one_line_naming_the_fix(
    make_config, base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Trained on reversed text: its merges, and so the ids past the bytes, are not the base model's.
    import pydoc_data.topics

    texts = [text[::-1] for text in pydoc_data.topics.topics.values()][:40]
    train_bpe(texts, vocab_size=300).save_pretrained(str(tmp_path / "other"))
    train_bpe(texts, vocab_size=500).save_pretrained(str(tmp_path / "larger"))
    argv = ["train", "--config", str(make_config()), "--output_dir", str(tmp_path / "run")]
    argv += ["--model.arch", "{}", "--model.name", str(base_model)]
    line = _one_line_error([*argv, "--tokenizer.name", str(tmp_path / "other")], capsys)
    assert "is not the vocabulary model.name" in line and "use the model's own tokenizer (tokenizer.name: null)" in line
    line = _one_line_error(
        [*argv, "--tokenizer.name", str(tmp_path / "larger"), "--output_dir", str(tmp_path / "b")], capsys
    )
    assert "has 500 tokens but model.name" in line and "384 embedding rows" in line


def test_chats_with_a_tokenizer_without_a_chat_template_are_one_line_naming_data_chat_template(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base model's tokenizer has no chat template: the chat source is refused before anything is read, and
    data.chat_template: chatml renders it."""
    plain = tmp_path / "plain-base"
    shutil.copytree(base_model, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = None
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(str(plain))
    assert AutoTokenizer.from_pretrained(plain).chat_template is None
    chats = tmp_path / "chats.jsonl"
    turns = [[{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]
             for i in range(12)]  # fmt: skip
    chats.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in turns))
    config = tmp_path / "chat.yaml"
    source = {"name": "chats", "kind": "real", "path": str(chats), "messages_field": "messages"}
    data = {"sources": [source], "cache_dir": str(tmp_path / "cache"), "dedup": False}
    config.write_text(yaml.safe_dump({"data": data, "model": {"name": str(plain)}}))
    line = _one_line_error(["inspect", "--config", str(config)], capsys)
    assert "data.sources[0] (chats): chats are rendered with the tokenizer's chat template" in line
    assert "has none; set data.chat_template: chatml" in line
    assert main(["inspect", "--config", str(config), "--data.chat_template", "chatml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sources"][0]["examples"] > 0


def test_dtype_is_as_configured_and_float32_on_cpu_by_default(tiny_tokenizer, tiny_arch) -> None:
    assert resolve_dtype(ModelConfig(dtype="auto"), on_gpu=False) == torch.float32
    assert resolve_dtype(ModelConfig(dtype="bfloat16"), on_gpu=False) == torch.bfloat16
    model = build_model(ModelConfig(arch=dict(tiny_arch)), tiny_tokenizer, torch.bfloat16, "sdpa")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@torch.no_grad()
def test_lora_adapts_only_the_target_modules_and_starts_as_the_base_model(tiny_tokenizer, built) -> None:
    base_logits = built(tiny_tokenizer).eval()(input_ids=IDS).logits
    model = add_lora(built(tiny_tokenizer), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert isinstance(model, PeftModel)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all("lora_" in name and ("q_proj" in name or "v_proj" in name) for name in trainable)
    torch.testing.assert_close(model.eval()(input_ids=IDS).logits, base_logits, rtol=0, atol=0)


def test_lora_r_zero_leaves_every_weight_trainable(tiny_tokenizer, built) -> None:
    model = built(tiny_tokenizer)
    assert add_lora(model, LoraConfig(r=0)) is model
    assert all(p.requires_grad for p in model.parameters())


def test_an_unknown_target_module_names_lora_target_modules(tiny_tokenizer, built) -> None:
    with pytest.raises(TrainerError, match=r"^lora.target_modules \['nope'\]: "):
        add_lora(built(tiny_tokenizer), LoraConfig(target_modules=["nope"]))


def test_lora_with_gradient_checkpointing_trains_the_adapters_without_warnings(tiny_tokenizer, built) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = add_lora(built(tiny_tokenizer, gradient_checkpointing=True), LoraConfig(r=4))
    assert model.base_model.model.is_activation_checkpointing
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for name, g in grads.items() if "lora_B" in name)


def test_a_quantized_run_after_bitsandbytes_was_set_aside_says_to_use_a_process_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from synthmix.trainer.config import QuantizationConfig
    from synthmix.trainer.modeling.model import bnb_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what a run without quantization leaves (libraries)
    with pytest.raises(TrainerError, match="start the quantized run in a process of its own"):
        bnb_config(ModelConfig(quantization=QuantizationConfig(bits=4)), torch.device("cpu"))
