"""The FSDP settings a launch asks for, and the merged export built from a model's whole state. (Training
sharded over two processes: tests/trainer/test_distributed.py.)"""

from __future__ import annotations

import pytest
import torch

from synthmix.trainer.distributed.sharding import Sharding, sharding_for_launch
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.model import merged_copy
from synthmix.trainer.runtime.weights import full_model_state

# What `accelerate launch --config_file configs/accelerate/fsdp.yaml` puts in the environment (the part we read).
FSDP_LAUNCH = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_RESHARD_AFTER_FORWARD": "false",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, MyBlock",
    "FSDP_OFFLOAD_PARAMS": "false",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
}


def test_the_launch_configs_fsdp_settings_are_read_and_cleared_for_accelerate() -> None:
    environ = {**FSDP_LAUNCH, "PATH": "/bin"}
    sharding = sharding_for_launch("auto", environ)
    assert sharding == Sharding(
        reshard_after_forward=False,
        layer_classes=("LlamaDecoderLayer", "MyBlock"),
        source="the launch config (distributed_type: FSDP)",
    )
    assert environ == {"PATH": "/bin"}  # accelerate sees a plain data-parallel launch


def test_without_an_fsdp_launch_only_train_sharding_fsdp2_shards() -> None:
    assert sharding_for_launch("auto", {}) is None
    assert sharding_for_launch("none", {}) is None
    assert sharding_for_launch("fsdp2", {}) == Sharding()


@pytest.mark.parametrize(
    ("requested", "changes", "message"),
    [
        ("auto", {"FSDP_VERSION": "1"}, "FSDP version 1; synthmix shards with FSDP2 only"),
        ("auto", {"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "fsdp_auto_wrap_policy: SIZE_BASED_WRAP"),
        ("auto", {"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "set model.gradient_checkpointing: true"),
        ("auto", {"FSDP_RESHARD_AFTER_FORWARD": "sometimes"}, "expected true or false, got 'sometimes'"),
        ("none", {}, "train.sharding: none, but the launch config asks for FSDP"),
    ],
)
def test_fsdp_settings_synthmix_does_not_support_are_refused_by_name(requested, changes, message) -> None:
    with pytest.raises(TrainerError, match=message):
        sharding_for_launch(requested, {**FSDP_LAUNCH, **changes})


def test_fsdp1_strategy_names_map_to_reshard_after_forward() -> None:
    for value, expected in (("FULL_SHARD", True), ("SHARD_GRAD_OP", False), ("true", True)):
        sharding = sharding_for_launch("auto", {**FSDP_LAUNCH, "FSDP_RESHARD_AFTER_FORWARD": value})
        assert sharding is not None and sharding.reshard_after_forward is expected


def test_the_merged_copy_computes_what_the_adapter_does_and_leaves_the_model_alone(tiny_model, tiny_tokenizer) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model(tiny_tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would make the adapter a no-op
            torch.nn.init.normal_(param, std=0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, len(tiny_tokenizer), (2, 12))

    merged = merged_copy(model, full_model_state(model), trust_remote_code=False)

    model.eval()
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, with_adapter, rtol=0, atol=1e-5)
    assert (with_adapter - base).abs().max() > 1e-3  # the adapter changes the output, so equality means something
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert not any("lora_" in name for name, _ in merged.named_parameters())
