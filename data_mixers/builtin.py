"""Human-written corpora that ship with Python itself, so demos and tests need no download.

`python_docs`: the reference-manual topics behind `help()` (pydoc_data.topics: 79 topics, ~465k characters).
`python_docstrings`: docstrings of the standard library's modules, classes and functions, read from the
source files with `ast` (nothing is imported or executed).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

BUILTIN_CORPORA = ("python_docs", "python_docstrings")


def builtin_texts(name: str, target_chars: int = 600) -> list[str]:
    """Examples of the builtin corpus `name`: paragraphs grouped up to about `target_chars` characters."""
    if name == "python_docs":
        documents = _topics()
    elif name == "python_docstrings":
        documents = _docstrings()
    else:
        raise ValueError(f"unknown builtin corpus {name!r}; expected one of {', '.join(BUILTIN_CORPORA)}")
    return [chunk for doc in documents for chunk in _chunks(doc, target_chars)]


def _topics() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def _docstrings() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    yield doc


def _chunks(document: str, target_chars: int) -> Iterator[str]:
    """Consecutive paragraphs joined until the next one would pass `target_chars`."""
    paragraphs = [re.sub(r"[ \t]+\n", "\n", p).strip() for p in re.split(r"\n\s*\n", document)]
    current: list[str] = []
    size = 0
    for paragraph in filter(None, paragraphs):
        if current and size + len(paragraph) > target_chars:
            yield "\n\n".join(current)
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        yield "\n\n".join(current)
