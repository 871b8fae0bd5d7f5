"""Text from a model: seeded batched sampling (`sampling`), fixed prompts (`prompts`), and synthetic corpora with
provenance (`corpus`)."""
