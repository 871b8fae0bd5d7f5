"""The run's tokenizer: loaded by hub name or path, or a byte-level BPE trained on the real text and cached,
and the fingerprint that keys the store's entries (the same tokenizer always gives the same one)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from synthmix.data_mixers.chat_templates import CHAT_TEMPLATES, CHATML_TEMPLATE
from synthmix.data_mixers.config import TokenizerConfig
from synthmix.data_mixers.errors import MixerError
from synthmix.files import atomic_folder

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
_BPE_VERSION = "bpe-v2"


def load_tokenizer(
    config: TokenizerConfig, training_text: Callable[[], Iterable[str]], text_fingerprint: str, cache_dir: Path
) -> PreTrainedTokenizerBase:
    """The tokenizer named by `config.name`, or a BPE trained on `training_text()` (the real training text,
    streamed) and cached in `cache_dir` under a key of `text_fingerprint` (what determines that text) and the
    settings, so a cached one is found without reading the text."""
    if config.name:
        return _from_pretrained(config)
    key = hashlib.sha256(f"{_BPE_VERSION}:{config.vocab_size}:{text_fingerprint}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"tokenizer-{key}"
    if not (folder / "tokenizer.json").is_file():
        trained = train_bpe(training_text(), config.vocab_size)
        # Processes of one launch may train it at once; each writes its own temporary folder, the first wins.
        with atomic_folder(folder, replace=False) as tmp:
            trained.save_pretrained(str(tmp))
    return AutoTokenizer.from_pretrained(str(folder))


def set_chat_template(tokenizer: PreTrainedTokenizerBase, choice: str | None) -> None:
    """Give `tokenizer` the template `data.chat_template` chooses: a name of CHAT_TEMPLATES or a Jinja template;
    None keeps its own."""
    if choice is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(choice, choice)


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (any iterable, streamed), with eos/pad tokens and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    seen = _Counting(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(seen, trainer=trainer)
    if not seen.count:
        raise MixerError(
            "tokenizer.name is null and the model is built from model.arch, so a tokenizer is trained on the real "
            "sources; they are empty"
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None)
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 1_000_000
    return fast


class _Counting:
    """An iterable of texts that counts what it handed out (the BPE trainer takes iterators only once)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = texts
        self.count = 0

    def __iter__(self):
        for text in self.texts:
            self.count += 1
            yield text


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the ids a tokenizer gives: its vocabulary, merges, normalisation and
    special tokens (the fast tokenizer's full JSON), its chat template, and its eos/pad/bos tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    described = {
        "class": type(tokenizer).__name__,
        "model": model,
        "chat_template": tokenizer.chat_template,
        "special": [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def token_dtype(tokenizer: PreTrainedTokenizerBase) -> str:
    """The narrowest dtype every id fits in: uint16 below 65,536 tokens (half the disk and page cache)."""
    return "uint16" if len(tokenizer) <= 1 << 16 else "int32"


def _from_pretrained(config: TokenizerConfig) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(config.name, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise MixerError(f"tokenizer.name {config.name!r}: cannot load ({str(err).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
