"""Our trainer against TRL's SFTTrainer on the same LoRA job: tokens/s and peak memory, side by side.

    .venv/bin/python bench/bench_trainer.py                  # CPU, tiny Llama, 16 x 256, 3 + 30 steps (~1.5 min)
    .venv/bin/python bench/bench_trainer.py --concurrent     # side by side, 1 thread each (a machine shared with
                                                             # other jobs: both trainers see the same load)
    .venv/bin/python bench/bench_trainer.py --model qwen2.5-0.5b-arch --device cuda   # bf16, 4 x 2048, with MFU
    .venv/bin/python bench/bench_trainer.py --gpu            # the one-shot GPU suite, within --budget-s (480 s);
                                                             # on a lent GPU machine: docs/gpu-bench.md
    .venv/bin/python bench/bench_trainer.py --gpu --device cpu --batch 2 --seq-len 64 --warmup 1 --steps 1
                                                             # the same suite on CPU with the tiny model (smoke)

Same model (one config, one seed), same token stream (the mixer's epoch of python_docs + tiny_synthetic, with
a BPE trained locally), same LoRA (r 8, alpha 16, dropout 0.05, q/k/v/o), same rows x length, same optimizer
steps. Each trainer runs in its own subprocess so that peak memory does not mix; the parent prints the table.

Our trainer is timed through its public API: `synthmix.trainer.setup`, then `train_step(run)` called directly (the
body of `fit`, without its logging and progress bar). TRL runs `SFTTrainer.train()` in its fastest
configuration: packing with strategy "wrapped" (fixed rows of `max_length`, plain causal attention over the
whole row, so documents are not isolated; "bfd", padding-free rows that isolate documents, is much slower on
CPU with sdpa and runs only when asked: `--trainers ours,trl-wrapped,trl-bfd`), no eval, no saving, no
reporting, logging every 10^6 steps.
TRL 1.16 computes entropy and token accuracy in its fused LM head on every step; no option turns that off.

Tokens are the non-padding input tokens of the batches each trainer actually received, counted per step; the
first `--warmup` steps are excluded from time and tokens. Peak memory is the peak RSS of the training phase
(Linux: the high-water mark is reset with /proc/self/clear_refs before the first step) minus the RSS then;
on CUDA also the peak of allocated GPU memory minus the allocation before the first step.

FLOPs per trained token (used for achieved FLOP/s and MFU):
    4 * N  +  6 * N_lora  +  6 * L * s * d
N: frozen base parameters that multiply activations (all but the input embedding; a tied embedding counts,
as the LM head): forward 2N, backward activation gradients 2N, no weight gradients. N_lora: the adapters,
forward, input and weight gradients. Attention: QK^T and AV cost 4*s*d per token and layer forward, halved for
a causal mask, times 3 for forward + backward: 6*L*s*d, with s the row length and d = heads * head_dim.
MFU = achieved FLOP/s / peak (H100 SXM bf16 dense: 989e12 FLOP/s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH-RESULT "
H100_BF16_DENSE = 989e12
# Dense bf16 peaks (tensor cores, no sparsity) by the GPU's name; MFU is against the first that matches.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12}
TRAINERS = ("ours", "trl-wrapped", "trl-bfd")
GPU_BUDGET_S = 480.0  # --gpu's whole run, set-up and correctness run included: 8 minutes of a 15-minute GPU lease

MODELS = {
    # Llama-style, 3.4 M parameters with the 4096-token vocabulary (hidden 256, 4 layers, 4 heads of 64).
    "tiny-llama": {
        "arch": {
            "model_type": "llama",
            "hidden_size": 256,
            "intermediate_size": 688,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        "batch": 16,
        "seq_len": 256,
    },
    # Qwen2.5-0.5B's dimensions (its config.json), random weights; our 4096-token BPE uses the first ids only.
    "qwen2.5-0.5b-arch": {
        "arch": {
            "model_type": "qwen2",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768,
        },
        "batch": 4,
        "seq_len": 2048,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; `--worker` is how the parent starts one trainer in a subprocess."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), help="default: tiny-llama (--gpu on cuda: qwen2.5-0.5b-arch)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cpu (--gpu: cuda)")
    parser.add_argument("--batch", type=int, help="rows per step (default: the model's preset)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default: the model's preset)")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first and left out of the timing")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--trainers", default="ours,trl-wrapped", help=f"comma-separated, from {TRAINERS}")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every worker (default: torch's)")
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="run the trainers at the same time, one thread each, released together after set-up: on a machine "
        "shared with other jobs both then see the same load (the ratio is fair; absolute numbers are per core)",
    )
    parser.add_argument("--attention", default="sdpa", help="model.attn_implementation of our trainer")
    parser.add_argument("--loss", default="auto", help="train.loss of our trainer")
    parser.add_argument("--lora-r", type=int, help="default: 8 (--gpu: 16)")
    parser.add_argument("--target-modules", help="comma-separated or all-linear (default: q/k/v/o; --gpu: all-linear)")
    parser.add_argument(
        "--packing", choices=("wrap", "bfd"), help="data.packing of our trainer (default: wrap; --gpu: bfd)"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="the one-shot GPU run: the Qwen2.5-0.5B architecture, LoRA r 16 on all linear layers, bf16, 4 x 2048, "
        "ours with every attention path and loss that runs there against TRL, then a correctness run; writes "
        "--out, within --budget-s (8 minutes); with --device cpu the same run at the sizes given (a smoke test)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        help="--suite/--gpu: the seconds the whole run may take (default: 480 with --gpu, else none); each "
        "configuration starts only if, by the times measured so far, it and the correctness run still fit, and the "
        "ones left out are listed in the figures",
    )
    parser.add_argument(
        "--suite",
        action="store_true",
        help="what --gpu runs, on the --device and --model given (on CPU with the tiny model: a smoke test)",
    )
    parser.add_argument("--out", type=Path, help="--suite/--gpu: write the figures here (.json and .md beside it)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # --gpu's settings, each where the command line does not give its own (`--gpu --device cpu --model tiny-llama`
    # runs the GPU run's logic on CPU at a tiny size).
    gpu = args.gpu
    args.device = args.device or ("cuda" if gpu else "cpu")
    args.model = args.model or ("qwen2.5-0.5b-arch" if gpu and args.device == "cuda" else "tiny-llama")
    args.lora_r = args.lora_r or (16 if gpu else 8)
    args.target_modules = args.target_modules or ("all-linear" if gpu else "q_proj,k_proj,v_proj,o_proj")
    args.packing = args.packing or ("bfd" if gpu else "wrap")
    if gpu:
        args.suite = True
        args.warmup, args.steps = min(args.warmup, 3), min(args.steps, 20)
        args.budget_s = args.budget_s or GPU_BUDGET_S
    preset = MODELS[args.model]
    args.batch = args.batch or preset["batch"]
    args.seq_len = args.seq_len or preset["seq_len"]
    if args.concurrent and not args.threads:
        args.threads = 1
    return args


def run_overrides(args: argparse.Namespace, output_dir: str) -> list[str]:
    """The run config both trainers share, as `trainer.config.load_config` overrides."""
    sources = [
        {"name": "python-docs", "kind": "real", "builtin": "python_docs"},
        {"name": "tiny-synthetic", "kind": "synthetic", "path": str(REPO / "data/tiny_synthetic.jsonl")},
    ]
    if (args.warmup + args.steps) * args.batch * args.seq_len > 140_000:  # one epoch of python_docs holds ~148k
        sources.insert(1, {"name": "python-docstrings", "kind": "real", "builtin": "python_docstrings"})
    arch = {"max_position_embeddings": args.seq_len, **MODELS[args.model]["arch"]}
    values = {
        "output_dir": output_dir,
        "seed": 0,
        "tokenizer.vocab_size": 4096,
        "data.cache_dir": str(REPO / ".cache/synthmix"),
        "data.sources": sources,
        "data.synthetic_ratio": 0.24,
        "data.allow_repeat": True,
        "data.dedup": False,
        "data.held_out.fraction": 0.0,  # every token of the files trains: more steps/epoch
        "model.arch": arch,
        "model.attn_implementation": args.attention,
        "lora.r": args.lora_r,
        "lora.alpha": 2 * args.lora_r,
        "lora.dropout": 0.05,
        "lora.target_modules": "all-linear" if args.target_modules == "all-linear" else args.target_modules.split(","),
        "data.packing": args.packing,
        "train.loss": args.loss,
        "train.epochs": 1,
        "train.per_device_train_batch_size": args.batch,
        "train.seq_len": args.seq_len,
        "train.gradient_accumulation_steps": 1,
        "train.learning_rate": 2e-4,
        "train.max_grad_norm": 1.0,
        "train.progress": False,
        "train.log_every_steps": 1_000_000,
    }
    from synthmix.trainer.config import RunConfig

    if hasattr(RunConfig(), "collapse"):
        values["collapse.enabled"] = False  # the collapse hook evaluates held-out text: not training
    return [item for key, value in values.items() for item in (f"--{key}", json.dumps(value))]


# ---------------------------------------------------------------------------------------------- measuring
def rss_bytes() -> int:
    """Resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (what getrusage's ru_maxrss reads), so the peak is this phase's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def wait_for_start() -> None:
    """In --concurrent mode: say this worker is set up, then wait until the parent releases every worker."""
    folder = os.environ.get("BENCH_BARRIER")
    if not folder:
        return
    Path(folder, f"ready-{os.getpid()}").touch()
    while not Path(folder, "go").exists():
        time.sleep(0.02)


class Meter:
    """Peak memory of the training phase: RSS (and GPU memory on CUDA) from `start()` to `stop()`."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def start(self) -> None:
        import torch

        wait_for_start()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.gpu_start = torch.cuda.memory_allocated()
        self.peak_reset = reset_peak_rss()
        self.rss_start = rss_bytes()

    def stop(self) -> dict:
        import torch

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = {
            "rss_start_mib": self.rss_start / 2**20,
            "peak_rss_mib": peak / 2**20,
            "peak_rss_delta_mib": (peak - self.rss_start) / 2**20,
            "peak_reset": self.peak_reset,
        }
        if self.cuda:
            out["gpu_peak_delta_mib"] = (torch.cuda.max_memory_allocated() - self.gpu_start) / 2**20
        return out


def flops_per_token(model, seq_len: int) -> dict:
    """The module docstring's FLOPs per trained token, from the model as built (LoRA-wrapped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embed = base.get_input_embeddings().weight.numel()
    matmul = frozen if getattr(cfg, "tie_word_embeddings", False) else frozen - embed
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 6 * cfg.num_hidden_layers * seq_len * cfg.num_attention_heads * head_dim
    return {
        "base_parameters": frozen,
        "lora_parameters": lora,
        "matmul_parameters": matmul,
        "flops_per_token": 4 * matmul + 6 * lora + attention,
    }


def weight_checksum(model) -> float:
    """Sum of the base weights: equal across workers when both built the same model."""
    return float(sum(p.double().sum() for n, p in model.named_parameters() if "lora_" not in n))


def clock() -> tuple[float, float]:
    """Wall time and this process's CPU time (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def summarize(clocks: list[tuple[float, float]], tokens: list[int], args: argparse.Namespace) -> dict:
    """Timed steps are those after the warm-up: time from the end of step `warmup` to the end of the last.

    CPU seconds are reported too: on a machine shared with other jobs they move much less than wall time."""
    times = [wall for wall, _ in clocks]
    first = clocks[args.warmup - 1] if args.warmup else clocks[0]
    seconds = times[-1] - first[0]
    cpu_seconds = clocks[-1][1] - first[1]
    timed = tokens[args.warmup :]
    steps = [b - a for a, b in zip(times[max(args.warmup - 1, 0) :], times[max(args.warmup, 1) :])]
    median = sorted(steps)[len(steps) // 2]  # robust to a neighbour's burst on a shared machine
    return {
        "steps": len(timed),
        "tokens": sum(timed),
        "seconds": seconds,
        "tokens_per_s": sum(timed) / seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": sum(timed) / cpu_seconds,
        "median_step_s": median,
        "median_tokens_per_s": sum(timed) / len(timed) / median,
        "step_seconds": steps,
        "step_tokens": timed,
        "step_ends": times[max(args.warmup - 1, 0) :],  # perf_counter is system-wide: comparable across workers
        "row_fill": sum(timed) / (len(timed) * args.batch * args.seq_len),
    }


# ---------------------------------------------------------------------------------------------- workers
def run_ours(args: argparse.Namespace, output_dir: str) -> dict:
    """setup() through the public API, then `train_step` warmup + steps times."""
    import torch

    from synthmix.trainer.config import load_config
    from synthmix.trainer.runtime.loop import train_step
    from synthmix.trainer.runtime.setup import setup

    run = setup(load_config(None, run_overrides(args, output_dir)), None)
    run.mixer.set_epoch(1)
    model = run.accelerator.unwrap_model(run.model)
    info = {**flops_per_token(model, args.seq_len), "checksum": weight_checksum(model)}
    meter, times, tokens = Meter(args.device), [], []
    meter.start()
    for _ in range(args.warmup + args.steps):
        stats = train_step(run)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(clock())
        tokens.append(stats["tokens_real"] + stats["tokens_synthetic"])
    memory = meter.stop()
    run.close()
    return {**summarize(times, tokens, args), **memory, **info, "last_loss": stats["loss"]}


def run_trl(args: argparse.Namespace, output_dir: str, strategy: str) -> dict:
    """SFTTrainer on the mixer's epoch as a pre-tokenized dataset, in stream order (sequential sampler)."""
    import numpy as np
    import torch
    from accelerate.utils import set_seed
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from synthmix.data_mixers.corpus import build_corpora
    from synthmix.data_mixers.mixer import Mixer
    from synthmix.trainer.config import load_config, run_tokenizer
    from synthmix.trainer.modeling.attention import choose_attention
    from synthmix.trainer.modeling.model import build_model, peft_lora_config, resolve_dtype

    config = load_config(None, run_overrides(args, output_dir))
    set_seed(config.seed)  # the order of our setup(): seed, corpora, model, so both build the same weights
    corpora = build_corpora(config.data, run_tokenizer(config))
    device = torch.device(args.device)
    attention = choose_attention(config.model.attn_implementation, device).kind
    model = build_model(config.model, corpora.tokenizer, resolve_dtype(config.model, args.device == "cuda"), attention)
    mixer = Mixer(corpora.train, config.data, config.seed, config.train.epochs)
    mixer.set_epoch(1)
    dataset = Dataset.from_dict({"input_ids": [piece.ids.astype(np.int64).tolist() for piece in mixer]})
    times: list[tuple[float, float]] = []
    batches: list[int] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(clock())

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kwargs):
            mask = inputs.get("attention_mask")  # padding-free batches have none: every position is a token
            batches.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
            return super().training_step(model, inputs, *rest, **kwargs)

    lora = config.lora
    sft = SFTConfig(
        output_dir=output_dir,
        seed=config.seed,
        use_cpu=args.device == "cpu",
        bf16=args.device == "cuda",
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=config.train.learning_rate,
        max_grad_norm=config.train.max_grad_norm,
        max_length=args.seq_len,
        packing=True,
        packing_strategy=strategy,
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        report_to=[],
        logging_steps=1_000_000,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = peft_lora_config(lora)
    trainer = CountingSFTTrainer(
        model=model,
        args=sft,
        train_dataset=dataset,
        processing_class=corpora.tokenizer,
        peft_config=peft_config,
        callbacks=[StepClock()],
    )
    info = {**flops_per_token(trainer.model, args.seq_len), "checksum": weight_checksum(trainer.model)}
    meter = Meter(args.device)
    meter.start()
    trainer.train()
    memory = meter.stop()
    return {**summarize(times, batches, args), **memory, **info}


def worker(args: argparse.Namespace) -> dict:
    """Run one trainer; the result carries what the parent prints."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = tempfile.mkdtemp(prefix=f"bench-{args.worker}-")
    try:
        if args.worker == "ours":
            result = run_ours(args, output_dir)
        else:
            result = run_trl(args, output_dir, args.worker.removeprefix("trl-"))
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return {"trainer": args.worker, "threads": torch.get_num_threads(), "synthmix": synthmix_folder(), **result}


# ---------------------------------------------------------------------------------------------- the parent
def synthmix_folder() -> str:
    """The folder `synthmix.trainer` is imported from: the repository's trainer/ (editable install) or a wheel's."""
    import importlib.util

    return str(Path(importlib.util.find_spec("synthmix.trainer").origin).parent)


def version(package: str) -> str:
    """An installed distribution's version, or why there is none (TRL and datasets may be missing on a GPU image)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    """Where the numbers come from, and with which libraries."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for package in ("transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "huggingface_hub"):
        info[package] = version(package)
    info["synthmix"] = synthmix_folder()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def child_env() -> dict[str, str]:
    """The environment of every process the bench starts. synthmix comes from where this process found it (the
    editable install, or a wheel installed into a folder on PYTHONPATH, as on a GPU image): never from the
    repository root, whose synthmix/ lacks the trainer/ and data_mixers/ that setup.py maps into the package."""
    return {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    }


def start_worker(name: str, argv: list[str], barrier: str | None) -> subprocess.Popen:
    """One trainer in a fresh interpreter (output collected by `collect`)."""
    env = child_env()
    if barrier:
        env["BENCH_BARRIER"] = barrier
    command = [sys.executable, __file__, *argv, "--worker", name]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def collect(name: str, proc: subprocess.Popen, timeout: float | None = None) -> dict:
    """The worker's result: its last stdout line starting with RESULT_PREFIX (a worker still running after
    `timeout` seconds is stopped, and fails)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SystemExit(f"{name} stopped after {timeout:.0f} s, past the budget") from None
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def run_concurrently(names: list[str], argv: list[str]) -> list[dict]:
    """Start every worker, release them together once all are set up, collect their results."""
    with tempfile.TemporaryDirectory(prefix="bench-barrier-") as barrier:
        procs = [start_worker(name, argv, barrier) for name in names]
        while len(list(Path(barrier).glob("ready-*"))) < len(procs):
            if any(p.poll() is not None for p in procs):
                break  # a worker died during set-up; collect() reports it
            time.sleep(0.05)
        Path(barrier, "go").touch()
        return [collect(name, proc) for name, proc in zip(names, procs)]


def pool(runs: list[dict], mem: str) -> dict:
    """One trainer's runs together: tokens over seconds, the median of every timed step, the largest peak."""
    tokens, steps = sum(r["tokens"] for r in runs), sum(r["steps"] for r in runs)
    step_times = sorted(t for r in runs for t in r["step_seconds"])
    return {
        "runs": len(runs),
        "tokens_per_s": tokens / sum(r["seconds"] for r in runs),
        "median_tokens_per_s": tokens / steps / step_times[len(step_times) // 2],
        "tokens_per_cpu_s": tokens / sum(r["cpu_seconds"] for r in runs),
        mem: max(r[mem] for r in runs),
    }


def overlap_tokens_per_s(results: list[dict]) -> list[float]:
    """Each worker's tokens/s over the timed steps it finished while every worker was still running: in
    --concurrent mode the faster trainer stops first and the slower one then has the machine alone."""
    end = min(r["step_ends"][-1] for r in results)
    rates = []
    for r in results:
        ends = [t for t in r["step_ends"][1:] if t <= end]
        rates.append(sum(r["step_tokens"][: len(ends)]) / (ends[-1] - r["step_ends"][0]) if ends else float("nan"))
    return rates


def report(results: list[dict], args: argparse.Namespace, info: dict) -> str:
    """The table and the ratios of ours to the fastest TRL configuration."""
    cuda = args.device == "cuda"
    lines = [
        f"| trainer | steps | tokens | wall s | tokens/s | tokens/s (median step) | CPU s | tokens/CPU-s "
        f"| row fill | peak RSS delta MiB | GFLOP/s{' | MFU | GPU peak delta MiB' if cuda else ''} |",
        "|---" + "|---:" * (10 + 2 * cuda) + "|",
    ]
    for r in results:
        flops = r["tokens_per_s"] * r["flops_per_token"]
        row = (
            f"| {r['trainer']} | {r['steps']} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} "
            f"| {r['median_tokens_per_s']:,.0f} | {r['cpu_seconds']:.1f} | {r['tokens_per_cpu_s']:,.0f} "
            f"| {r['row_fill']:.3f} | {r['peak_rss_delta_mib']:.0f} | {flops / 1e9:.1f}"
        )
        if cuda:
            row += f" | {flops / H100_BF16_DENSE:.1%} | {r['gpu_peak_delta_mib']:.0f}"
        lines.append(row + " |")
    mem = "gpu_peak_delta_mib" if cuda else "peak_rss_delta_mib"
    pooled = {
        name: pool([r for r in results if r["trainer"] == name], mem)
        for name in dict.fromkeys(r["trainer"] for r in results)
    }
    ours = pooled.get("ours")
    for name, peer in sorted(pooled.items(), key=lambda item: -item[1]["tokens_per_s"]):
        if ours and name != "ours":
            ratio = {
                key: ours[key] / peer[key] for key in ("tokens_per_s", "median_tokens_per_s", "tokens_per_cpu_s", mem)
            }
            runs = f" (runs pooled: {ours['runs']} and {peer['runs']})" if ours["runs"] > 1 or peer["runs"] > 1 else ""
            lines.append(
                f"\nours / {name}{runs}: tokens/s x{ratio['tokens_per_s']:.2f} (median step "
                f"x{ratio['median_tokens_per_s']:.2f}, per CPU-second x{ratio['tokens_per_cpu_s']:.2f}), "
                f"peak memory x{ratio[mem]:.2f}"
            )
    if args.concurrent and ours and len(results) == 2:
        both = dict(zip((r["trainer"] for r in results), overlap_tokens_per_s(results)))
        peer = next(name for name in both if name != "ours")
        lines.append(
            f"while both ran: ours {both['ours']:,.0f} tokens/s, {peer} {both[peer]:,.0f} tokens/s, "
            f"x{both['ours'] / both[peer]:.2f}"
        )
    same = len({round(r["checksum"], 3) for r in results}) == 1
    lines.append(
        f"\nsame base weights in every worker: {same}; torch threads: "
        f"{', '.join(str(r['trainer']) + ' ' + str(r['threads']) for r in results)}; FLOPs/token "
        f"{results[0]['flops_per_token'] / 1e6:.1f} M (N {results[0]['matmul_parameters']:,}, "
        f"N_lora {results[0]['lora_parameters']:,})"
    )
    lines.append(
        f"machine: {info['cpu']}, {info['cores']} cores{', ' + info['gpu'] if 'gpu' in info else ''}; "
        f"load average {info['load_before']} before, {info['load_after']} after; {info['date']}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the suite
def peak_flops(info: dict) -> float:
    """The GPU's dense bf16 peak (H100's when the GPU is not in PEAK_BF16, and said so in the figures)."""
    gpu = info.get("gpu", "")
    return next((peak for name, peak in PEAK_BF16.items() if name in gpu), H100_BF16_DENSE)


def attention_paths(device: str) -> list[str]:
    """The attention implementations that can run on `device`, fastest first (sdpa always)."""
    import torch

    from synthmix.trainer.errors import TrainerError
    from synthmix.trainer.modeling.attention import choose_attention

    paths = []
    for kind in ("flash_attention_3", "flash_attention_2", "flex_attention"):
        if device == "cpu" and kind == "flex_attention":
            continue  # its backward compiles for minutes on CPU
        try:
            paths.append(choose_attention(kind, torch.device(device)).kind)
        except TrainerError:
            pass
    return [*paths, "sdpa"]


def losses(device: str) -> list[str]:
    """The losses to time on `device`: chunked, the model's own logits, and liger-kernel's where installed."""
    import importlib.util

    found = device == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    return ["chunked", "full", *(["liger"] if found else [])]


def suite_configs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(trainer, attention, loss) of every run, in the order a budget keeps them: ours on the fastest attention
    path with the chunked loss, TRL wrapped (plain causal attention) and bfd (isolating), then ours on each other
    path with the chunked loss and with each other loss on the fastest path."""
    paths = attention_paths(args.device)
    first = [("ours", paths[0], "chunked"), ("trl-wrapped", "sdpa", "full"), ("trl-bfd", paths[0], "full")]
    others = [("ours", path, "chunked") for path in paths[1:]]
    others += [("ours", paths[0], loss) for loss in losses(args.device) if loss != "chunked"]
    return [*first, *others]


CORRECTNESS_STEPS = 60 + 40  # the straight run's steps, then the resumed copy's (from step 20)


class Budget:
    """The suite's own estimate of its duration: each configuration is estimated by the wall time of those of the
    same trainer already run (else of any), the correctness run by two process set-ups and its steps at a median
    step of ours (the least such estimate so far); a configuration starts only if it and the correctness run
    still fit in `budget_s`. The first configuration always runs."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s, self.started = budget_s, time.perf_counter()
        self.walls: list[tuple[str, float]] = []  # (trainer, seconds from its start to its result)
        self.correctness_s = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def estimate(self, trainer: str) -> float:
        same = [wall for name, wall in self.walls if name == trainer] or [wall for _, wall in self.walls]
        return sum(same) / len(same) if same else 0.0

    def record(self, trainer: str, wall: float, result: dict | None) -> None:
        self.walls.append((trainer, wall))
        if result and trainer == "ours":
            set_up = wall - result["seconds"]  # the worker's start, set-up and warm-up steps
            estimate = 2 * set_up + CORRECTNESS_STEPS * result["median_step_s"]
            self.correctness_s = min(self.correctness_s or estimate, estimate)  # the first also builds the data

    def projected(self, remaining: list[str]) -> float:
        """Elapsed seconds plus the estimates of the configurations left and of the correctness run."""
        return self.elapsed() + sum(self.estimate(name) for name in remaining) + self.correctness_s

    def fits(self, trainer: str) -> bool:
        if self.budget_s is None or not self.walls:
            return True
        return self.elapsed() + self.estimate(trainer) + self.correctness_s <= self.budget_s

    def timeout(self, reserve: float = 0.0) -> float | None:
        """How long the next process may run: what is left of the budget after `reserve` (at least a minute)."""
        if self.budget_s is None:
            return None
        return max(self.budget_s - self.elapsed() - reserve, 60.0)

    def summary(self) -> dict:
        return {
            "budget_s": self.budget_s,
            "seconds": round(self.elapsed(), 1),
            "config_seconds": [round(wall, 1) for _, wall in self.walls],
            "correctness_estimate_s": round(self.correctness_s, 1),
        }


def correctness(args: argparse.Namespace, attention: str, folder: Path, budget: Budget | None = None) -> dict:
    """Train up to 60 steps (3 epochs) with a checkpoint every 20, then resume a copy from step 20: the loss
    falls, the adapter is saved, and the resumed run's losses and adapter match the straight run's (the largest
    differences are reported; on CPU they are 0). A process still running past the budget is stopped."""
    from safetensors.torch import load_file

    from synthmix.trainer.reporting.events import read_events

    settings = {
        "model.attn_implementation": attention,
        "train.epochs": 3,
        "train.max_steps": 60,
        "train.log_every_steps": 1,
        "checkpoint.every_steps": 20,
        "checkpoint.keep_last": 5,
    }
    extra = [item for key, value in settings.items() for item in (f"--{key}", json.dumps(value))]
    env = child_env()
    straight, resumed = folder / "straight", folder / "resumed"
    started = time.perf_counter()
    for run, resume in ((straight, []), (resumed, ["--resume", str(resumed / "checkpoints" / "step-20")])):
        if resume:
            shutil.copytree(straight, resumed)
            shutil.rmtree(resumed / "adapter")
        command = [sys.executable, "-m", "synthmix", "train", *run_overrides(args, str(run)), *extra, *resume]
        # Run from the scratch folder: `-m` puts the working directory first on sys.path, and the repository's
        # synthmix/ would shadow the installed package.
        timeout = budget.timeout() if budget else None
        try:
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"stopped after {timeout:.0f} s, past the budget"}
        if done.returncode:
            return {"ok": False, "error": done.stderr[-2000:]}
    train = [[e for e in read_events(run / "metrics.jsonl") if e["event"] == "train"] for run in (straight, resumed)]
    losses_straight = [e["loss"] for e in train[0]]
    adapters = [load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (straight, resumed)]
    first, last = sum(losses_straight[:5]) / 5, sum(losses_straight[-5:]) / 5
    loss_gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(train[0][20:], train[1][20:], strict=True))
    adapter_gap = max(float((adapters[0][k].float() - adapters[1][k].float()).abs().max()) for k in adapters[0])
    return {
        "ok": last < first and adapters[0].keys() == adapters[1].keys(),
        "seconds": round(time.perf_counter() - started, 1),
        "steps": len(losses_straight),
        "loss_first_5": first,
        "loss_last_5": last,
        "adapter_tensors": len(adapters[0]),
        "resume_max_loss_difference": loss_gap,
        "resume_max_adapter_difference": adapter_gap,
        "resume_bit_identical": adapter_gap == 0.0,
    }


def run_suite(args: argparse.Namespace, argv: list[str]) -> None:
    """Every configuration of `suite_configs` in its own worker, the correctness run, and the figures file."""
    budget = Budget(args.budget_s)
    info = machine()
    peak = peak_flops(info)
    out = args.out or Path(os.environ.get("OUT", REPO / "bench")) / f"figures-{args.device}.json"
    rows, configs = [], suite_configs(args)
    print(f"suite: {args.model} on {args.device}, {args.batch} x {args.seq_len}, LoRA r {args.lora_r} "
          f"({args.target_modules}), {args.packing} packing; {info.get('gpu', info['cpu'])}; synthmix from "
          f"{info['synthmix']}", flush=True)  # fmt: skip
    libraries = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "huggingface_hub")
    print("libraries: " + ", ".join(f"{name} {info[name]}" for name in libraries), flush=True)
    print(f"plan: {len(configs)} configurations of {args.warmup} + {args.steps} steps, each in its own process, "
          f"then the correctness run ({CORRECTNESS_STEPS} steps in two processes)"
          + (f"; budget {args.budget_s:.0f} s" if args.budget_s else ""), flush=True)  # fmt: skip
    for index, (trainer, attention, loss) in enumerate(configs):
        row = {"trainer": trainer, "attention": attention, "loss": loss}
        if not budget.fits(trainer):
            rows.append({**row, "skipped": f"budget: {budget.projected([trainer]):.0f} s > {args.budget_s:.0f} s"})
            print(f"  {trainer} {attention} {loss}: skipped, {rows[-1]['skipped']}", flush=True)
            continue
        worker_argv = [*argv, "--attention", attention, "--loss", loss]
        started = time.perf_counter()
        try:
            result = collect(trainer, start_worker(trainer, worker_argv, None), budget.timeout(budget.correctness_s))
        except SystemExit as failure:  # one configuration that cannot run does not stop the others
            budget.record(trainer, time.perf_counter() - started, None)
            rows.append({**row, "error": str(failure)[-1500:]})
            print(f"  {trainer} {attention} {loss}: failed", flush=True)
            continue
        budget.record(trainer, time.perf_counter() - started, result)
        result.update(attention=attention, loss=loss, mfu=result["tokens_per_s"] * result["flops_per_token"] / peak)
        rows.append(result)
        projected = budget.projected([name for name, _, _ in configs[index + 1 :]])
        print(f"  {trainer} {attention} {loss}: {result['tokens_per_s']:,.0f} tokens/s ({budget.walls[-1][1]:.0f} s; "
              f"{budget.elapsed():.0f} s so far, {projected:.0f} s projected)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-correctness-") as folder:
        best = next((r["attention"] for r in rows if r["trainer"] == "ours" and "tokens_per_s" in r), "sdpa")
        checked = correctness(args, best, Path(folder), budget)
    timing = budget.summary()
    print(
        f"took {timing['seconds']:.0f} s (correctness run {checked.get('seconds', '?')} s, estimated "
        f"{timing['correctness_estimate_s']:.0f} s)" + (f"; budget {args.budget_s:.0f} s" if args.budget_s else "")
    )
    figures = {"machine": info, "peak_flops": peak, "args": vars(args) | {"out": str(out)}, "runs": rows,
               "correctness": checked, "timing": timing}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str))
    out.with_suffix(".md").write_text(suite_report(figures, args))
    print(suite_report(figures, args))
    print(f"figures: {out} and {out.with_suffix('.md')}")


def suite_report(figures: dict, args: argparse.Namespace) -> str:
    """The suite's table: each run's tokens/s, MFU and peak memory, and ours against the fastest TRL run."""
    cuda = args.device == "cuda"
    memory = "gpu_peak_delta_mib" if cuda else "peak_rss_delta_mib"
    lines = [
        f"| trainer | attention | loss | tokens/s | MFU | peak {'GPU' if cuda else 'RSS'} delta MiB | last loss |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    ok = [r for r in figures["runs"] if "tokens_per_s" in r]
    for r in figures["runs"]:
        if "tokens_per_s" not in r:
            why = "failed" if "error" in r else "skipped (budget)"
            lines.append(f"| {r['trainer']} | {r['attention']} | {r['loss']} | {why} | | | |")
            continue
        last = f"{r['last_loss']:.3f}" if "last_loss" in r else ""
        lines.append(
            f"| {r['trainer']} | {r['attention']} | {r['loss']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} "
            f"| {r[memory]:,.0f} | {last} |"
        )
    ours = [r for r in ok if r["trainer"] == "ours"]
    trl = [r for r in ok if r["trainer"] != "ours"]
    if ours and trl:
        best, peer = max(ours, key=lambda r: r["tokens_per_s"]), max(trl, key=lambda r: r["tokens_per_s"])
        lines.append(
            f"\nfastest ours ({best['attention']}, {best['loss']}) / fastest TRL ({peer['trainer']}): tokens/s "
            f"x{best['tokens_per_s'] / peer['tokens_per_s']:.2f}, peak memory x{best[memory] / peer[memory]:.2f}, "
            f"MFU {best['mfu']:.1%}"
        )
    checked = figures["correctness"]
    lines.append(f"\ncorrectness run: {json.dumps(checked)}")
    timing = figures.get("timing")
    if timing:
        skipped = [f"{r['trainer']} {r['attention']} {r['loss']}" for r in figures["runs"] if "skipped" in r]
        lines.append(
            f"\nthe whole run: {timing['seconds']:.0f} s"
            + (f" of a {timing['budget_s']:.0f} s budget" if timing["budget_s"] else "")
            + (f"; left out to fit it: {', '.join(skipped)}" if skipped else "")
        )
    if ok:
        where = figures["machine"].get("gpu", figures["machine"]["cpu"])
        lines.append(
            f"\nFLOPs per token {ok[0]['flops_per_token'] / 1e9:.2f} G (4 N + 6 N_lora + 6 L s d; N "
            f"{ok[0]['matmul_parameters']:,}, N_lora {ok[0]['lora_parameters']:,}); MFU against "
            f"{figures['peak_flops'] / 1e12:.0f} TFLOP/s bf16 dense; {where}; {figures['machine']['date']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parent: spawn each trainer in turn, then print the table (and write --json)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return
    if args.suite:
        run_suite(args, argv)
        return
    info = machine()
    info["load_before"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.model} on {args.device}: {args.batch} x {args.seq_len}, {args.warmup} warm-up + {args.steps} "
        f"timed steps{'; concurrently' if args.concurrent else ''}; {info['cpu']}, {info['cores']} cores, "
        f"load {info['load_before']}",
        flush=True,
    )
    names = args.trainers.split(",")
    if args.concurrent:
        results = run_concurrently(names, argv)
    else:
        results = [collect(name, start_worker(name, argv, None)) for name in names]
    for r in results:
        print(f"  {r['trainer']}: {r['tokens_per_s']:,.0f} tokens/s", flush=True)
    info["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report(results, args, info))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
