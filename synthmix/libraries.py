"""What the libraries print and load in a synthmix process: errors, not their chatter, and no bitsandbytes unless
the run quantizes (called by every job and every process a job starts, before the libraries are imported); and
the packages' public names, imported on first use."""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's module `__getattr__`: `exports[name]` names the module that defines `name`, imported on first
    use, so that importing the package (to read a config) does not load torch and transformers."""

    def attribute(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return attribute


def quiet_libraries() -> None:
    """What every job (and every process a job starts) prints of the libraries: errors, not their chatter."""
    from transformers.utils import logging as hf_logging

    # bitsandbytes warns at import, on CPUs with AVX512-BF16, when it cannot fetch an optional kernel.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # MLflow's first use of its default SQLite store logs each table it creates and each migration it applies.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars at every checkpoint; ours say what runs
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def load_bitsandbytes_only_to_quantize(quantizes: bool) -> None:
    """Make bitsandbytes invisible to this process unless the run quantizes its base model.

    peft imports bitsandbytes whenever it is installed, and bitsandbytes, on CPUs with AVX512-BF16, asks the
    `kernels` package for a kernel from the Hugging Face hub at import: a network request, and a warning when
    it fails (offline, or refused), at every start of a run that quantizes nothing. With the module set to None,
    `import bitsandbytes` raises ImportError and `importlib.util.find_spec` finds nothing, which peft and
    transformers take as "not installed". Call it before peft is imported; it does nothing once bitsandbytes is.
    """
    if not quantizes:
        sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]
