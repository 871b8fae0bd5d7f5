"""Real/synthetic data mixing: sources, cleaning, tokenization and an exact, resumable mixed stream.

The public names below are imported on first use, so that reading a config (data_mixers.config) does not
load tokenizers and transformers.
"""

from __future__ import annotations

from synthmix.libraries import lazy_exports

_EXPORTS = {
    "KINDS": "synthmix.data_mixers.config",
    "DataConfig": "synthmix.data_mixers.config",
    "SourceConfig": "synthmix.data_mixers.config",
    "TokenizerConfig": "synthmix.data_mixers.config",
    "validate_data": "synthmix.data_mixers.config",
    "Corpora": "synthmix.data_mixers.corpus",
    "Corpus": "synthmix.data_mixers.corpus",
    "build_corpora": "synthmix.data_mixers.corpus",
    "MixerError": "synthmix.data_mixers.errors",
    "EpochPlan": "synthmix.data_mixers.mixer",
    "Example": "synthmix.data_mixers.mixer",
    "Mixer": "synthmix.data_mixers.mixer",
    "PlanSettings": "synthmix.data_mixers.mixer",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
