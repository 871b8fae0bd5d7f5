"""Text from a model: seeded batched sampling (`sampling`), fixed prompts (`prompts`), and synthetic corpora with
provenance (`corpus`), or requested from a served model over the OpenAI API, resumably (`served`)."""
