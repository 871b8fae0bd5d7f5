"""The model: loading or building it with LoRA (`model`), the attention paths that keep packed examples apart
(`attention`), packed batches (`packing`) and the loss (`loss`)."""
