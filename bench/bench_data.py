"""The data path at size: our tokenized store against `datasets` (load_dataset + map), side by side, one run.

    .venv/bin/python bench/make_corpus.py            # once: bench/.data (200k real + 60k synthetic + 50k chats)
    .venv/bin/python bench/bench_data.py             # about 15 minutes on 2 cores
    .venv/bin/python bench/bench_data.py --sizes 10  # a quick look at the smallest size only

Every measured job runs in a fresh subprocess (so peak memory does not mix) with the same files and the same
tokenizer (bench/.data/tokenizer, a 4,096-token BPE), one torch thread, tokenizer parallelism on:
1. first build, at 10%, 33% and 100% of the corpus: ours (`build_corpora` into an empty store: read, hash,
   clean, tokenize, write) against `datasets.load_dataset("json")` + `.map(tokenize, batched=True, num_proc=2)`
   into an empty HF cache; wall time and peak RSS (the parent's, and for datasets also its map workers');
2. second start: the same job again, store (or HF cache) warm: time to the first training batch (ours: map the
   store, plan epoch 1, pack a batch of 8 rows of 2048 tokens; datasets: load from its cache, map hits its
   cache, take 8 rows), and the resident memory of our process after touching every token id: RSS, PSS and
   USS (private memory: no private copy of the arrays means USS stays far below their size);
3. two processes under torchrun, empty store: how many of them tokenized, and the total time;
4. packing of the chats (assistant-only loss) at seq_len 512 and 2048: our bfd and wrap against TRL's
   `pack_dataset(strategy="bfd")` (truncating overflow, as its default): padding efficiency (non-padding tokens /
   row tokens) and the share of loss tokens in pieces whose example started in an earlier row.
Results go to stdout as a Markdown section and to bench/.data/bench_data.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "bench" / ".data"
BATCH, SEQ = 8, 2048


# ---------------------------------------------------------------------------------------------- jobs
def data_config(size: str, cache: Path) -> Any:
    """The run config's data section the jobs share: real + synthetic at 25% synthetic tokens."""
    from synthmix.trainer.config import load_config

    suffix = "" if size == "100" else f"-{size}"
    sources = [
        {"name": "real", "kind": "real", "path": str(DATA / f"real{suffix}.jsonl")},
        {"name": "synthetic", "kind": "synthetic", "path": str(DATA / f"synthetic{suffix}.jsonl")},
    ]
    overrides = {
        "tokenizer.name": str(DATA / "tokenizer"), "data.sources": sources, "data.synthetic_ratio": 0.25,
        "data.cache_dir": str(cache), "model.arch": {"model_type": "llama"}, "train.seq_len": SEQ,
    }  # fmt: skip
    return load_config(None, [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))])


def job_build_ours(size: str, cache: Path) -> dict[str, Any]:
    """Build (or map) the store, plan epoch 1, pack the first batch; the times of each part."""
    started = time.perf_counter()
    from transformers import AutoTokenizer  # noqa: F401  (imported before the clock starts, as for datasets)

    from synthmix.data_mixers.corpus import build_corpora
    from synthmix.data_mixers.mixer import Mixer
    from synthmix.trainer.modeling.packing import pack_rows

    config = data_config(size, cache)
    imported = time.perf_counter()
    corpora = build_corpora(config.data, config.tokenizer, progress=False)
    built = time.perf_counter()
    mixer = Mixer(corpora.train, config.data, config.seed, seq_len=SEQ)
    mixer.set_epoch(1)
    batch = pack_rows([mixer.next_row() for _ in range(BATCH)], SEQ, corpora.tokenizer.pad_token_id)
    first_batch = time.perf_counter()
    assert batch.input_ids.shape == (BATCH, SEQ)
    result = {
        "imports_s": imported - started,
        "build_s": built - imported,
        "to_first_batch_s": first_batch - imported,
        "tokens": sum(c.n_tokens for c in corpora.train),
        "examples": sum(len(c) for c in corpora.train),
        "stores": [r.store for r in corpora.reports] + [corpora.cleaning["store"]],
        "peak_rss_mb": _peak_rss_mb(resource.RUSAGE_SELF),
    }
    touched = sum(int(c.ids[i : i + (1 << 24)].astype("int64").sum() > -1) for c in corpora.train
                  for i in range(0, len(c.ids), 1 << 24))  # fmt: skip
    result["memory_after_touching_all_ids_mb"] = {**_smaps_mb(), "arrays_mb": _arrays_mb(corpora), "chunks": touched}
    return result


def job_build_datasets(size: str, cache: Path) -> dict[str, Any]:
    """load_dataset("json") + map(tokenize, batched, num_proc=2) into (or from) an HF cache; first 8 rows."""
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    started = time.perf_counter()
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    imported = time.perf_counter()
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(DATA / "tokenizer"))
    eos = tokenizer.eos_token_id
    suffix = "" if size == "100" else f"-{size}"

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"])["input_ids"]]}

    mapped, rows = [], []
    for name in ("real", "synthetic"):
        loaded = datasets.load_dataset("json", data_files=str(DATA / f"{name}{suffix}.jsonl"), split="train")
        mapped.append(loaded.map(tokenize, batched=True, num_proc=2, remove_columns=["text"]))
        rows = rows or mapped[-1][:BATCH]["input_ids"]
    done = time.perf_counter()
    tokens = sum(pc.sum(pc.list_value_length(m.data.column("input_ids"))).as_py() for m in mapped)
    return {
        "imports_s": imported - started,
        "build_s": done - imported,
        "to_first_batch_s": done - imported,
        "tokens": tokens,
        "peak_rss_mb": _peak_rss_mb(resource.RUSAGE_SELF),
        "workers_peak_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN),
    }


def job_torchrun_rank(size: str, cache: Path) -> dict[str, Any]:
    """One rank of a 2-process launch: build the store as the trainer does (the main process first)."""
    from synthmix.data_mixers.corpus import build_corpora
    from synthmix.trainer.distributed.accelerator import make_accelerator

    accelerator = make_accelerator("no")
    config = data_config(size, cache)
    started = time.perf_counter()
    with accelerator.main_process_first():
        corpora = build_corpora(config.data, config.tokenizer, progress=False)
    accelerator.wait_for_everyone()
    return {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "seconds": time.perf_counter() - started,
        "stores": [r.store for r in corpora.reports] + [corpora.cleaning["store"]],
    }


def job_packing(size: str, cache: Path) -> dict[str, Any]:
    """Our bfd and wrap rows against TRL's bfd on the chats (assistant-only loss), at two row lengths."""
    import datasets
    import numpy as np
    from trl import pack_dataset

    from synthmix.data_mixers.config import SourceConfig
    from synthmix.data_mixers.corpus import build_corpora
    from synthmix.data_mixers.mixer import Mixer

    config = data_config(size, cache)
    chats = SourceConfig(name="chats", kind="real", path=str(DATA / "chats.jsonl"), messages_field="messages")
    data = dataclasses.replace(config.data, sources=[chats], synthetic_ratio=0.0, assistant_only_loss=True)
    corpora = build_corpora(data, config.tokenizer, progress=False)
    (corpus,) = corpora.train
    lengths = corpus.lengths
    out: dict[str, Any] = {"examples": len(corpus), "median_tokens": float(np.median(lengths))}
    for seq in (512, 2048):
        for packing in ("wrap", "bfd"):
            mixer = Mixer([corpus], dataclasses.replace(data, packing=packing), 0, seq_len=seq)
            mixer.set_epoch(1)
            loss, continued, rows, tokens = 0, 0, 0, 0
            while row := mixer.next_row():
                rows += 1
                for piece in row:
                    tokens += len(piece.ids)
                    trained = int(piece.loss_mask.sum()) if piece.loss_mask is not None else len(piece.ids)
                    loss += trained
                    continued += trained if piece.start > 0 else 0
            out[f"ours-{packing}-{seq}"] = {"padding_efficiency": tokens / (rows * seq), "continued_loss_share":
                                            continued / loss, "rows": rows}  # fmt: skip
        ids = [corpus.example_ids(i).astype(np.int64).tolist() for i in range(len(corpus))]
        packed = pack_dataset(datasets.Dataset.from_dict({"input_ids": ids}), seq, strategy="bfd")
        kept = int(np.minimum(lengths, seq).sum())
        out[f"trl-bfd-{seq}"] = {"padding_efficiency": kept / (len(packed) * seq), "continued_loss_share": 0.0,
                                 "rows": len(packed)}  # fmt: skip
    return out


JOBS = {"ours": job_build_ours, "datasets": job_build_datasets, "rank": job_torchrun_rank, "packing": job_packing}


def _peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _smaps_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    # A private copy of the token arrays would be anonymous memory; mapped store pages are file-backed.
    return {"rss_mb": fields["Rss"], "pss_mb": fields["Pss"], "uss_mb": uss, "anonymous_mb": fields["Anonymous"],
            "file_backed_mb": fields["Rss"] - fields["Anonymous"]}  # fmt: skip


def _arrays_mb(corpora: Any) -> float:
    return sum(c.ids.nbytes for c in corpora.train) / 2**20


# ---------------------------------------------------------------------------------------------- driver
def run_job(job: str, size: str, cache: Path) -> dict[str, Any]:
    """Run one job in a fresh interpreter; its wall time as the parent saw it, plus what the job reports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "true"}
    command = [sys.executable, __file__, "--job", job, "--size", size, "--cache", str(cache)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{job} {size} failed:\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - started}


def run_torchrun(size: str, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "true", "CUDA_VISIBLE_DEVICES": ""}
    out = cache.parent / "ranks"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--job", "rank", "--size", size, "--cache", str(cache), "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{done.stderr[-4000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    built = sum(rank["stores"].count("built") for rank in ranks)
    return {"ranks": ranks, "entries_built": built, "processes_that_built": sum("built" in r["stores"] for r in ranks),
            "total_s": time.perf_counter() - started}  # fmt: skip


def main() -> None:
    """Run every measured job (or one job, in a child) and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,33,100", help="percent of the corpus, comma-separated")
    parser.add_argument("--work", type=Path, default=DATA / "work", help="stores and caches (emptied first)")
    parser.add_argument("--job", choices=sorted(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        result = JOBS[args.job](args.size, args.cache)
        if args.out is not None:
            (args.out / f"rank-{result['rank']}.json").write_text(json.dumps(result))
        print(json.dumps(result))
        return
    if not (DATA / "tokenizer").is_dir():
        raise SystemExit("run bench/make_corpus.py first")
    shutil.rmtree(args.work, ignore_errors=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"sizes": {}, "machine": _machine()}
    for size in args.sizes.split(","):
        ours, theirs = args.work / f"store-{size}", args.work / f"hf-{size}"
        row = {"first_ours": run_job("ours", size, ours), "first_datasets": run_job("datasets", size, theirs)}
        row["second_ours"] = run_job("ours", size, ours)
        row["second_datasets"] = run_job("datasets", size, theirs)
        results["sizes"][size] = row
        print(json.dumps({size: row}), flush=True)
    largest = args.sizes.split(",")[-1]
    results["torchrun"] = run_torchrun(largest, args.work / "store-torchrun")
    results["packing"] = run_job("packing", largest, args.work / "store-packing")
    results["seconds"] = time.perf_counter() - started
    (DATA / "bench_data.json").write_text(json.dumps(results, indent=1))
    print(report(results))


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{datetime.date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
            f"{load}; Python {platform.python_version()}")  # fmt: skip


def report(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = [f"Machine: {results['machine']}. Whole run: {results['seconds']:.0f} s.", "",
             "| corpus | examples | tokens | first build: ours | datasets | peak RSS: ours | datasets (+ workers) "
             "| second start, to the first batch: ours | datasets | our process after touching every id: RSS / PSS "
             "/ USS; of it anonymous / file-backed (arrays) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for size, row in results["sizes"].items():
        a, b, c, d = row["first_ours"], row["first_datasets"], row["second_ours"], row["second_datasets"]
        mem = c["memory_after_touching_all_ids_mb"]
        lines.append(
            f"| {size}% | {a['examples']:,} | {a['tokens']:,} | {a['build_s']:.1f} s | {b['build_s']:.1f} s "
            f"| {a['peak_rss_mb']:.0f} MiB | {b['peak_rss_mb']:.0f} (+{b['workers_peak_rss_mb']:.0f}) MiB "
            f"| {c['to_first_batch_s']:.2f} s ({c['process_s']:.1f} s with imports) | {d['to_first_batch_s']:.2f} s "
            f"| {mem['rss_mb']:.0f} / {mem['pss_mb']:.0f} / {mem['uss_mb']:.0f} MiB; {mem['anonymous_mb']:.0f} / "
            f"{mem['file_backed_mb']:.0f} MiB ({mem['arrays_mb']:.0f} MiB) |"
        )
    run = results["torchrun"]
    lines += [
        "",
        f"torchrun, 2 processes, empty store: {run['processes_that_built']} process tokenized "
        f"({run['entries_built']} entries built), {run['total_s']:.1f} s in all; per rank: "
        + ", ".join(f"rank {r['rank']} {r['seconds']:.1f} s ({'/'.join(r['stores'])})" for r in run["ranks"]),
    ]
    packing = results["packing"]
    lines += ["", f"Packing {packing['examples']:,} chats (median {packing['median_tokens']:.0f} tokens, "
              "assistant-only loss):", "", "| seq_len | packing | padding efficiency | loss tokens in continued pieces "
              "| rows |", "|---:|---|---:|---:|---:|"]  # fmt: skip
    for seq in (512, 2048):
        for name in ("ours-wrap", "ours-bfd", "trl-bfd"):
            entry = packing[f"{name}-{seq}"]
            lines.append(f"| {seq} | {name} | {entry['padding_efficiency']:.4f} | {entry['continued_loss_share']:.1%} "
                         f"| {entry['rows']:,} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
