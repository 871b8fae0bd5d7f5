"""Our Mixer against `datasets.interleave_datasets` on the same real + synthetic corpora, side by side.

    .venv/bin/python bench/bench_mixer.py                  # 1M real + 500k synthetic examples (~1-2 min, 2 cores)
    .venv/bin/python bench/bench_mixer.py --real 200000 --synthetic 100000 --skip 20000     # a quick look

Corpora. Real: the docstrings of the standard library (builtin `python_docstrings`), tokenized with a
byte-level BPE (4096 tokens) trained on them, then scaled up by sampling examples with replacement to
`--real` examples. Synthetic: `--synthetic` examples, each the concatenation of 2 (70%) or 3 (30%) sampled
docstrings, so synthetic examples are 2.3x as long as real ones on average (as generated text often is).
Both sides get the very same token arrays: the Dataset columns are zero-copy Arrow views of them.

Peers. The Mixer (target: 30% of TOKENS synthetic, one epoch = one pass over the real data) against
`interleave_datasets([real, synthetic], probabilities=[0.7, 0.3], seed=0, stopping_strategy="first_exhausted")`
(stops when the real data runs out: also one pass over it), on a map-style Dataset and on IterableDatasets.

Measured.
- examples/s: iterating the first `--iterate` examples of each stream (Mixer: `Example`s with their token ids;
  datasets: rows with their `input_ids` column, python format, the default).
- realized ratios over the whole epoch: Mixer, from its full stream; map-style interleave, from its rows
  (Arrow batches of the same rows, so the count is fast); the iterable interleave, over its first rows.
- resume: from a fresh stream object to the next example at a late position: Mixer `load_state_dict` at
  `--late`; map-style Dataset: `interleave_datasets(...)[late]`; IterableDataset: `.skip(n)` and
  `load_state_dict` of a state saved after n examples, at n = `--skip` (reaching a later state there would
  mean iterating the stream up to it, which is what the replay costs).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RATIO = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, default=1_000_000, help="real examples (sampled from the docstrings)")
    parser.add_argument("--synthetic", type=int, default=500_000, help="synthetic examples (2-3 docstrings each)")
    parser.add_argument("--iterate", type=int, default=100_000, help="examples iterated to time each stream")
    parser.add_argument("--late", type=int, default=1_000_000, help="late position for the O(1) resumes")
    parser.add_argument("--skip", type=int, default=50_000, help="position for the IterableDataset resumes")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- corpora
def docstring_tokens() -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids and offsets of the standard library's docstrings, with the tokenizer's vocabulary size."""
    from synthmix.data_mixers.builtin import builtin_texts
    from synthmix.data_mixers.config import TokenizerConfig
    from synthmix.data_mixers.encoding import EncodeSettings, encode_batch
    from synthmix.data_mixers.tokenizer import load_tokenizer

    texts = builtin_texts("python_docstrings")
    config = TokenizerConfig(vocab_size=4096)
    tokenizer = load_tokenizer(config, lambda: iter(texts), "builtin:python_docstrings", REPO / ".cache/synthmix")
    settings = EncodeSettings(add_eos=True, assistant_only_loss=False, completion_only_loss=False)
    encoded = encode_batch(tokenizer, texts, "text", settings).ids
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    return np.concatenate(encoded).astype(np.int32), offsets, len(tokenizer)


def gather(ids: np.ndarray, offsets: np.ndarray, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The examples `picks` of (ids, offsets), concatenated: new (ids, offsets)."""
    lengths = offsets[picks + 1] - offsets[picks]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    shift = np.repeat(offsets[picks] - new_offsets[:-1], lengths)
    return ids[np.arange(new_offsets[-1], dtype=np.int64) + shift], new_offsets


def build_corpora(args: argparse.Namespace) -> tuple[dict, dict, int]:
    ids, offsets, vocab = docstring_tokens()
    rng = np.random.default_rng(args.seed)
    n_docs = len(offsets) - 1
    real_ids, real_offsets = gather(ids, offsets, rng.integers(0, n_docs, args.real))
    parts = np.where(rng.random(args.synthetic) < 0.3, 3, 2)  # 2.3 docstrings per synthetic example
    piece_ids, piece_offsets = gather(ids, offsets, rng.integers(0, n_docs, int(parts.sum())))
    ends = np.cumsum(parts)
    synthetic_offsets = np.concatenate([[0], piece_offsets[ends]]).astype(np.int64)
    real = {"ids": real_ids, "offsets": real_offsets, "docs": n_docs}
    synthetic = {"ids": piece_ids, "offsets": synthetic_offsets}
    return real, synthetic, vocab


# ---------------------------------------------------------------- our Mixer
def bench_mixer(real: dict, synthetic: dict, args: argparse.Namespace) -> dict:
    from synthmix.data_mixers import Corpus, DataConfig, Mixer, SourceConfig

    corpora = [
        Corpus.from_offsets("real", "real", real["ids"], real["offsets"]),
        Corpus.from_offsets("synthetic", "synthetic", synthetic["ids"], synthetic["offsets"]),
    ]
    data = DataConfig(
        sources=[SourceConfig(name="real", kind="real"), SourceConfig(name="synthetic", kind="synthetic")],
        synthetic_ratio=RATIO,
        unit="tokens",
    )

    def fresh() -> Mixer:
        return Mixer(corpora, data, seed=args.seed)

    began = time.perf_counter()
    mixer = fresh()
    mixer.plan(1)
    plan_s = time.perf_counter() - began

    tokens = {"real": 0, "synthetic": 0}
    examples = {"real": 0, "synthetic": 0}
    began = time.perf_counter()
    for n, example in enumerate(mixer, 1):  # the whole epoch; the first `--iterate` examples are timed
        tokens[example.kind] += len(example.ids)
        examples[example.kind] += 1
        if n == args.iterate:
            iterate_s = time.perf_counter() - began
    iterate_s = iterate_s if n >= args.iterate else time.perf_counter() - began
    epoch_examples = sum(examples.values())
    rate = min(args.iterate, epoch_examples) / iterate_s

    def resume_s(position: int) -> float:
        state = dict(fresh().state_dict(), position=position)
        began = time.perf_counter()
        mixer = fresh()
        mixer.load_state_dict(state)
        assert len(mixer.take_tokens(1)) == 1
        return time.perf_counter() - began

    late = min(args.late, epoch_examples - 1)
    timings = [(resume_s(10), resume_s(late)) for _ in range(2)]
    return {
        "name": "synthmix Mixer",
        "rate": rate,
        "epoch_examples": epoch_examples,
        "token_ratio": tokens["synthetic"] / sum(tokens.values()),
        "example_ratio": examples["synthetic"] / epoch_examples,
        "resume": f"`load_state_dict` at {late:,}: {min(t for _, t in timings):.2f} s "
        f"(at 10: {min(t for t, _ in timings):.2f} s)",
        "notes": f"epoch planned in {plan_s:.2f} s: nearly all of the resume time",
    }


# ---------------------------------------------------------------- datasets.interleave_datasets
def as_dataset(part: dict, kind: int):
    import datasets
    import pyarrow as pa

    values = pa.array(part["ids"])  # zero-copy view of the same numpy array
    column = pa.ListArray.from_arrays(pa.array(part["offsets"].astype(np.int32)), values)
    n = len(part["offsets"]) - 1
    table = pa.table({"input_ids": column, "kind": pa.array(np.full(n, kind, np.int8))})
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def ratios_from_arrow(dataset) -> tuple[float, float, int]:
    """Synthetic share of tokens and of examples over every row of `dataset` (read as Arrow batches)."""
    import pyarrow.compute as pc

    tokens = np.zeros(2)
    examples = np.zeros(2)
    for batch in dataset.with_format("arrow").iter(batch_size=100_000):
        kinds = batch.column("kind").to_numpy()
        lengths = pc.list_value_length(batch.column("input_ids")).to_numpy()
        for kind in (0, 1):
            tokens[kind] += lengths[kinds == kind].sum()
            examples[kind] += (kinds == kind).sum()
    return tokens[1] / tokens.sum(), examples[1] / examples.sum(), int(examples.sum())


def bench_datasets(real: dict, synthetic: dict, args: argparse.Namespace) -> list[dict]:
    from datasets import interleave_datasets

    real_ds, synthetic_ds = as_dataset(real, 0), as_dataset(synthetic, 1)

    def interleaved(iterable: bool = False):
        parts = [real_ds, synthetic_ds]
        if iterable:
            parts = [part.to_iterable_dataset() for part in parts]
        return interleave_datasets(
            parts, probabilities=[1 - RATIO, RATIO], seed=args.seed, stopping_strategy="first_exhausted"
        )

    began = time.perf_counter()
    mapped = interleaved()
    build_s = time.perf_counter() - began
    tokens, kinds = np.zeros(2), np.zeros(2)
    began = time.perf_counter()
    for n, row in enumerate(mapped, 1):  # the same work per example as the Mixer's loop
        tokens[row["kind"]] += len(row["input_ids"])
        kinds[row["kind"]] += 1
        if n == args.iterate:
            break
    rate = args.iterate / (time.perf_counter() - began)
    token_ratio, example_ratio, rows = ratios_from_arrow(mapped)
    late = min(args.late, rows - 1)

    def map_resume_s() -> float:
        began = time.perf_counter()
        row = interleaved()[late]
        assert len(row["input_ids"]) > 0
        return time.perf_counter() - began

    results = [
        {
            "name": "`interleave_datasets` (Dataset)",
            "rate": rate,
            "epoch_examples": rows,
            "token_ratio": token_ratio,
            "example_ratio": example_ratio,
            "resume": f"`interleave_datasets(...)[{late:,}]`: {min(map_resume_s() for _ in range(2)):.2f} s",
            "notes": f"interleave (its index of rows) built in {build_s:.2f} s: nearly all of the resume time",
        }
    ]

    stream = interleaved(iterable=True)
    tokens, kinds = np.zeros(2), np.zeros(2)
    began = time.perf_counter()
    iterator = iter(stream)
    for _ in range(args.skip):
        row = next(iterator)
        tokens[row["kind"]] += len(row["input_ids"])
        kinds[row["kind"]] += 1
    iterable_rate = args.skip / (time.perf_counter() - began)
    state = stream.state_dict()
    expected = next(iterator)["input_ids"]

    began = time.perf_counter()
    skipped = next(iter(interleaved(iterable=True).skip(args.skip)))["input_ids"]
    skip_s = time.perf_counter() - began
    began = time.perf_counter()
    resumed_stream = interleaved(iterable=True)
    resumed_stream.load_state_dict(state)
    resumed = next(iter(resumed_stream))["input_ids"]
    state_s = time.perf_counter() - began
    assert resumed == expected, "IterableDataset.load_state_dict did not resume at the next example"
    results.append(
        {
            "name": "`interleave_datasets` (IterableDataset)",
            "rate": iterable_rate,
            "epoch_examples": None,
            "token_ratio": tokens[1] / tokens.sum(),
            "example_ratio": kinds[1] / kinds.sum(),
            "resume": f"`.skip({args.skip:,})`: {skip_s:.2f} s; `load_state_dict` at {args.skip:,}: {state_s:.2f} s",
            "notes": f"ratios over its first {args.skip:,} rows"
            + ("" if skipped == expected else "; .skip() gave another example than the state"),
        }
    )
    return results


# ---------------------------------------------------------------- report
def machine() -> str:
    import datasets
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average {load}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, datasets {datasets.__version__}, "
        f"numpy {np.__version__}"
    )


def table(results: list[dict]) -> str:
    lines = [
        "| stream | examples/s | synthetic share of tokens (target 0.300) | of examples | examples per epoch "
        "| resume: fresh object to the next example at a late position |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        epoch = f"{r['epoch_examples']:,}" if r["epoch_examples"] else "n/a"
        lines.append(
            f"| {r['name']} | {r['rate']:,.0f} | {r['token_ratio']:.4f} | {r['example_ratio']:.4f} | {epoch} "
            f"| {r['resume']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    real, synthetic, vocab = build_corpora(args)
    real_mean = np.diff(real["offsets"]).mean()
    synthetic_mean = np.diff(synthetic["offsets"]).mean()
    corpus = (
        f"real: {args.real:,} examples sampled from {real['docs']:,} stdlib docstrings ({vocab}-token BPE), "
        f"mean {real_mean:.1f} tokens; synthetic: {args.synthetic:,} examples of 2-3 docstrings, "
        f"mean {synthetic_mean:.1f} tokens ({synthetic_mean / real_mean:.2f}x)"
    )
    print(corpus, flush=True)
    results = [bench_mixer(real, synthetic, args)]
    print(f"mixer done ({time.perf_counter() - started:.0f} s)", flush=True)
    results += bench_datasets(real, synthetic, args)
    print()
    print(f"date: {datetime.date.today().isoformat()}; machine: {machine()}")
    print(f"command: .venv/bin/python bench/bench_mixer.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(corpus)
    print()
    print(table(results))
    print()
    for r in results:
        print(f"- {r['name']}: {r['notes']}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
