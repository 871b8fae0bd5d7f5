"""Ready run configs and accelerate launch configs, installed with synthmix as `synthmix.configs` (package data)."""
