"""Write the example chat corpora of the ready configs: real chats and synthetic chats, JSONL with `messages`.

Real chats answer a question about a standard-library function or class with its docstring, which people wrote
(read from the library's source with `ast`, nothing imported). Synthetic chats ask about other names and are
answered by a word trigram model fitted on the same docstrings (scripts/markov_synthetic.py): model-generated
replies, made without a neural model, reproducible with a seed. Replace both files with your own data.

    python scripts/make_chat_data.py --n 250 --real data/chats.jsonl --synthetic data/synthetic_chats.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from markov_synthetic import fit_trigrams, sample_text

from synthmix.files import atomic_file

QUESTIONS = (
    "What does `{name}` do?",
    "Explain `{name}` from Python's standard library.",
    "I found `{name}` in some code. What is it for?",
    "Can you describe `{name}`?",
)
FOLLOW_UP = "Thanks. In one sentence?"
MAX_CHARS = 1200


def documented_names() -> Iterator[tuple[str, str]]:
    """(module.name, docstring) for the standard library's documented top-level functions and classes."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and 120 <= len(doc) <= MAX_CHARS:
                    yield f"{path.stem}.{node.name}", " ".join(doc.split())


def chat(name: str, answer: str, rng: random.Random) -> list[dict[str, str]]:
    """A question about `name` and its answer; every fourth chat asks for the short version too."""
    turns = [
        {"role": "user", "content": rng.choice(QUESTIONS).format(name=name)},
        {"role": "assistant", "content": answer},
    ]
    if rng.random() < 0.25:
        short = answer.split(". ")[0].rstrip(".") + "."
        turns += [{"role": "user", "content": FOLLOW_UP}, {"role": "assistant", "content": short}]
    return turns


def write(path: Path, chats: list[dict]) -> None:
    with atomic_file(path) as out:
        for line in chats:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {len(chats)} chats to {path}")


def main(argv: list[str] | None = None) -> None:
    """Pick the names, write the real chats, fit the trigrams on every docstring, write the synthetic chats."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=250, help="chats in each file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", type=Path, default=Path("data/chats.jsonl"))
    parser.add_argument("--synthetic", type=Path, default=Path("data/synthetic_chats.jsonl"))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    documented = list(documented_names())
    rng.shuffle(documented)
    real, others = documented[: args.n], documented[args.n : 2 * args.n]
    write(args.real, [{"messages": chat(name, doc, rng), "source": "python docstring"} for name, doc in real])
    table = fit_trigrams([doc for _, doc in documented])
    synthetic = [
        {
            "messages": chat(name, sample_text(table, rng, max_words=90), rng),
            "generator": "word-trigram(python docstrings)",
            "sampling": {"model": "word-trigram", "max_words": 90, "seed": args.seed},
        }
        for name, _ in others
    ]
    write(args.synthetic, synthetic)


if __name__ == "__main__":
    main()
