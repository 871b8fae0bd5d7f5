"""Sharded training with FSDP2 (torch's `fully_shard`): the base model's weights, the adapters, their gradients
and optimizer state split over the processes, on GPUs and on CPU alike.

accelerate 1.15 turns on its own FSDP only for GPU-like devices (on CPU it falls back to plain data parallel
and leaves the model whole). So the trainer reads the launch config's FSDP settings itself, clears them before
the Accelerator is built (accelerate then sets up the process group, device and autocast, nothing more), and
shards the model here: one code path, the same on the CPU of the tests and on the GPUs of a cluster.

The transformers model inside the peft wrapper is the root of the sharding, so `generate` (which peft hands
straight to it) all-gathers the weights like a training forward does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import torch
from peft import PeftModel
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from synthmix.trainer.errors import TrainerError

# What `accelerate launch` sets from a config's fsdp_config section (accelerate/utils/launch.py).
_ACCELERATE_FSDP_VARIABLES = ("ACCELERATE_USE_FSDP", "FSDP_VERSION")
_FALSE, _TRUE = ("false", "0", ""), ("true", "1")


@dataclasses.dataclass(frozen=True)
class Sharding:
    """How the model is sharded, from the launch config (or `train.sharding: fsdp2` under torchrun)."""

    reshard_after_forward: bool = True
    """Free each layer's gathered weights after its forward (FULL_SHARD); false keeps them (SHARD_GRAD_OP)."""
    layer_classes: tuple[str, ...] = ()
    """Module classes sharded one by one (empty: the model's own `_no_split_modules`, its decoder layers)."""
    offload_params: bool = False
    """Keep the shards in CPU memory between uses (GPU only)."""
    source: str = "train.sharding"


def sharding_for_launch(requested: str, environ: MutableMapping[str, str] | None = None) -> Sharding | None:
    """The sharding this launch asks for (`requested` is train.sharding: auto, none or fsdp2), or None.

    Reads and removes accelerate's FSDP variables from `environ` (the process environment by default), so the
    Accelerator built next does not try its own FSDP set-up.
    """
    environ = os.environ if environ is None else environ
    from_launch = _launch_sharding(environ)
    for name in [key for key in environ if key in _ACCELERATE_FSDP_VARIABLES or key.startswith("FSDP_")]:
        del environ[name]
    if requested == "none":
        if from_launch is not None:
            raise TrainerError(
                "train.sharding: none, but the launch config asks for FSDP (distributed_type: FSDP); "
                "launch with configs/accelerate/ddp.yaml or set train.sharding to auto"
            )
        return None
    if requested == "fsdp2":
        return from_launch or Sharding()
    return from_launch


def _launch_sharding(environ: Mapping[str, str]) -> Sharding | None:
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() not in _TRUE:
        return None
    version = environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise TrainerError(
            f"the launch config asks for FSDP version {version}; synthmix shards with FSDP2 only: "
            "set fsdp_config.fsdp_version: 2 (see configs/accelerate/fsdp.yaml)"
        )
    wrap = environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if wrap not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise TrainerError(
            f"fsdp_config.fsdp_auto_wrap_policy: {wrap} is not supported; use TRANSFORMER_BASED_WRAP "
            "(decoder layers are sharded one by one)"
        )
    if _flag(environ, "FSDP_ACTIVATION_CHECKPOINTING"):
        raise TrainerError(
            "fsdp_config.fsdp_activation_checkpointing: set model.gradient_checkpointing: true in the run "
            "config instead (one switch for every launch)"
        )
    classes = environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    return Sharding(
        reshard_after_forward=_reshard_after_forward(environ.get("FSDP_RESHARD_AFTER_FORWARD", "true")),
        layer_classes=tuple(name.strip() for name in classes.split(",") if name.strip()),
        offload_params=_flag(environ, "FSDP_OFFLOAD_PARAMS"),
        source="the launch config (distributed_type: FSDP)",
    )


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").lower() in _TRUE


def _reshard_after_forward(value: str) -> bool:
    # FSDP2 takes a bool; accelerate also passes FSDP1's strategy names through this variable.
    lowered = value.lower()
    if lowered in _TRUE or lowered in ("full_shard", "hybrid_shard"):
        return True
    if lowered in _FALSE or lowered in ("shard_grad_op", "_hybrid_shard_zero2"):
        return False
    raise TrainerError(f"fsdp_config.fsdp_reshard_after_forward: expected true or false, got {value!r}")


def shard(
    model: torch.nn.Module, sharding: Sharding, device: torch.device, world_size: int, compute_dtype: torch.dtype | None
) -> dict[str, Any]:
    """Shard `model` in place over the processes with `fully_shard` (collective: call on every rank, before the
    optimizer is built); `compute_dtype` is the autocast dtype, if any. Returns the description that the run's
    config event records."""
    if sharding.offload_params and device.type == "cpu":
        raise TrainerError("fsdp_config.fsdp_offload_params: the model already lives in CPU memory; set it false")
    root = model.get_base_model() if isinstance(model, PeftModel) else model
    classes = sharding.layer_classes or tuple(getattr(root, "_no_split_modules", None) or ())
    layers = [module for module in root.modules() if type(module).__name__ in classes]
    if not layers:
        raise TrainerError(
            f"FSDP: the model has no module of class {', '.join(classes) or '(none named)'} to shard; name its "
            "decoder layer class with fsdp_config.fsdp_transformer_layer_cls_to_wrap"
        )
    described = f"{len(layers)} x {type(layers[0]).__name__} + {type(root).__name__}"  # fully_shard renames them
    options: dict[str, Any] = {
        "mesh": init_device_mesh(device.type, (world_size,)),
        # Weights are gathered in the autocast dtype; gradients are reduced in float32.
        "mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy() if sharding.offload_params else OffloadPolicy(),
        "reshard_after_forward": sharding.reshard_after_forward,
    }
    for layer in layers:
        fully_shard(layer, **options)
    # The root (embeddings, final norm, output head) stays gathered from its forward to the end of the backward,
    # as FSDP2 does by default for a root: the loss applies the output head to the hidden states after the
    # model's forward has returned.
    fully_shard(root, **{**options, "reshard_after_forward": False})
    return {
        "version": 2,
        "reshard_after_forward": sharding.reshard_after_forward,
        "strategy": "FULL_SHARD" if sharding.reshard_after_forward else "SHARD_GRAD_OP",
        "sharded_modules": described,
        "mesh": [world_size],
        "offload_params": sharding.offload_params,
        "from": sharding.source,
    }


def gradient_sync(accelerator: Any, model: torch.nn.Module, sharded: bool, enabled: bool) -> Any:
    """Context for one micro-batch: `enabled` false skips the gradient reduction (all but the last micro-batch
    of a step), through FSDP2's switch when `sharded`, accelerate's (DDP's `no_sync`) otherwise."""
    if enabled:
        return contextlib.nullcontext()
    return _fsdp_no_sync(model) if sharded else accelerator.no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model: torch.nn.Module) -> Iterator[None]:
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_requires_gradient_sync(True, recurse=False)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (DTensor) made whole; a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the parameters of `model` are DTensor shards."""
    return any(isinstance(p, DTensor) for p in model.parameters())
