"""Real/synthetic data mixing: sources, cleaning, tokenization and an exact, resumable mixed stream.

The public names below are imported on first use, so that reading a config (data_mixers.config) does not
load tokenizers and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KINDS": "data_mixers.config",
    "DataConfig": "data_mixers.config",
    "SourceConfig": "data_mixers.config",
    "TokenizerConfig": "data_mixers.config",
    "validate_data": "data_mixers.config",
    "Corpora": "data_mixers.corpus",
    "Corpus": "data_mixers.corpus",
    "build_corpora": "data_mixers.corpus",
    "MixerError": "data_mixers.errors",
    "EpochPlan": "data_mixers.mixer",
    "Example": "data_mixers.mixer",
    "Mixer": "data_mixers.mixer",
    "PlanSettings": "data_mixers.mixer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_mixers' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
