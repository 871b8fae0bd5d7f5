"""The exact mix as TRL's SFTTrainer sees it, at size: our MixedStream against interleave_datasets + TRL's packing.

    .venv/bin/python bench/bench_stream.py                            # 100k, 300k, 1M real examples (~5 min, 2 cores)
    .venv/bin/python bench/bench_stream.py --sizes 20000 --rows 500   # a quick look

What a TRL user would otherwise write to train on 30% synthetic tokens, packed into rows of 2,048 tokens with
whole examples per row (bfd), against what `attach_stream` hands to `SFTTrainer`, on the same token arrays:
- synthmix: `MixedStream(packing bfd, seq_len 2048, ratio 0.3 of tokens)`; rows are planned per epoch and built
  as the trainer draws them.
- peer: `interleave_datasets([real, synthetic], probabilities=[0.7, 0.3], stopping_strategy="first_exhausted")`
  (one pass over the real data) then `trl.pack_dataset(strategy="bfd", seq_length=2048)`, which packs the whole
  dataset before the first batch. The datasets are in memory (Arrow views of the same arrays), so nothing is
  cached on disk: a fresh process (a resumed job) packs again.

Corpora: bench_mixer.py's (standard-library docstrings, a 4,096-token BPE; real examples sampled from them,
synthetic ones 2-3 docstrings long, 2.3x the real mean), at each size in `--sizes` real examples and half as
many synthetic ones. Each token carries its kind on both sides, so the ratio is measured in the packed rows.

Measured per size: seconds to the first batch of 8 rows in a fresh object (ours: planning epoch 1 and packing it;
peer: interleaving and packing everything), rows/s over the next `--rows` rows (python rows as a collator gets
them), the synthetic share of the tokens over every row of epoch 1, the padding efficiency (tokens / row
capacity), and for ours the time from a fresh object to the next row at a late position (`load_state_dict`).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_mixer import build_corpora  # noqa: E402  (the same corpora as the mixer benchmark)

RATIO, SEQ, BATCH = 0.3, 2048, 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000", help="real examples per size (comma list)")
    parser.add_argument("--rows", type=int, default=2000, help="rows iterated to time each stream")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def ours(real: dict, synthetic: dict, args: argparse.Namespace) -> dict:
    from synthmix.data_mixers import Corpus, DataConfig, SourceConfig
    from synthmix.data_mixers.torch_dataset import MixedStream, kind_counts

    corpora = [
        Corpus.from_offsets("real", "real", real["ids"], real["offsets"]),
        Corpus.from_offsets("synthetic", "synthetic", synthetic["ids"], synthetic["offsets"]),
    ]
    sources = [SourceConfig(name="real", kind="real"), SourceConfig(name="synthetic", kind="synthetic")]
    data = DataConfig(sources=sources, synthetic_ratio=RATIO, unit="tokens", packing="bfd")

    def fresh() -> MixedStream:
        return MixedStream(corpora, data, seed=args.seed, epochs=1, seq_len=SEQ, pad_id=0, rows_per_step=BATCH,
                           provenance=True)  # fmt: skip

    began = time.perf_counter()
    stream = fresh()
    rows = iter(stream)
    first = [next(rows) for _ in range(BATCH)]
    first_s = time.perf_counter() - began
    began = time.perf_counter()
    timed = [next(rows) for _ in range(min(args.rows, stream.total_rows - BATCH))]
    rate = len(timed) / (time.perf_counter() - began)
    counts = sum(kind_counts(row) for row in [*first, *timed, *rows])
    late = stream.total_rows - BATCH
    began = time.perf_counter()
    resumed = fresh()
    resumed.load_state_dict(stream.state_at(late))
    next(iter(resumed))
    resume_s = time.perf_counter() - began
    return {"first_s": first_s, "rate": rate, "ratio": counts[1] / counts[:2].sum(), "rows": stream.total_rows,
            "padding_efficiency": counts[:2].sum() / (stream.total_rows * SEQ),
            "resume": f"{resume_s:.2f} s at row {late:,}"}  # fmt: skip


def peer(real: dict, synthetic: dict, args: argparse.Namespace) -> dict:
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    from trl import pack_dataset

    def as_dataset(part: dict, kind: int) -> datasets.Dataset:
        offsets = pa.array(part["offsets"].astype(np.int32))
        kinds = np.full(len(part["ids"]), kind, np.int8)  # each token's kind, packed along with it
        table = pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(part["ids"])),
                          "kinds": pa.ListArray.from_arrays(offsets, pa.array(kinds))})  # fmt: skip
        return datasets.Dataset(datasets.table.InMemoryTable(table))

    parts = [as_dataset(real, 0), as_dataset(synthetic, 1)]
    began = time.perf_counter()
    mixed = datasets.interleave_datasets(parts, probabilities=[1 - RATIO, RATIO], seed=args.seed,
                                         stopping_strategy="first_exhausted")  # fmt: skip
    interleave_s = time.perf_counter() - began
    packed = pack_dataset(mixed, SEQ, strategy="bfd", map_kwargs={"desc": None})
    first = packed[:BATCH]
    first_s = time.perf_counter() - began
    began = time.perf_counter()
    timed = [packed[i] for i in range(BATCH, min(BATCH + args.rows, len(packed)))]
    rate = len(timed) / (time.perf_counter() - began)
    tokens = np.zeros(2)
    for batch in packed.with_format("arrow").iter(batch_size=10_000):
        kinds = pc.list_flatten(batch.column("kinds")).to_numpy()
        tokens += np.bincount(kinds, minlength=2)
    assert first["input_ids"]
    return {"first_s": first_s, "interleave_s": interleave_s, "rate": rate, "ratio": tokens[1] / tokens.sum(),
            "rows": len(packed), "padding_efficiency": tokens.sum() / (len(packed) * SEQ),
            "resume": f"packs again: {first_s:.1f} s"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import datasets
    import torch
    import trl

    args = parse_args(argv)
    datasets.disable_progress_bars()
    print(f"# {datetime.date.today()}, {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs, "
          f"Python {platform.python_version()}, torch {torch.__version__}, datasets {datasets.__version__}, "
          f"trl {trl.__version__}")  # fmt: skip
    print(
        "| real examples | synthetic | stream | first batch (s) | rows/s | rows in epoch 1 | synthetic share of "
        "tokens (target 0.300) | padding efficiency | fresh object to a late row |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        real, synthetic, _ = build_corpora(argparse.Namespace(real=size, synthetic=size // 2, seed=args.seed))
        for name, bench in (("synthmix MixedStream", ours), ("interleave_datasets + TRL pack_dataset", peer)):
            r = bench(real, synthetic, args)
            print(f"| {size:,} | {size // 2:,} | {name} | {r['first_s']:.2f} | {r['rate']:,.0f} | {r['rows']:,} | "
                  f"{r['ratio']:.4f} | {r['padding_efficiency']:.4f} | {r['resume']} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
