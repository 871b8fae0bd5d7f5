"""Two processes on CPU (gloo): disjoint shards, the global ratio, synchronized adapters, resume.

`accelerate launch --cpu --num_processes 2` starts a single process on a machine without MPI, so these tests
launch `accelerate launch --multi_gpu --num_processes 2` (which starts torchrun's launcher) or
`torchrun --standalone --nproc_per_node 2` directly: the reference run in the README's accelerate form, a resume
in its torchrun form. FSDP2 runs as the README launches it, `accelerate launch --config_file
configs/accelerate/fsdp.yaml` (LoRA, and full fine-tuning with sharded checkpoints), and resumes under torchrun
with `--train.sharding fsdp2`. Preemption: SIGTERM to torchrun, which passes it on. Also here: every launch
config under configs/accelerate/ parses the way `accelerate launch` reads it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from testkit import subprocess_env

from synthmix.cli import main as synthmix
from synthmix.data_mixers.corpus import build_corpora
from synthmix.data_mixers.mixer import Mixer
from synthmix.trainer.config import load_config

ROOT = Path(__file__).parents[2]
PROBE = Path(__file__).with_name("dist_probe.py")
WORLD_SIZE = 2
LAUNCH_TIMEOUT_S = 300

# The collapse hook is off where adapters are compared across launches (it costs ~10 s a launch); the probe
# launch turns it on, so the eval hook is exercised with two processes too.
TINY_CONFIG = f"""
seed: 0
tokenizer: {{vocab_size: 512}}
data:
  cache_dir: CACHE
  synthetic_ratio: 0.3
  sources:
    - {{name: docs, kind: real, builtin: python_docs, max_examples: 60}}
    - {{name: syn, kind: synthetic, path: {ROOT / "data/tiny_synthetic.jsonl"}, max_examples: 80}}
lora: {{r: 4, alpha: 8, dropout: 0.1}}
train: {{epochs: 1, per_device_train_batch_size: 4, seq_len: 64, learning_rate: 0.01, warmup_steps: 2,
         merge_adapter: true, progress: false}}
checkpoint: {{every_steps: 5, keep_last: 3}}
collapse: {{enabled: false}}
"""
PROBE_OVERRIDES = (
    "--collapse.enabled true --collapse.num_prompts 8 --collapse.max_eval_texts 8 --collapse.self_bleu_samples 8 "
    "--collapse.sampling.max_new_tokens 16"
).split()


# ---------------------------------------------------------------------------------------------- launching
def _torchrun(*args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        *map(str, args),
    ]


def _env() -> dict[str, str]:
    return subprocess_env(CUDA_VISIBLE_DEVICES="")


def _launch(*args: str | Path, command: list[str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command or _torchrun(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert done.returncode == 0, f"launch failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def _train(config: Path, output_dir: Path, *extra: str) -> Path:
    _launch("-m", "synthmix", "train", "--config", config, "--output_dir", output_dir, *extra)
    return output_dir


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, filter(None, lines)) if e["event"] == kind]


def _adapter(run_dir: Path) -> dict:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if a[k].dtype != b[k].dtype or not (a[k] == b[k]).all()]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:3]}"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_arch) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    path = folder / "tiny.yaml"
    model = yaml.safe_dump({"model": {"arch": dict(tiny_arch)}})
    path.write_text(TINY_CONFIG.replace("CACHE", str(folder / "cache")) + model)
    return path


@pytest.fixture(scope="module")
def reference_run(tiny_config: Path) -> Path:
    """An uninterrupted two-process run, launched in the README's form `accelerate launch --multi_gpu
    --num_processes 2 --no_python synthmix train` (the preemption and resume runs launch with torchrun)."""
    output_dir = tiny_config.parent / "reference"
    accelerate = ["accelerate", "launch", "--multi_gpu", f"--num_processes={WORLD_SIZE}", "--no_python"]
    train = ["synthmix", "train", "--config", tiny_config, "--output_dir", output_dir, "--checkpoint.keep_last", "10"]
    _launch(command=list(map(str, [*accelerate, *train])))
    return output_dir


@pytest.fixture(scope="module")
def probe_run(tiny_config: Path) -> Path:
    """A two-process run in which every rank writes its adapter weights and the pieces of data it trained on."""
    output_dir = tiny_config.parent / "probe"
    _launch(PROBE, "--config", tiny_config, "--output_dir", output_dir, *PROBE_OVERRIDES)
    return output_dir


def _fsdp_launch(*args: str | Path) -> list[str]:
    """`accelerate launch` with the shipped FSDP launch config, on two processes."""
    launch = ["accelerate", "launch", "--config_file", ROOT / "configs/accelerate/fsdp.yaml"]
    return list(map(str, [*launch, f"--num_processes={WORLD_SIZE}", *args]))


@pytest.fixture(scope="module")
def fsdp_run(tiny_config: Path) -> Path:
    """The probe's run (collapse hook on) sharded with FSDP2, launched with the shipped FSDP launch config."""
    output_dir = tiny_config.parent / "fsdp"
    probe = [PROBE, "--config", tiny_config, "--output_dir", output_dir, *PROBE_OVERRIDES]
    _launch(command=_fsdp_launch(*probe, "--checkpoint.keep_last", "10"))
    return output_dir


def _full_fsdp_train(config: Path, output_dir: Path, *extra: str | Path) -> Path:
    """A full fine-tune (`lora.r: 0`) through `synthmix train` under the FSDP launch config."""
    train = ["-m", "synthmix", "train", "--config", config, "--output_dir", output_dir, "--lora.r", "0"]
    _launch(command=_fsdp_launch(*train, *extra))
    return output_dir


@pytest.fixture(scope="module")
def full_fsdp_run(tiny_config: Path) -> Path:
    return _full_fsdp_train(tiny_config, tiny_config.parent / "full-fsdp", "--checkpoint.keep_last", "10")


@pytest.fixture(scope="module")
def mixers(tiny_config: Path) -> dict:
    """The epoch plan built in this process for one rank, and each rank's share of it for two."""
    config = load_config(tiny_config)
    corpora = build_corpora(config.data, config.tokenizer).train
    build = lambda rank, world: Mixer(corpora, config.data, config.seed, config.train.epochs, rank, world)  # noqa: E731
    return {"corpora": corpora, "single": build(0, 1), "ranks": [build(r, WORLD_SIZE) for r in range(WORLD_SIZE)]}


def _entries(corpora, plan) -> list[tuple[str, int, int]]:
    """(source, index in source, tokens) per entry of a plan, in stream order."""
    return [
        (corpora[c].name, int(corpora[c].source_index[r]), int(n))
        for c, r, n in zip(plan.corpus, plan.row, plan.n_tokens)
    ]


def _kind_tokens(plan) -> dict[str, int]:
    return {"real": int(plan.n_tokens[~plan.synthetic].sum()), "synthetic": int(plan.n_tokens[plan.synthetic].sum())}


# ---------------------------------------------------------------------------------------------- the run
@pytest.mark.slow
def test_two_process_run_writes_one_complete_run_folder(reference_run: Path):
    for path in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "config.yaml", "metrics.jsonl"):
        assert (reference_run / path).is_file(), path
    assert list((reference_run / "checkpoints").glob("step-*"))
    configs = _events(reference_run, "config")
    assert [c["distributed_type"] for c in configs] == ["MULTI_CPU"]
    assert [c["world_size"] for c in configs] == [WORLD_SIZE], (
        "the launched processes did not form one group: each trained alone on all the data, into the same folder"
    )
    assert len(_events(reference_run, "end")) == 1


@pytest.mark.slow
def test_a_two_process_run_stopped_mid_epoch_by_max_steps_ends_with_an_eval_at_its_last_step(
    tiny_config: Path, tmp_path: Path
):
    """Only the main process holds the collapse monitor; every process must still agree that the last step needs
    an eval (a collective), or the run hangs at its end."""
    run = _train(tiny_config, tmp_path / "run", "--train.max_steps", "3", *PROBE_OVERRIDES)
    (end,) = _events(run, "end")
    assert [e["step"] for e in _events(run, "eval")] == [0, 3] and end["step"] == 3


@pytest.mark.slow
def test_rank_shares_are_disjoint_and_cover_the_single_process_plan(mixers: dict):
    corpora, single, ranks = mixers["corpora"], mixers["single"].plan(1), [m.shard_plan(1) for m in mixers["ranks"]]
    shares = [_entries(corpora, plan) for plan in ranks]
    assert not {e[:2] for e in shares[0]} & {e[:2] for e in shares[1]}
    assert Counter(shares[0] + shares[1]) == Counter(_entries(corpora, single))
    totals = {kind: sum(_kind_tokens(plan)[kind] for plan in ranks) for kind in ("real", "synthetic")}
    assert totals == _kind_tokens(single)
    assert abs(totals["synthetic"] / sum(totals.values()) - 0.3) < 0.01


@pytest.mark.slow
def test_the_run_trains_on_the_whole_plan_at_the_target_ratio(reference_run: Path, mixers: dict):
    [epoch] = _events(reference_run, "epoch")  # global counts, summed over both processes
    planned = _kind_tokens(mixers["single"].plan(1))
    assert (epoch["tokens_real"], epoch["tokens_synthetic"]) == (planned["real"], planned["synthetic"])
    assert abs(epoch["realized_synthetic_ratio"] - epoch["target_synthetic_ratio"]) < 0.01


@pytest.mark.slow
def test_each_rank_trains_on_exactly_its_share(probe_run: Path, mixers: dict):
    corpora = mixers["corpora"]
    for rank, mixer in enumerate(mixers["ranks"]):
        pieces = json.loads((probe_run / f"rank{rank}.json").read_text())
        seen: list[list] = []  # pieces joined back into whole entries, in the order they were trained on
        for _, _, source, index, start, length in pieces:
            if start > 0 and seen and seen[-1][:2] == [source, index] and seen[-1][2] == start:
                seen[-1][2] += length
            else:
                assert start == 0, f"rank {rank}: {source}[{index}] resumes at {start} out of order"
                seen.append([source, index, length])
        assert [tuple(e) for e in seen] == _entries(corpora, mixer.shard_plan(1)), f"rank {rank}"


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.slow
def test_ranks_end_with_identical_adapters(probe_run: Path):
    ranks = [load_file(str(probe_run / f"rank{r}.safetensors")) for r in range(WORLD_SIZE)]
    _assert_identical(ranks[0], ranks[1], "rank 0 vs rank 1")  # DDP's gloo all-reduce: bitwise, not approximate
    _assert_identical(ranks[0], _adapter(probe_run), "rank 0 vs the saved adapter")
    assert _events(probe_run, "eval"), "the collapse hook did not run"


@pytest.mark.slow
def test_the_collapse_hook_on_the_main_process_leaves_training_unchanged(probe_run: Path, reference_run: Path):
    # The probe's run evaluates on rank 0 at step 0 and at the epoch end; the reference run does not evaluate.
    _assert_identical(_adapter(probe_run), _adapter(reference_run), "with vs without the collapse hook")


# ---------------------------------------------------------------------------------------------- TRL's SFTTrainer
SFT = ("-m", "synthmix", "sft")  # `synthmix sft` as the launchers start a module
SFT_EVERY = 4  # collapse evals every 4 steps: each of them also a step where the Trainer logs the loss


@pytest.fixture(scope="module")
def sft_run(tiny_config: Path) -> Path:
    """`synthmix sft` under torchrun: the stream in TRL's SFTTrainer with the collapse callback."""
    output_dir = tiny_config.parent / "sft"
    _launch(*SFT, "--config", tiny_config, "--output_dir", output_dir, "--train.report_to", "[none]",
            *PROBE_OVERRIDES, "--collapse.every_steps", str(SFT_EVERY), "--checkpoint.keep_last", "10")  # fmt: skip
    return output_dir


def _log_history(run_dir: Path) -> list[dict]:
    last = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


@pytest.mark.slow
def test_sft_under_two_processes_trains_the_whole_plan_at_the_ratio_with_the_collapse_callback(
    sft_run: Path, reference_run: Path
):
    [config] = _events(sft_run, "config")
    assert config["world_size"] == WORLD_SIZE
    # The same rows as synthmix's own two-process run: the epoch's tokens of each kind, summed over both ranks.
    [epoch], [planned] = _events(sft_run, "epoch"), _events(reference_run, "epoch")
    counts = ("step", "tokens_real", "tokens_synthetic", "examples_real", "examples_synthetic")
    assert {k: epoch[k] for k in counts} == {k: planned[k] for k in counts}
    assert abs(epoch["realized_synthetic_ratio"] - 0.3) < 0.01
    last = epoch["step"]
    evals = [e["step"] for e in _events(sft_run, "eval")]
    assert evals == [*range(0, last, SFT_EVERY), last]  # step 0, every 4 steps, the epoch's end
    assert [e["epoch"] for e in _events(sft_run, "eval")] == [0] + [1] * (len(evals) - 1)  # the stream's epoch
    # Every process logged the evals as the main process measured them, and the loss of every step still
    # reached the Trainer's log (an eval used to clear the flag on the main process only: a hang).
    history = _log_history(sft_run)
    assert [h["step"] for h in history if "collapse/real_ppl" in h] == evals
    assert [h["step"] for h in history if "loss" in h] == list(range(1, last + 1))


@pytest.mark.slow
def test_sft_resumed_under_two_processes_continues_the_stream_to_the_same_adapter(sft_run: Path, tmp_path: Path):
    """The finished run's folder without its adapter and its checkpoints after step 5 (its metrics.jsonl holds
    every event to the end), resumed from its checkpoint of step 5."""
    resumed = tmp_path / "resumed"
    shutil.copytree(sft_run, resumed, ignore=shutil.ignore_patterns("adapter", "checkpoint-[1-9][0-9]*"))
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-5"]
    _launch(*SFT, "--config", sft_run.parent / "tiny.yaml", "--output_dir", resumed, "--resume", "latest",
            "--train.report_to", "[none]", *PROBE_OVERRIDES, "--collapse.every_steps", str(SFT_EVERY))  # fmt: skip
    # No row trained twice, none skipped (the epoch's counts: 5 steps from the checkpoint, the rest now), the
    # same dropout: the uninterrupted run's adapter, bit for bit.
    _assert_identical(_adapter(resumed), _adapter(sft_run), "resumed vs uninterrupted SFTTrainer run")

    # Every event once: what the crashed run logged after step 5 was dropped and logged again, the same.
    def events(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        varying = ("time", "seconds", "output")  # clock times, the eval's duration, the adapter's folder
        return [{k: v for k, v in e.items() if k not in varying} for e in map(json.loads, lines)]

    assert [e for e in events(resumed) if e["event"] != "resume"] == events(sft_run)
    assert [e["step"] for e in events(resumed) if e["event"] == "resume"] == [5]


@pytest.mark.slow
def test_a_stop_rule_stops_every_sft_process_at_the_same_step_under_accelerate_launch(
    tiny_config: Path, tmp_path: Path
):
    rule = "[{indicator: real_ppl, direction: down, threshold: 0.0001, action: stop}]"
    run = tmp_path / "stopped"
    launch = ["accelerate", "launch", "--multi_gpu", f"--num_processes={WORLD_SIZE}"]
    _launch(command=[*launch, *SFT, "--config", str(tiny_config), "--output_dir", str(run),
                     "--train.report_to", "[none]", *PROBE_OVERRIDES, "--collapse.every_steps", "2",
                     "--collapse.rules", rule])  # fmt: skip
    [config] = _events(run, "config")
    assert config["world_size"] == WORLD_SIZE
    (alert,) = _events(run, "alert")
    (end,) = _events(run, "end")
    assert alert["step"] == end["step"] == 2 and end["status"] == "stopped"


# ---------------------------------------------------------------------------------------------- FSDP2
@pytest.mark.slow
def test_the_fsdp_launch_config_shards_every_parameter(fsdp_run: Path):
    [config] = _events(fsdp_run, "config")
    assert (config["distributed_type"], config["world_size"]) == ("FSDP", WORLD_SIZE)
    assert config["sharding"]["strategy"] == "FULL_SHARD" and config["sharding"]["version"] == 2
    assert config["sharding"]["from"] == "the launch config (distributed_type: FSDP)"
    ranks = [json.loads((fsdp_run / f"rank{r}.params.json").read_text()) for r in range(WORLD_SIZE)]
    assert ranks[0].keys() == ranks[1].keys()
    for name, (kind, local, whole) in ranks[0].items():
        assert kind == "DTensor", f"{name} is not sharded during training"
        # Dimension 0 split over the two processes: the shards add up to the whole tensor.
        assert local[0] + ranks[1][name][1][0] == whole[0] and local[1:] == whole[1:], name
    lora = [name for name in ranks[0] if "lora_A" in name]
    assert lora and all(ranks[0][name][1][0] < ranks[0][name][2][0] for name in lora)


@pytest.mark.slow
def test_the_fsdp_run_saves_the_whole_adapter_that_ddp_trains(fsdp_run: Path, reference_run: Path, tiny_arch):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    saved, ddp = _adapter(fsdp_run), _adapter(reference_run)
    assert saved.keys() == ddp.keys() and all(saved[k].shape == ddp[k].shape for k in saved)
    for key in saved:  # the same updates: reduce-scatter instead of all-reduce, equal to float32 rounding
        assert (saved[key] - ddp[key]).abs().max() <= 1e-5, key
    ranks = [load_file(str(fsdp_run / f"rank{r}.safetensors")) for r in range(WORLD_SIZE)]
    _assert_identical(ranks[0], ranks[1], "rank 0 vs rank 1 (gathered)")
    _assert_identical(ranks[0], saved, "the gathered shards vs the saved adapter")
    merged, ddp_merged = (load_file(str(run / "merged" / "model.safetensors")) for run in (fsdp_run, reference_run))
    assert merged.keys() == ddp_merged.keys()
    assert max(float((merged[k] - ddp_merged[k]).abs().max()) for k in merged) <= 1e-5
    # The adapter loads onto the architecture it was trained on (peft checks every shape).
    arch = {**tiny_arch, "vocab_size": int(merged["model.embed_tokens.weight"].shape[0])}
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch))
    model = PeftModel.from_pretrained(base, str(fsdp_run / "adapter"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)


@pytest.mark.slow
def test_the_collapse_hook_runs_on_every_fsdp_rank_and_measures_what_ddp_measures(fsdp_run: Path, probe_run: Path):
    sharded, whole = _events(fsdp_run, "eval"), _events(probe_run, "eval")
    assert [e["step"] for e in sharded] == [e["step"] for e in whole] and len(sharded) == 2
    for ours, theirs in zip(sharded, whole, strict=True):
        assert abs(ours["real_ppl"] - theirs["real_ppl"]) <= 1e-4 * theirs["real_ppl"]


@pytest.mark.slow
def test_an_fsdp_run_resumed_under_torchrun_ends_with_the_same_adapter_bit_for_bit(tiny_config: Path, fsdp_run):
    output_dir = tiny_config.parent / "fsdp-resumed"
    checkpoint = fsdp_run / "checkpoints" / "step-5"
    overrides = [*PROBE_OVERRIDES, "--train.sharding", "fsdp2", "--resume", str(checkpoint)]
    _train(tiny_config, output_dir, *overrides)
    [resumed] = _events(output_dir, "resume")
    assert resumed["step"] == 5
    [config] = _events(output_dir, "config")  # the resumed run's config event was copied from the checkpoint
    assert config["distributed_type"] == "FSDP"
    _assert_identical(_adapter(output_dir), _adapter(fsdp_run), "resumed vs uninterrupted FSDP run")


@pytest.mark.slow
def test_a_full_fine_tune_under_fsdp_checkpoints_each_ranks_shards_and_resumes_from_them_bit_for_bit(
    tiny_config: Path, full_fsdp_run: Path
):
    checkpoint = full_fsdp_run / "checkpoints" / "step-5"
    shards = sorted((checkpoint / "sharded").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model").exists() and not (checkpoint / "optimizer.pt").exists()
    sizes = [p.stat().st_size for p in shards]
    assert max(sizes) < 0.75 * sum(sizes), f"a rank wrote most of the state itself: {sizes}"
    files = json.loads((checkpoint / "manifest.json").read_text())["files"]
    assert {f"sharded/{p.name}" for p in shards} | {"sharded/.metadata"} <= files.keys()

    resumed = _full_fsdp_train(tiny_config, tiny_config.parent / "full-fsdp-resumed", "--resume", checkpoint)

    [event] = _events(resumed, "resume")
    assert event["step"] == 5
    final = load_file(str(full_fsdp_run / "model" / "model.safetensors"))
    _assert_identical(load_file(str(resumed / "model" / "model.safetensors")), final, "resumed vs uninterrupted")
    # The shards are the whole model: torch's converter joins the last checkpoint's into the exported weights,
    # and training moved every tensor after step 5.
    [end] = _events(full_fsdp_run, "end")
    last = full_fsdp_run / "checkpoints" / f"step-{end['step']}"
    joined, at_5 = (_joined_weights(folder / "sharded", tiny_config.parent) for folder in (last, checkpoint))
    _assert_identical(joined, final, "the joined shards of the last checkpoint vs the exported model")
    assert all(not (at_5[name] == final[name]).all() for name in final)


def _joined_weights(shards: Path, scratch: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = scratch / f"{shards.parent.name}.pt"
    dcp_to_torch_save(shards, whole)
    return torch.load(whole, weights_only=True)["sharded"]["model"]


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")  # a run in this process: leave accelerate's state as found
def test_a_sharded_checkpoint_resumed_by_another_number_of_processes_is_refused_in_one_line(
    full_fsdp_run: Path, capsys: pytest.CaptureFixture[str]
):
    checkpoint = full_fsdp_run / "checkpoints" / "step-5"
    args = ["--config", full_fsdp_run / "config.yaml", "--output_dir", full_fsdp_run.parent / "one-process"]
    assert synthmix(["train", *map(str, args), "--resume", str(checkpoint)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"checkpoint {checkpoint} was written by 2 processes; this launch has 1" in line


# ---------------------------------------------------------------------------------------------- preemption
@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_both_ranks_and_the_run_resumes_bit_for_bit(tiny_config, reference_run):
    output_dir = tiny_config.parent / "preempted"
    command = _torchrun("-m", "synthmix", "train", "--config", tiny_config, "--output_dir", output_dir)
    torchrun = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (output_dir / "metrics.jsonl").is_file() or '"event": "train"' not in _text(output_dir):
            assert torchrun.poll() is None, "the run ended before its first step"
            assert time.monotonic() < deadline, "no step in time"
            time.sleep(0.01)
        torchrun.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
        log = torchrun.communicate(timeout=120)[0].decode()
    finally:
        torchrun.kill()
    assert "preempted by SIGTERM" in log, log[-3000:]
    [end] = _events(output_dir, "end")
    assert end["status"] == "preempted" and not (output_dir / "adapter").exists()
    assert Path(end["checkpoint"]).is_dir()

    _train(tiny_config, output_dir, "--resume", "latest")

    [resumed] = _events(output_dir, "resume")
    assert resumed["step"] == end["step"]
    _assert_identical(_adapter(output_dir), _adapter(reference_run), "preempted and resumed vs uninterrupted")


def _text(run_dir: Path) -> str:
    return (run_dir / "metrics.jsonl").read_text()


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_a_run_killed_between_checkpoints_resumes_under_torchrun_to_the_uninterrupted_adapter(
    tiny_config: Path, reference_run: Path
):
    """What a SIGKILL after the checkpoint of step 10 leaves, taken from the uninterrupted run's folder (its
    events logged past step 10, a checkpoint half-written at step 15, no adapter), resumed in the README's
    torchrun form `torchrun --no-python synthmix train`: the reference ran under accelerate launch, so this also
    shows the two launchers train the same job. (A live SIGKILL mid-write: tests/trainer/test_loop.py.)"""
    output_dir = tiny_config.parent / "killed"
    later = {p.name for p in (reference_run / "checkpoints").glob("step-*") if int(p.name[5:]) > 10}
    left_out = {reference_run: {"adapter", "merged"}, reference_run / "checkpoints": later}
    shutil.copytree(reference_run, output_dir, ignore=lambda folder, names: left_out.get(Path(folder), set()))
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step-10", "step-5"]
    half_written = output_dir / "checkpoints" / ".step-15.tmp-1234-abcdef12"
    shutil.copytree(reference_run / "checkpoints" / "step-15", half_written)
    (half_written / "manifest.json").unlink()

    torchrun = ["torchrun", "--standalone", f"--nproc_per_node={WORLD_SIZE}", "--no-python"]
    train = ["synthmix", "train", "--config", tiny_config, "--output_dir", output_dir, "--resume", "latest"]
    _launch(command=list(map(str, [*torchrun, *train])))

    [resumed] = _events(output_dir, "resume")
    assert resumed["step"] == 10 and not half_written.exists()
    _assert_identical(_adapter(output_dir), _adapter(reference_run), "resumed under torchrun vs accelerate launch")
    tokens = lambda run: [(e["tokens_real"], e["tokens_synthetic"]) for e in _events(run, "epoch")]  # noqa: E731
    assert tokens(output_dir) == tokens(reference_run)


# ---------------------------------------------------------------------------------------------- launch configs
ACCELERATE_CONFIGS = {
    "single_gpu.yaml": "NO",
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
}


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_launch_configs_parse(name: str):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = ROOT / "configs" / "accelerate" / name
    text = path.read_text()
    assert text.startswith(f"# accelerate launch --config_file configs/accelerate/{name} -m synthmix train --config ")
    raw = yaml.safe_load(text)
    config = load_config_from_file(str(path))  # what `accelerate launch` reads; unknown top-level keys raise
    assert config.distributed_type.value == ACCELERATE_CONFIGS[name]
    assert config.num_processes >= 1 and not config.use_cpu
    # The launcher copies nested keys onto its own arguments (fsdp_config.x as fsdp_x) and ignores
    # unknown ones silently, so a misspelt key is caught here or never.
    arguments = vars(launch_command_parser().parse_args(["--config_file", str(path), "train.py"]))
    for key in raw.get("fsdp_config") or {}:
        flag = key if key.startswith("fsdp") else f"fsdp_{key}"
        assert flag in arguments, f"{name}: fsdp_config.{key} is not an accelerate launch setting"
    if name == "fsdp.yaml":
        assert raw["fsdp_config"]["fsdp_version"] == 2 and raw["fsdp_config"]["fsdp_reshard_after_forward"] is True
