"""The model: a pretrained causal LM by hub name or path, or one built from a config, with LoRA adapters."""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch.distributed.tensor import DTensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from synthmix.extras import install_command
from synthmix.trainer.config import LoraConfig, ModelConfig, RunConfig
from synthmix.trainer.errors import TrainerError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(config: ModelConfig, on_gpu: bool) -> torch.dtype:
    """The weights' dtype: as configured, or bfloat16 on a GPU that supports it and float32 otherwise."""
    if config.dtype != "auto":
        return DTYPES[config.dtype]
    return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32


def build_model(
    config: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    attention: str,
    device: torch.device | None = None,
) -> PreTrainedModel:
    """The base model in `dtype` with `attention` (a resolved attn_implementation), quantized on `device` when
    `model.quantization` asks for it; a built one is initialised from the current torch seed."""
    quantization = bnb_config(config, device or torch.device("cpu"))
    if config.name is not None:
        model = _from_pretrained(config, config.name, dtype, attention, quantization, device)
    else:
        arch = dict(config.arch)
        model_type = arch.pop("model_type")
        arch.setdefault("vocab_size", len(tokenizer))
        arch.setdefault("pad_token_id", tokenizer.pad_token_id)
        arch.setdefault("eos_token_id", tokenizer.eos_token_id)
        arch.setdefault("bos_token_id", tokenizer.bos_token_id)
        try:
            model_config = AutoConfig.for_model(model_type, **arch)
        except (ValueError, TypeError) as err:
            raise TrainerError(f"model.arch: {err}") from None
        model_config._attn_implementation = attention
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
        if quantization is not None:  # bitsandbytes quantizes while loading: save the built weights, load them
            with tempfile.TemporaryDirectory(prefix="synthmix-base-") as folder:
                model.save_pretrained(folder)
                model = _from_pretrained(config, folder, dtype, attention, quantization, device)
    check_tokenizer_fits(model, tokenizer, config)
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # the older name warns from 5.24 on
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: ModelConfig) -> None:
    """The tokenizer's ids must mean what they meant when the model was trained: every id has an embedding row,
    and a pretrained model's own tokenizer (when it ships one) gives each shared token the same id."""
    rows = model.get_input_embeddings().num_embeddings
    name = tokenizer.name_or_path
    model_name = f"model.name {config.name!r}" if config.name else "the model built from model.arch"
    if len(tokenizer) > rows:
        vocab = getattr(model.config.get_text_config(), "vocab_size", rows)
        raise TrainerError(
            f"tokenizer {name!r} has {len(tokenizer):,} tokens but {model_name} has {rows:,} embedding rows "
            f"(config.vocab_size {vocab:,}): ids from {rows:,} on have no embedding; use the model's own tokenizer "
            "(tokenizer.name: null)"
        )
    if config.name is None or name == config.name:
        return
    own = _own_tokenizer(config)
    if own is None:
        return
    own_ids = own.get_vocab()
    moved = [(token, i, own_ids[token]) for token, i in tokenizer.get_vocab().items() if own_ids.get(token, i) != i]
    if moved:
        token, i, j = moved[0]
        raise TrainerError(
            f"tokenizer {name!r} is not the vocabulary {model_name} was trained with: {len(moved):,} tokens have "
            f"other ids than in the model's own tokenizer (e.g. {token!r}: {i} vs {j}); use the model's own "
            "tokenizer (tokenizer.name: null)"
        )


def _own_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase | None:
    """The tokenizer that ships with a pretrained model, or None when it ships none."""
    try:
        return AutoTokenizer.from_pretrained(config.name, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError, TypeError):
        return None


def _from_pretrained(
    config: ModelConfig,
    name: str,
    dtype: torch.dtype,
    attention: str,
    quantization: BitsAndBytesConfig | None,
    device: torch.device | None,
) -> PreTrainedModel:
    extra: dict[str, Any] = {}
    if quantization is not None:
        # Quantized where it trains: accelerate refuses to move a quantized model to another device.
        extra = {"quantization_config": quantization, "device_map": {"": device or torch.device("cpu")}}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation=attention, trust_remote_code=config.trust_remote_code, **extra
        )
    except (OSError, ValueError) as err:
        raise TrainerError(f"model.name {config.name or name!r}: cannot load ({str(err).splitlines()[0]})") from None
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights for a CPU inference kernel at the first no-grad forward (the collapse
        # hook's), rounding their scales to bfloat16, and packs them back when a state dict is taken: evaluating
        # or checkpointing would change the base model. Training runs keep the one packing they load with.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def bnb_config(config: ModelConfig, device: torch.device) -> BitsAndBytesConfig | None:
    """bitsandbytes' settings for `model.quantization` (None when the base is not quantized)."""
    quantization = config.quantization
    if quantization.bits is None:
        return None
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        raise TrainerError(
            "model.quantization.bits: an earlier run in this process quantized nothing, so bitsandbytes was set "
            "aside for the process (synthmix.libraries); start the quantized run in a process of its own"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainerError(f"model.quantization.bits needs bitsandbytes: {install_command('quantization')}") from None
    # Its 8-bit matmul logs a warning on every call where inputs are not float16 (always, on CPU).
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = quantization.compute_dtype
    if compute == "auto":
        on_gpu = device.type == "cuda"
        compute_dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    else:
        compute_dtype = DTYPES[compute]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether the base weights are bitsandbytes-quantized (4 or 8 bits)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def peft_lora_config(config: LoraConfig) -> PeftLoraConfig:
    """The peft LoraConfig that the run's `lora` section describes (also given to TRL by the benchmark)."""
    return PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        modules_to_save=config.modules_to_save or None,
        init_lora_weights=True if config.init == "default" else config.init,
    )


def add_lora(model: PreTrainedModel, config: LoraConfig) -> PreTrainedModel | PeftModel:
    """Wrap `model` with LoRA adapters (base weights frozen); with r = 0 every weight stays trainable."""
    if config.r == 0:
        return model
    peft_config = peft_lora_config(config)
    if is_quantized(model):
        # Layer norms and embeddings to float32 and gradients into the inputs, as QLoRA training needs.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing`, which warns on every call.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, peft_config)
    except ValueError as err:
        raise TrainerError(f"lora.target_modules {config.target_modules}: {str(err).splitlines()[0]}") from None
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # the older name warns from 5.24 on
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        peft_model.enable_input_require_grads()
    return peft_model


def merged_copy(model: PeftModel, full_state: dict[str, torch.Tensor], trust_remote_code: bool) -> PreTrainedModel:
    """A CPU copy of `model` with its adapters merged into the base weights, built from `full_state` (the whole
    model's state, as gathered from every process when training is sharded); `model` itself is left as it is."""
    peft_config = dataclasses.replace(model.peft_config[model.active_adapter], init_lora_weights=True)
    live = {p.data_ptr() for p in model.parameters() if not isinstance(p, DTensor)}
    # The copy must not share storage with the live model: merging adds to the base weights in place.
    state = {k: v.clone() if v.data_ptr() in live else v for k, v in full_state.items()}
    with init_empty_weights(include_buffers=False):  # weights on the meta device until the state is assigned
        base = AutoModelForCausalLM.from_config(model.get_base_model().config, trust_remote_code=trust_remote_code)
        copy = get_peft_model(base, peft_config)
    copy.load_state_dict(state, assign=True, strict=True)
    merged = copy.merge_and_unload()
    merged.tie_weights()
    return merged


def check_positions(model: PreTrainedModel, config: RunConfig) -> None:
    """A loaded hub model's position limit, which config validation could not know before the download."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.train.seq_len > limit:
        raise TrainerError(
            f"train.seq_len: {config.train.seq_len} is more than the model's max_position_embeddings ({limit})"
        )


def load_for_sampling(
    name: str, tokenizer_name: str, adapter: str | None, trust_remote_code: bool, device: str
) -> tuple[Any, PreTrainedTokenizerBase]:
    """A model to sample from (with its peft adapter, if any) in eval mode on `device`, and its tokenizer."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Half precision on GPU as stored; float32 on CPU, where bf16 matmuls are slow.
    dtype = "auto" if device == "cuda" else torch.float32
    tokenizer = _load("tokenizer", tokenizer_name, AutoTokenizer.from_pretrained, trust_remote_code=trust_remote_code)
    model = _load("model", name, AutoModelForCausalLM.from_pretrained, dtype=dtype, trust_remote_code=trust_remote_code)
    if adapter:
        model = _load("adapter", adapter, lambda path: PeftModel.from_pretrained(model, path))
    return model.to(device).eval(), tokenizer


def _load(what: str, name: str, loader: Callable[..., Any], **kwargs: Any) -> Any:
    # A name that can only be a path gets a plain "does not exist" instead of the hub's repo-id complaint.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not Path(name).expanduser().exists():
        raise TrainerError(f"{name}: {what} folder does not exist")
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise TrainerError(f"cannot load {what} {name!r}: {first_line}") from None
