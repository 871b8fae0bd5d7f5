"""The ready configs in configs/: each opens with the command that runs it, loads and validates, and runs that
command for two optimizer steps with the hub model swapped for a tiny one of the same name (tests/conftest.py's
`hub_env`), in a copy of the repository's configs/ and data/, as a user who cloned it would. configs/chat-sft.yaml
is the README's quickstart, whose commands tests/docs/test_docs.py runs as written (whole epochs)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthmix.trainer.config import load_config

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "run_commands.py"
READY = ("chat-sft", "qlora", "fsdp2", "sweep", "recursive")
# qlora first: one process runs them all, and a run that quantizes nothing sets bitsandbytes aside for the process
# (synthmix.libraries).
TRAINED_HERE = ("qlora", "fsdp2", "sweep", "recursive")
# Two steps of short rows and a small eval: what the configs say about the model, the data and the method runs as
# written; the batch and eval sizes, chosen for a GPU, are cut to the tiny model's.
TWO_STEPS = (
    "--train.max_steps 2 --train.seq_len 256 --train.gradient_accumulation_steps 1 --train.progress false "
    "--collapse.num_prompts 8 --collapse.max_eval_texts 8 --collapse.sampling.max_new_tokens 16"
)
# The sweep and the recursive loop, cut to two runs and one generation of two steps.
SHORTER = {
    "sweep": f"--ratios 0,0.5 --seeds 0 --steps 2 {TWO_STEPS.replace('--train.max_steps 2 ', '')}",
    "recursive": f"--generations 1 --samples 8 --max-new-tokens 16 {TWO_STEPS}",
}


def header(name: str) -> list[str]:
    lines = itertools.takewhile(lambda line: line.startswith("#"), (REPO / "configs" / f"{name}.yaml").open())
    return [line[1:].strip() for line in lines]


def first_command(name: str) -> str:
    """The first `synthmix ...` command of the config's header that trains. fsdp2's header has only launches of
    N processes (the FSDP launch itself is tested with the same launch config in tests/trainer/test_distributed.py):
    here its config trains in one process, unsharded."""
    commands = [line for line in header(name) if line.startswith("synthmix ") and f"configs/{name}.yaml" in line]
    commands = [line for line in commands if not line.startswith("synthmix inspect ")]
    return commands[0] if commands else f"synthmix train --config configs/{name}.yaml"


@pytest.mark.parametrize("name", READY)
def test_each_ready_config_loads_and_opens_with_its_command(name: str) -> None:
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert config.model.name and config.model.attn_implementation == "auto"
    assert config.tokenizer.name is None  # the model's own tokenizer
    assert any(line.startswith(("synthmix ", "accelerate launch ", "torchrun ")) for line in header(name))


@pytest.fixture(scope="module")
def ran(hub_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every ready config's first command but the quickstart's, two steps, in one process and one copy of the
    repository."""
    work = tmp_path_factory.mktemp("user")
    for folder in ("configs", "data"):
        shutil.copytree(REPO / folder, work / folder)
    commands = [f"{first_command(name)} {SHORTER.get(name, TWO_STEPS)}" for name in TRAINED_HERE]
    done = subprocess.run(
        [sys.executable, str(RUNNER), *commands], cwd=work, env=hub_env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return {name: work / "runs" / name for name in TRAINED_HERE}


def events(run: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qlora", "fsdp2"])
def test_the_training_configs_train_two_steps_on_the_chats_with_assistant_only_loss(ran: dict[str, Path], name: str):
    run = ran[name]
    (config,) = events(run, "config")
    assert config["tokenizer"]["from"].startswith("the model's own") and config["tokenizer"]["chat_template"] == "own"
    assert {s["name"] for s in config["sources"]} == {"chats", "synthetic-chats"}
    assert [e["step"] for e in events(run, "train")] == [1, 2]
    assert (run / "adapter" / "adapter_config.json").is_file()
    if name == "qlora":
        assert config["quantization"]["load_in_4bit"] is True


@pytest.mark.slow
def test_the_sweep_config_gives_a_verdict(ran: dict[str, Path]) -> None:
    verdict = json.loads((ran["sweep"] / "sweep" / "verdict.json").read_text())
    assert verdict["ratios"] == [0.0, 0.5] and verdict["steps"] == 2 and "safe_ratio" in verdict


@pytest.mark.slow
def test_the_recursive_config_trains_a_generation(ran: dict[str, Path]) -> None:
    summary = [json.loads(line) for line in (ran["recursive"] / "replace" / "generations.jsonl").open()]
    assert [g["generation"] for g in summary] == [0, 1]
