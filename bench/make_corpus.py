"""Generate the data benchmark's corpora: JSONL files of realistic size and text, and the tokenizer they share.

    .venv/bin/python bench/make_corpus.py --out bench/.data            # 200k real + 60k synthetic + 50k chats

Texts are made of the human-written passages that ship with Python (the reference manual's topics and the
standard library's docstrings: English prose and code), so tokenizing them costs what real text costs:
- real: 2-5 passages per text (mean about 1,600 characters, 400 tokens), each text ending with its own number
  so no two are equal (dedup keeps them all);
- synthetic: 3-6 passages (1.3x longer, as generated text often is);
- chats: a system prompt, a user question (the first sentence of a passage), and an answer (2-4 passages):
  median about 400 tokens, assistant-only loss, for the packing comparison.
Each corpus is also written as the first 10% and 33% of its lines, for the benchmark's size series. The
tokenizer is a 4,096-token byte-level BPE trained on the same passages, saved as a folder.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = {"10": 0.10, "33": 0.33, "100": 1.0}


def passages() -> list[str]:
    """The human-written passages the texts are made of."""
    from synthmix.data_mixers.builtin import builtin_texts

    return builtin_texts("python_docs") + builtin_texts("python_docstrings")


def texts(pool: list[str], count: int, low: int, high: int, seed: int, tag: str) -> list[str]:
    """`count` texts of `low`-`high` random passages each, every one unique (it ends with its number)."""
    rng = random.Random(seed)
    return ["\n\n".join(rng.choices(pool, k=rng.randint(low, high))) + f"\n\n({tag} {i})" for i in range(count)]


def chats(pool: list[str], count: int, seed: int) -> list[list[dict[str, str]]]:
    """`count` conversations: system prompt, a question made from a passage's first sentence, an answer."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        question = re.split(r"(?<=[.?!])\s", rng.choice(pool), maxsplit=1)[0][:300]
        answer = "\n\n".join(rng.choices(pool, k=rng.choice([2, 3, 3, 4])))
        out.append(
            [
                {"role": "system", "content": "You answer questions about Python precisely."},
                {"role": "user", "content": f"{question} (question {i})"},
                {"role": "assistant", "content": answer},
            ]
        )
    return out


def write(path: Path, records: list[dict]) -> None:
    """JSONL, plus the first 10% and 33% of its lines as PATH-10.jsonl and PATH-33.jsonl."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    for suffix, share in SIZES.items():
        target = path if suffix == "100" else path.with_name(f"{path.stem}-{suffix}{path.suffix}")
        target.write_text("".join(lines[: max(1, round(share * len(lines)))]), encoding="utf-8")


def main() -> None:
    """Write the corpora and the tokenizer into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / ".data")
    parser.add_argument("--real", type=int, default=200_000)
    parser.add_argument("--synthetic", type=int, default=60_000)
    parser.add_argument("--chats", type=int, default=50_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pool = passages()
    write(args.out / "real.jsonl", [{"text": t} for t in texts(pool, args.real, 2, 5, 1, "real text")])
    write(args.out / "synthetic.jsonl", [{"text": t} for t in texts(pool, args.synthetic, 3, 6, 2, "sample")])
    write(args.out / "chats.jsonl", [{"messages": c} for c in chats(pool, args.chats, 3)])
    from synthmix.data_mixers.tokenizer import train_bpe

    train_bpe(pool, 4096).save_pretrained(str(args.out / "tokenizer"))
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.glob("*.jsonl"))}
    print(json.dumps({"out": str(args.out), "bytes": sizes}, indent=1))


if __name__ == "__main__":
    main()
