"""The run's tokenizer: loaded by hub name or path, or a byte-level BPE trained on the real text and cached."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from data_mixers.config import TokenizerConfig
from data_mixers.errors import MixerError
from synthmix.files import atomic_folder

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# ChatML, so chat data renders the same way as with many hub instruct models.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_tokenizer(config: TokenizerConfig, training_text: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """The tokenizer named by `config.name`, or one trained on `training_text` (cached by content hash)."""
    if config.name:
        return _from_pretrained(config)
    texts = list(training_text)
    if not texts:
        raise MixerError("tokenizer.name is null, so a tokenizer is trained on the real sources; they are empty")
    folder = Path(config.cache_dir) / f"tokenizer-{_fingerprint(texts, config.vocab_size)}"
    if not (folder / "tokenizer.json").is_file():
        # Processes of one launch may train it at once; each writes its own temporary folder, the first wins.
        with atomic_folder(folder, replace=False) as tmp:
            train_bpe(texts, config.vocab_size).save_pretrained(str(tmp))
    return AutoTokenizer.from_pretrained(str(folder))


def train_bpe(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with eos/pad tokens and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None)
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 1_000_000
    return fast


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], add_eos: bool, batch: int = 2048
) -> list[np.ndarray]:
    """Token ids of each plain text, with the tokenizer's own special tokens and an eos appended."""
    eos = tokenizer.eos_token_id
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch):
        for ids in tokenizer(list(texts[start : start + batch]))["input_ids"]:
            if add_eos and eos is not None and (not ids or ids[-1] != eos):
                ids = [*ids, eos]
            out.append(np.asarray(ids, dtype=np.int32))
    return out


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a chat rendered with the chat template, and a mask that is true on assistant turns.

    Each assistant turn's character span comes from rendering growing prefixes of the chat (the prefix with a
    generation prompt marks where the reply starts), which works with any template, no `{% generation %}`
    markers needed; tokens are then assigned to spans by their character offsets.
    """
    if tokenizer.chat_template is None:
        raise MixerError("chat data needs a tokenizer with a chat template; this tokenizer has none")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        # The assistant header ("<|im_start|>assistant") is prompt, not completion: start after it.
        header = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        spans.append((len(header), len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    starts = np.asarray([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        mask |= (starts >= lo) & (starts < hi)
    return ids, mask


def _from_pretrained(config: TokenizerConfig) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(config.name, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise MixerError(f"tokenizer.name {config.name!r}: cannot load ({str(err).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _fingerprint(texts: Sequence[str], vocab_size: int) -> str:
    digest = hashlib.sha256(f"bpe-v1:{vocab_size}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]
