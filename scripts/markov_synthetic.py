"""Write a synthetic corpus sampled from a word trigram model of a builtin real corpus.

The stand-in generator for `configs/tiny.yaml` and the tests: a real (if small) language model, fitted on
the real text and sampled with a fixed seed, so the data is model-generated and reproducible without a
neural model. `synthmix generate` samples from a causal LM instead.

    python scripts/markov_synthetic.py --corpus python_docs --n 400 --out data/tiny_synthetic.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

from synthmix.data_mixers.builtin import BUILTIN_CORPORA, builtin_texts
from synthmix.files import atomic_file

Context = tuple[str, str]


def fit_trigrams(texts: list[str]) -> dict[Context, list[str]]:
    """Next-word lists per two-word context (repeats kept, so sampling follows the counts)."""
    table: dict[Context, list[str]] = defaultdict(list)
    for text in texts:
        words = ["<s>", "<s>", *re.findall(r"\S+", text), "</s>"]
        for a, b, c in zip(words, words[1:], words[2:]):
            table[(a, b)].append(c)
    return table


def sample_text(table: dict[Context, list[str]], rng: random.Random, max_words: int) -> str:
    """One text by ancestral sampling from the trigram table."""
    context: Context = ("<s>", "<s>")
    words: list[str] = []
    while len(words) < max_words:
        word = rng.choice(table[context])
        if word == "</s>":
            break
        words.append(word)
        context = (context[1], word)
    return " ".join(words)


def main(argv: list[str] | None = None) -> None:
    """Fit, sample and write the corpus atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=BUILTIN_CORPORA, default="python_docs")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--max-words", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    table = fit_trigrams(builtin_texts(args.corpus))
    rng = random.Random(args.seed)
    sampling = {"model": "word-trigram", "max_words": args.max_words, "seed": args.seed}
    with atomic_file(args.out) as out:
        for i in range(args.n):
            text = sample_text(table, rng, args.max_words)
            line = {
                "text": text,
                "generator": f"word-trigram({args.corpus})",
                "prompt_source": {"corpus": args.corpus, "index": i},
                "sampling": sampling,
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {args.n} examples to {args.out}")


if __name__ == "__main__":
    main()
