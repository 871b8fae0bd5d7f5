"""The trainable weights and the optimizer state as stateful objects (torch's `Stateful` protocol).

`TrainableWeights` and `OptimizerState` are whole on the main process whatever the launch: sharded parameters
(FSDP2) are gathered through torch.distributed.checkpoint's state-dict API; whole ones (one process, DDP) are
read directly, by parameter name, in the same format. `ShardedTrainingState` is the other way, for full
fine-tuning under FSDP2: every process keeps its own shard of both, which torch.distributed.checkpoint writes
and reads rank by rank, so no process ever holds the whole model and its Adam state. (The state-dict API walks
`model.state_dict()`, every frozen module included, and bitsandbytes' layers rewrite their packed weights or
fail when asked for theirs.)

Weights are keyed by the model's own parameter names in memory and stored in peft's adapter format (or as
the full model with `lora.r: 0`), so a checkpoint's `adapter/` loads with `PeftModel.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from synthmix.files import disk_full_is_an_error
from synthmix.trainer.distributed.sharding import is_sharded
from synthmix.trainer.errors import TrainerError

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_SHARDS = StateDictOptions(ignore_frozen_params=True)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _scatter_options(strict: bool) -> StateDictOptions:
    # The main process's full state is sent to every rank (and sharded there, when parameters are sharded).
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=_distributed(), strict=strict)


class TrainableWeights:
    """The parameters that training changes (the adapter, or every weight with `lora.r: 0`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @property
    def folder_name(self) -> str:
        """`adapter` for a peft model, `model` for full training."""
        return "adapter" if isinstance(self.model, PeftModel) else "model"

    def trainable_names(self) -> set[str]:
        """Names of the trainable parameters (a tied weight under its first name only)."""
        return {name for name, param in self.model.named_parameters() if param.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor, whole, on the CPU of the main process (collective: call on every rank)."""
        if is_sharded(self.model):
            return get_model_state_dict(self.model, options=_GATHER)
        return {name: p.detach().cpu() for name, p in self.model.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put `state` (from `state_dict` or `read`) into the model; names must match its trainable parameters."""
        missing = self.trainable_names() - state.keys()
        if missing:
            raise TrainerError(
                f"the checkpoint's weights do not fit this model: {len(missing)} trainable tensors are missing "
                f"(e.g. {sorted(missing)[0]}); did lora.r, lora.target_modules or the model change?"
            )
        try:
            if is_sharded(self.model):
                set_model_state_dict(self.model, state, options=_scatter_options(strict=False))
                return
            with torch.no_grad():
                for name, param in self.model.named_parameters():
                    if param.requires_grad:
                        param.copy_(state[name])
        except RuntimeError as err:
            raise TrainerError(f"the checkpoint's weights do not fit this model ({str(err).splitlines()[0]})") from None

    def save(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        """Write `state` in the model's own format: a peft adapter folder, or a transformers model folder."""
        with disk_full_is_an_error(folder):
            self.model.save_pretrained(str(folder), state_dict=state)

    def read(self, folder: Path) -> dict[str, torch.Tensor]:
        """The state that `save` wrote into `folder`, keyed by parameter name again."""
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise TrainerError(f"{folder}: no .safetensors weights in it")
        saved: dict[str, torch.Tensor] = {}
        for file in files:
            saved.update(load_file(str(file)))
        if not isinstance(self.model, PeftModel):
            return saved
        names = peft_names(self.model)
        unknown = saved.keys() - names.keys()
        if unknown:
            raise TrainerError(f"{folder}: adapter tensor {sorted(unknown)[0]} does not belong to this model's LoRA")
        return {names[key]: tensor for key, tensor in saved.items()}


class WeightsCodec:
    """A checkpoint part stored as the model's own folder format (see `TrainableWeights.save`)."""

    def __init__(self, weights: TrainableWeights) -> None:
        self.weights = weights

    def filename(self, name: str) -> str:
        return self.weights.folder_name

    def write(self, path: Path, state: Any) -> None:
        self.weights.save(path, state)

    def read(self, path: Path) -> Any:
        return self.weights.read(path)


class OptimizerState:
    """The optimizer's state keyed by parameter name, whole on the main process (collective)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the real one

    def state_dict(self) -> dict[str, Any]:
        if is_sharded(self.model):
            return get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        # The state-dict API's format: per-parameter state and param groups keyed by parameter name.
        names = self._names_in_optimizer_order()
        plain = self.optimizer.state_dict()
        return {
            "state": {names[index]: state for index, state in plain["state"].items()},
            "param_groups": [
                {**group, "params": [names[i] for i in group["params"]]} for group in plain["param_groups"]
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            if is_sharded(self.model):
                set_optimizer_state_dict(self.model, self.optimizer, state, options=_scatter_options(strict=True))
                return
            index = {name: i for i, name in enumerate(self._names_in_optimizer_order())}
            self.optimizer.load_state_dict(
                {
                    "state": {index[name]: value for name, value in state["state"].items()},
                    "param_groups": [
                        {**group, "params": [index[name] for name in group["params"]]}
                        for group in state["param_groups"]
                    ],
                }
            )
        except (KeyError, ValueError, RuntimeError) as err:
            raise TrainerError(f"the checkpoint's optimizer state does not fit this model ({err})") from None

    def _names_in_optimizer_order(self) -> list[str]:
        # torch numbers the optimizer's parameters in the order of its param groups.
        names = {id(param): name for name, param in self.model.named_parameters()}
        return [names[id(param)] for group in self.optimizer.param_groups for param in group["params"]]


class ShardedTrainingState:
    """The trainable weights and the optimizer state of a sharded model, each process its own shards (DTensors):
    what torch.distributed.checkpoint saves and loads rank by rank (collective: every process takes part)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = getattr(optimizer, "optimizer", optimizer)

    def state_dict(self) -> dict[str, Any]:
        # On load, torch.distributed.checkpoint asks for this too, as the template it reads each shard into.
        return {
            "model": get_model_state_dict(self.model, options=_SHARDS),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=_SHARDS),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            set_model_state_dict(self.model, state["model"], options=_SHARDS)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=_SHARDS)
        except (KeyError, ValueError, RuntimeError) as err:
            raise TrainerError(
                f"the checkpoint's sharded weights and optimizer state do not fit this model ({err}); did the "
                "model or lora.r change?"
            ) from None


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of `model` (frozen ones too), whole, on the CPU of the main process; an empty dict on the
    others (collective: call on every rank)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def peft_names(model: PeftModel) -> dict[str, str]:
    """{name in peft's adapter files: parameter name in memory}, for every trainable parameter.

    peft's own renaming (dropping the adapter name, keeping modules_to_save) is applied to placeholder tensors
    that carry each parameter's position, so the mapping follows whatever rules peft uses.
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    placeholders = {name: torch.tensor(i) for i, name in enumerate(names)}
    renamed = get_peft_model_state_dict(model, state_dict=placeholders)
    return {key: names[int(value)] for key, value in renamed.items()}
