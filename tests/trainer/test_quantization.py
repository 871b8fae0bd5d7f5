"""What peft users expect: a 4- or 8-bit base (QLoRA through bitsandbytes, which runs on CPU too) that trains,
checkpoints and resumes bit for bit; DoRA, rsLoRA, all-linear targets, modules_to_save and PiSSA/OLoRA
initialisation passed through to peft; and the combinations that cannot work refused by key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_loop import QUICK
from testkit import run_config

from synthmix.errors import ConfigError
from synthmix.trainer.config import LoraConfig, load_config
from synthmix.trainer.modeling.model import add_lora
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.loop import fit, train
from synthmix.trainer.runtime.setup import setup

ADAPTER = "adapter/adapter_model.safetensors"
# bitsandbytes' CPU 4-bit kernel needs every linear layer's input width to be a multiple of its 64-wide blocks
# (0.50.2 fails on the tiny model's 32: "shape '[32, 0]' is invalid").
QUANTIZED = {"quantization": {"bits": 4}, "arch": {"hidden_size": 64, "intermediate_size": 128}}


def train_then_resume_from_the_middle(config_path: Path, tmp_path: Path) -> tuple[Path, Path, object]:
    """Train straight to the end, then again from the first mid-run checkpoint; returns both run folders and
    the straight run (model in memory)."""
    straight = tmp_path / "straight"
    run = setup(run_config(config_path, straight), resume=None)
    try:
        fit(run)
    finally:
        run.close()
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "adapter")
    middle = min((resumed / "checkpoints").iterdir(), key=lambda p: int(p.name.removeprefix("step-")))
    train(run_config(config_path, resumed), resume=str(middle))
    return straight, resumed, run


@pytest.mark.slow
def test_a_4bit_base_trains_checkpoints_and_resumes_bit_for_bit(make_config, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    changes = {**QUICK, "model": QUANTIZED, "train": {"max_steps": 9}}
    path = make_config({**changes, "checkpoint": {"every_steps": 4, "keep_last": 5}})
    straight, resumed, run = train_then_resume_from_the_middle(path, tmp_path)

    quantized = [m for m in run.unwrapped.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.dtype == torch.uint8 for m in quantized)  # packed 4-bit blocks
    [config] = [e for e in read_events(straight / METRICS) if e["event"] == "config"]
    assert config["quantization"]["load_in_4bit"] and config["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert config["quantization"]["bnb_4bit_use_double_quant"]
    losses = [e["loss"] for e in read_events(straight / METRICS) if e["event"] == "train"]
    assert len(losses) == 9 and all(map(torch.isfinite, torch.tensor(losses)))
    assert (resumed / ADAPTER).read_bytes() == (straight / ADAPTER).read_bytes()


@pytest.mark.slow
def test_an_8bit_base_trains(make_config, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    config = run_config(
        make_config({**QUICK, "model": {"quantization": {"bits": 8}}, "train": {"max_steps": 2}}), tmp_path
    )
    run = setup(config, resume=None)
    try:
        fit(run)
    finally:
        run.close()
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in run.unwrapped.modules())
    losses = [e["loss"] for e in read_events(tmp_path / METRICS) if e["event"] == "train"]
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    # peft starts every lora_B at zero: a non-zero one is an adapter that the quantized base's gradients moved.
    saved = load_file(str(tmp_path / ADAPTER))
    lora_b = [tensor for name, tensor in saved.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().max() > 0 for tensor in lora_b)


@pytest.mark.slow
def test_dora_rslora_all_linear_and_modules_to_save_reach_peft_and_resume_bit_for_bit(make_config, tmp_path) -> None:
    lora = {"use_dora": True, "use_rslora": True, "target_modules": "all-linear", "modules_to_save": ["lm_head"]}
    path = make_config({**QUICK, "lora": lora, "train": {"max_steps": 9}, "checkpoint": {"every_steps": 4}})
    straight, resumed, run = train_then_resume_from_the_middle(path, tmp_path)

    saved = json.loads((straight / "adapter" / "adapter_config.json").read_text())
    assert saved["use_dora"] and saved["use_rslora"] and saved["modules_to_save"] == ["lm_head"]
    adapted = {name.split(".")[-1] for name, _ in run.unwrapped.named_modules() if hasattr(_, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [name for name, p in run.unwrapped.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert (resumed / ADAPTER).read_bytes() == (straight / ADAPTER).read_bytes()


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
def test_pissa_and_olora_start_from_the_base_models_own_output(tiny_model, tiny_tokenizer, init: str) -> None:
    model = tiny_model(tiny_tokenizer)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 10))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        base_q = model.model.layers[0].self_attn.q_proj.weight.clone()
    adapted = add_lora(model, LoraConfig(r=4, alpha=4, dropout=0.0, init=init, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        after = adapted(input_ids=ids).logits
    # The adapter holds the principal (or QR) part of each weight, the base the residual: the same model.
    torch.testing.assert_close(after, before, rtol=0, atol=1e-3)
    assert not torch.equal(adapted.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight, base_q)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lora": {"r": 0}}, "model.quantization.bits: 4-bit weights cannot be trained in full; set lora.r > 0"),
        ({"lora": {"init": "pissa"}}, "lora.init: pissa decomposes the base weights, which model.quantization.bits"),
        ({"train": {"merge_adapter": True}}, "train.merge_adapter: the base is quantized \\(4-bit\\); merge the"),
        ({"train": {"sharding": "fsdp2"}}, "train.sharding: fsdp2 cannot shard a bitsandbytes-quantized base"),
    ],
)
def test_what_a_quantized_base_cannot_do_is_refused_by_key(make_config, changes: dict, message: str) -> None:
    path = make_config({"model": {"quantization": {"bits": 4}}, **changes})
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_an_unknown_lora_init_is_refused_by_key(make_config) -> None:
    with pytest.raises(ConfigError, match="lora.init: expected one of default, gaussian, pissa, olora, orthogonal"):
        load_config(make_config({"lora": {"init": "svd"}}))
