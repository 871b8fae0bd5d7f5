"""Two machines, simulated on one: two torchrun agents (`--nnodes 2 --nproc_per_node 1 --node_rank 0|1
--master_addr 127.0.0.1 --master_port P`), one process each, train one run into one shared run folder, with
`data.cache_shared: false` and a cache folder per node, as nodes with node-local disks have (docs/how-to/multi-node.md).

Both "nodes" run on this machine, so both processes have local rank 0, as the first process of a real node has. Each
builds its node's store into its own cache_dir without waiting for the other: a trainer that ignored cache_shared
would make node 1 wait for node 0 and then build (the end state would look the same), so the first launch goes
through a wrapper that records which processes the trainer let build first. The run records world size 2, and a
resume under the same two-node launch from the run's step-2 checkpoint ends with the uninterrupted run's adapter,
byte for byte. Two launches, to keep the file cheap: starting four Python processes costs more than training.

Also here: configs/accelerate/multi_node.yaml turns into the torchrun arguments of a node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from testkit import subprocess_env

ROOT = Path(__file__).parents[2]
LAUNCH_TIMEOUT_S = 240
FAILED_PEER_GRACE_S = 30  # how long the other agent gets to stop once one has failed
STEPS = 4  # train.max_steps of the run; a checkpoint every 2 steps

TINY_CONFIG = f"""
seed: 0
tokenizer: {{vocab_size: 300}}
data:
  synthetic_ratio: 0.3
  sources:
    - {{name: docs, kind: real, builtin: python_docs, max_examples: 16}}
    - {{name: syn, kind: synthetic, path: {ROOT / "data/tiny_synthetic.jsonl"}, max_examples: 24}}
lora: {{r: 4, alpha: 8, dropout: 0.1}}
train: {{epochs: 1, max_steps: {STEPS}, per_device_train_batch_size: 2, seq_len: 32, learning_rate: 0.01,
         warmup_steps: 2, progress: false}}
checkpoint: {{every_steps: 2, keep_last: 3}}
collapse: {{enabled: false}}
"""

# Runs `synthmix ...` (what `-m synthmix` runs), recording for this process whether the trainer lets it build the
# data store first (without waiting for another process) and its local rank.
RECORDING_LAUNCHER = """
import json, os, sys
from synthmix.cli import main
from synthmix.trainer.runtime import setup

first_then_others = setup.first_then_others

def recording(accelerator, job, first):
    record = {"first": first, "local_rank": accelerator.local_process_index}
    with open(os.path.join(os.environ["BUILDERS"], f"rank{accelerator.process_index}.json"), "w") as handle:
        json.dump(record, handle)
    return first_then_others(accelerator, job, first)

setup.first_then_others = recording
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(folder: Path, program: list[str], node_args: list[list[str]], env: dict[str, str]) -> None:
    """Start one torchrun agent per node, each with its own command line, and wait for both (a hang fails)."""
    port = _free_port()
    agents, logs = [], []
    for rank, extra in enumerate(node_args):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        rendezvous = ["--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port)]
        log = folder / f"node{rank}.log"
        logs.append(log)
        command = [*torchrun, *rendezvous, *program, *extra]
        with log.open("w") as out:  # each agent in its own process group: a hang kills its worker too
            agent = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        agents.append(agent)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while any(agent.poll() is None for agent in agents) and time.monotonic() < deadline:
            if any(agent.poll() for agent in agents):  # one failed: the other may wait for it forever
                deadline = min(deadline, time.monotonic() + FAILED_PEER_GRACE_S)
            time.sleep(0.2)
    finally:
        codes = [agent.poll() if agent.poll() is not None else "killed (timed out)" for agent in agents]
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    if codes != [0, 0]:
        tails = "\n".join(f"--- node {r} ({log}):\n{log.read_text()[-4000:]}" for r, log in enumerate(logs))
        pytest.fail(f"two-node launch failed: {codes}\n{tails}")


def _train(folder: Path, output_dir: Path, *extra: str, env: dict[str, str], program: list[str] | None = None) -> None:
    """One run on two nodes with node-local caches: `folder/cache-node{R}` for node R."""
    program = program or ["-m", "synthmix"]
    common = ["train", "--config", str(folder / "tiny.yaml"), "--output_dir", str(output_dir)]
    common += ["--data.cache_shared", "false", *extra]
    nodes = [[*common, "--data.cache_dir", str(folder / f"cache-node{rank}")] for rank in range(2)]
    _two_nodes(folder, program, nodes, env)


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, filter(None, lines)) if e["event"] == kind]


def _store_entries(cache_dir: Path) -> list[str]:
    """The sealed entries of a cache's store (a manifest is written last)."""
    return sorted(p.parent.name for p in (cache_dir / "store").glob("*/manifest.json"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_arch) -> Path:
    folder = tmp_path_factory.mktemp("multi-node")
    (folder / "tiny.yaml").write_text(TINY_CONFIG + yaml.safe_dump({"model": {"arch": dict(tiny_arch)}}))
    return folder


@pytest.mark.slow
def test_two_nodes_build_one_store_each_train_one_run_and_resume_it_bit_for_bit(folder: Path):
    # The uninterrupted run, through the launcher that records who builds the store first.
    launcher, builders = folder / "recording_launcher.py", folder / "builders"
    launcher.write_text(RECORDING_LAUNCHER)
    builders.mkdir()
    env = subprocess_env(CUDA_VISIBLE_DEVICES="", BUILDERS=str(builders))
    run = folder / "run"
    _train(folder, run, env=env, program=[str(launcher)])

    # One store per node, each built by that node's own process, without waiting for the other node.
    records = {p.stem: json.loads(p.read_text()) for p in builders.glob("rank*.json")}
    assert records == {f"rank{r}": {"first": True, "local_rank": 0} for r in range(2)}, (
        "with data.cache_shared false, the local rank 0 of every node builds its node's store"
    )
    entries = [_store_entries(folder / f"cache-node{rank}") for rank in range(2)]
    assert entries[0] and entries[0] == entries[1], entries  # every source and the cleaning, in both caches
    for rank in range(2):
        assert list((folder / f"cache-node{rank}").glob("tokenizer-*/tokenizer.json")), rank

    # One run of two processes, written once into the shared run folder.
    configs = _events(run, "config")
    assert [c["world_size"] for c in configs] == [2], "the two agents did not form one group of two processes"
    assert [e["step"] for e in _events(run, "end")] == [STEPS]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-2", "step-4"]

    # A run stopped after its step-2 checkpoint (the state a preemption or train.max_steps 2 leaves), resumed by
    # the same two-node launch with `--resume latest`: each process reads its own stream position and RNG states.
    resumed = folder / "resumed"
    shutil.copytree(run / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    _train(folder, resumed, "--resume", "latest", env=subprocess_env(CUDA_VISIBLE_DEVICES=""))
    assert [e["step"] for e in _events(resumed, "resume")] == [2]
    assert [c["world_size"] for c in _events(resumed, "config")] == [2]
    assert [e["step"] for e in _events(resumed, "train")] == [1, 2, 3, 4]
    adapter = "adapter/adapter_model.safetensors"
    assert (resumed / adapter).read_bytes() == (run / adapter).read_bytes(), "the resumed adapter differs"


def test_the_multi_node_accelerate_config_launches_torchrun_on_each_machine():
    """configs/accelerate/multi_node.yaml, with a machine's rank and the main machine's address on the command line,
    becomes that machine's torchrun arguments: 2 nodes, its node rank, 8 processes, a static rendezvous at the main
    machine's address."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = ROOT / "configs" / "accelerate" / "multi_node.yaml"
    assert path.read_text().startswith("# accelerate launch --config_file configs/accelerate/multi_node.yaml ")
    config = load_config_from_file(str(path))  # unknown top-level keys raise
    assert config.distributed_type.value == "MULTI_GPU" and not config.use_cpu
    assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, 0)
    node = ["--machine_rank", "1", "--main_process_ip", "10.1.2.3", "--main_process_port", "29511"]
    args = launch_command_parser().parse_args(["--config_file", str(path), *node, "train.py"])
    _validate_launch_command(args)
    prepare_multi_gpu_env(args)  # machine rank 1 skips the port check: the port is the main machine's
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert (args.rdzv_endpoint, args.rdzv_backend) == ("10.1.2.3:29511", "static")
