"""synthmix: LoRA fine-tuning on an exact real/synthetic mix, with model-collapse monitoring.

This package holds what `data_mixers` and `trainer` share (errors, the typed-config machinery, atomic file
writes) and the one command, `synthmix`. It imports neither package at import time.
"""

__version__ = "0.2.0"
