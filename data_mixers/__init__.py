"""Real/synthetic data mixing: sources, cleaning, tokenization and an exact, resumable mixed stream."""

from data_mixers.config import DataConfig, MixerSettings, SourceConfig, TokenizerConfig, load_mixer_settings
from data_mixers.corpus import Corpora, Corpus, build_corpora
from data_mixers.errors import ConfigError, MixerError
from data_mixers.mixer import EpochPlan, Example, Mixer

__all__ = [
    "ConfigError",
    "Corpora",
    "Corpus",
    "DataConfig",
    "EpochPlan",
    "Example",
    "Mixer",
    "MixerError",
    "MixerSettings",
    "SourceConfig",
    "TokenizerConfig",
    "build_corpora",
    "load_mixer_settings",
]
