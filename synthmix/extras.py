"""What to install for an optional part of synthmix, said as a pip command that works however synthmix was
installed (a wheel, an editable clone): the extra's own requirements, read from the installed package's metadata.
`pip install 'synthmix[mlflow]'` would instead fetch synthmix itself from an index."""

from __future__ import annotations

import importlib.metadata
import shlex

from packaging.requirements import Requirement


def install_command(extra: str) -> str:
    """`pip install ...` of the packages the extra `extra` names, e.g. `pip install 'bitsandbytes>=0.50'`."""
    try:
        requirements = [Requirement(text) for text in importlib.metadata.requires("synthmix") or []]
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return f"pip install -e '.[{extra}]'"
    wanted = [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": extra})]
    return "pip install " + " ".join(shlex.quote(f"{r.name}{r.specifier}") for r in wanted)
