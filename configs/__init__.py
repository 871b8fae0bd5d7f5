"""The run configs and accelerate launch configs that ship with synthmix, installed as `synthmix.configs` (package
data), so that `synthmix demo` finds its configs wherever it runs."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def packaged(name: str) -> Path:
    """The path of a config that ships with synthmix, e.g. `demo.yaml` or `accelerate/fsdp.yaml`."""
    return FOLDER / name
