"""Generate a synthetic corpus: continuations of real-text prompts, one JSONL line per sample with provenance.

    python scripts/generate_synthetic.py --model runs/demo/merged --prompts data/real.jsonl --n 1000 \\
        --out data/synthetic.jsonl

The model is a hub name or a local folder (optionally with a peft adapter on top); prompts come from a JSONL
file (one record per line, text in --text-field) or a .txt file (paragraphs separated by blank lines).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Runnable from a checkout without `pip install -e .`: the repository root holds the `trainer` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.errors import TrainerError  # noqa: E402
from trainer.generation import (  # noqa: E402
    GenerationError,
    SamplingConfig,
    add_sampling_arguments,
    generate_corpus,
    sampling_from_args,
)


def read_prompt_texts(path: Path, text_field: str) -> list[str]:
    """The texts of a JSONL file (field `text_field`) or a .txt file (blank-line separated paragraphs)."""
    if not path.is_file():
        raise GenerationError(f"{path}: prompts file does not exist")
    content = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        texts = [block.strip() for block in content.replace("\r\n", "\n").split("\n\n")]
    else:
        texts = [_text_of(line, path, number, text_field) for number, line in _lines(content)]
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise GenerationError(f"{path}: no prompt texts in the file")
    return texts


def _lines(content: str) -> list[tuple[int, str]]:
    return [(number, line) for number, line in enumerate(content.splitlines(), 1) if line.strip()]


def _text_of(line: str, path: Path, number: int, field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise GenerationError(f"{path}:{number}: invalid JSON ({err.msg})") from None
    if not isinstance(record, dict) or field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise GenerationError(f"{path}:{number}: no field {field!r} (found: {keys}); set --text-field")
    if not isinstance(record[field], str):
        raise GenerationError(f"{path}:{number}: field {field!r} is not a string")
    return record[field]


def load_model(name: str, tokenizer_name: str, adapter: str | None, trust_remote_code: bool, device: str):
    """Model (with its adapter, if any) in eval mode on `device`, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Half precision on GPU as stored; float32 on CPU, where bf16 matmuls are slow.
    dtype = "auto" if device == "cuda" else torch.float32
    tokenizer = _load("tokenizer", tokenizer_name, AutoTokenizer.from_pretrained, trust_remote_code=trust_remote_code)
    model = _load("model", name, AutoModelForCausalLM.from_pretrained, dtype=dtype, trust_remote_code=trust_remote_code)
    if adapter:
        from peft import PeftModel

        model = _load("adapter", adapter, lambda path: PeftModel.from_pretrained(model, path))
    return model.to(device).eval(), tokenizer


def _load(what: str, name: str, loader, **kwargs):
    # A name that can only be a path gets a plain "does not exist" instead of the hub's repo-id complaint.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not Path(name).expanduser().exists():
        raise GenerationError(f"{name}: {what} folder does not exist")
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise GenerationError(f"cannot load {what} {name!r}: {first_line}") from err


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; sampling flags map one to one onto SamplingConfig fields."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub name or local folder of a causal LM")
    p.add_argument("--tokenizer", help="hub name or folder (default: --model)")
    p.add_argument("--adapter", help="peft adapter folder applied on top of --model")
    p.add_argument("--prompts", required=True, type=Path, help="JSONL file, or .txt of paragraphs")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--n", type=_positive_int, default=1000, help="samples to write (default: 1000)")
    p.add_argument("--prompt-tokens", type=_positive_int, default=16, help="tokens of real text per prompt")
    p.add_argument("--out", type=Path, default=Path("synthetic.jsonl"), help="output JSONL file")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub to run")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_sampling_arguments(p, SamplingConfig(max_new_tokens=128))
    p.add_argument("--seed", type=int, default=SamplingConfig().seed)
    return p.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; input problems print one line and return exit code 2."""
    args = parse_args(argv)
    try:
        sampling = sampling_from_args(args, args.seed)
        texts = read_prompt_texts(args.prompts, args.text_field)
        model, tokenizer = load_model(
            args.model, args.tokenizer or args.model, args.adapter, args.trust_remote_code, args.device
        )
        generator = args.model + (f" + adapter {args.adapter}" if args.adapter else "")
        written = generate_corpus(
            model, tokenizer, texts, args.n, args.prompt_tokens, sampling,
            generator_name=generator, prompt_file=str(args.prompts), out_path=args.out, progress=True,
        )  # fmt: skip
    except (TrainerError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    print(f"wrote {written} samples to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
