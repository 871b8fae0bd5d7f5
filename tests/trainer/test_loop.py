"""The training loop end to end: the run folder, metrics.jsonl, the adapter, resume after a kill (bit-identical),
damaged checkpoints, a changed setting on resume, a diverging loss, full training, chat data and the CLI.

Most tests read one reference run of the tiny config (conftest.py); runs of their own use `train.max_steps`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_probe import record_pieces
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from testkit import example_chat, pairs_source, run_config, subprocess_env
from transformers import AutoModelForCausalLM, AutoTokenizer

import synthmix.trainer.runtime.loop as loop
from synthmix.cli import main as synthmix
from synthmix.data_mixers.corpus import build_corpora
from synthmix.data_mixers.encoding import encode_chat
from synthmix.data_mixers.labels import IGNORE
from synthmix.data_mixers.mixer import Mixer
from synthmix.files import lock_file
from synthmix.schema import to_dict
from synthmix.trainer.config import RunConfig, load_config
from synthmix.trainer.errors import TrainerError
from synthmix.trainer.modeling.model import add_lora, build_model
from synthmix.trainer.modeling.packing import pack_rows
from synthmix.trainer.reporting.events import METRICS, EventLog, read_events
from synthmix.trainer.runtime.checkpoint import find_checkpoint, verify
from synthmix.trainer.runtime.loop import fit, train
from synthmix.trainer.runtime.run_folder import RUN_LOCK
from synthmix.trainer.runtime.setup import setup

# peft's PeftModel.from_pretrained reads a property that transformers 5.24 deprecated; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
# Settings that make a run that is not about the collapse hook or checkpoints cheaper.
QUICK = {"collapse": {"enabled": False}, "checkpoint": {"every_steps": None}}
# Top level of a finished LoRA run folder. report.html and plots/ come from the collapse hook (on by default);
# .synthmix.lock is what a run holds while it trains into the folder.
RUN_FOLDER = {
    "adapter", "checkpoints", "config.yaml", "metrics.jsonl", "tensorboard", "tokenizer", "report.html", "plots",
    "samples", ".synthmix.lock",
}  # fmt: skip
CHECKPOINT_FOLDER = {
    "adapter", "optimizer.pt", "scheduler.pt", "rng.pt", "mixer.json", "progress.json", "metrics.jsonl",
    "collapse.json", "manifest.json",
}  # fmt: skip
TRAIN_FIELDS = {"loss", "loss_real", "loss_synthetic", "lr", "tokens_per_s"}


def main(argv: list[str]) -> int:
    """`synthmix train ARGS`, in process."""
    return synthmix(["train", *argv])


def cli_command(*args: str) -> list[str]:
    """`python -m synthmix train ARGS` with this interpreter."""
    return [sys.executable, "-m", "synthmix", "train", *args]


def train_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "train"]


def strict_json(line: str) -> dict:
    """Parse one line as standard JSON (NaN and Infinity are not JSON)."""

    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=reject)


def rebuilt_base(config: RunConfig, tokenizer) -> torch.nn.Module:
    """The base model as the loop built it: same config, same seed, nothing trained."""
    torch.manual_seed(config.seed)
    return build_model(config.model, tokenizer, torch.float32, "sdpa")


def sample_ids(tokenizer) -> torch.Tensor:
    text = "The while statement is used for repeated execution as long as an expression is true."
    return torch.tensor([tokenizer(text)["input_ids"]])


@torch.no_grad()
def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(input_ids=ids).logits
    finally:
        model.train(was_training)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


def oldest_checkpoint(run_dir: Path) -> Path:
    """The oldest of a run's kept checkpoints (a mid-run one: the run went on after it)."""
    return min((run_dir / "checkpoints").iterdir(), key=step_of)


def assert_same_training(resumed: list[dict], reference) -> None:
    """The resumed run logged every step exactly once, with the reference run's losses and learning rates."""
    ours, theirs = train_events(resumed), train_events(reference.events)
    assert [e["step"] for e in ours] == reference.train_steps
    for field in ("loss", "loss_real", "loss_synthetic", "lr", "tokens_real", "tokens_synthetic"):
        assert [e[field] for e in ours] == [e[field] for e in theirs], field
    epochs = [e for e in resumed if e["event"] == "epoch"]
    assert [e["realized_synthetic_ratio"] for e in epochs] == [
        e["realized_synthetic_ratio"] for e in reference.events if e["event"] == "epoch"
    ]


# ---------------------------------------------------------------------------------------------- the run folder
def test_run_folder_holds_exactly_the_expected_files(reference) -> None:
    out = reference.output_dir
    assert {p.name for p in out.iterdir()} == RUN_FOLDER
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    # keep_last: the newest 3 distinct checkpoint steps survive, each complete and intact.
    written = list(dict.fromkeys(e["step"] for e in reference.events if e["event"] == "checkpoint"))
    checkpoints = sorted((out / "checkpoints").iterdir(), key=step_of)
    assert [p.name for p in checkpoints] == [f"step-{s}" for s in written[-3:]]
    for checkpoint in checkpoints:
        assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FOLDER
        assert verify(checkpoint) is None
    # The resolved config and the tokenizer are saved, so the run can be read back on its own.
    assert to_dict(load_config(out / "config.yaml")) == to_dict(reference.config)
    assert len(AutoTokenizer.from_pretrained(out / "tokenizer")) == len(reference.run.tokenizer)


def test_metrics_jsonl_records_every_step_and_the_exact_ratio(reference) -> None:
    lines = (reference.output_dir / METRICS).read_text().splitlines()
    events = [strict_json(line) for line in lines]
    assert all(isinstance(e.get("event"), str) for e in events)
    assert events[0]["event"] == "config" and events[-1]["event"] == "end"
    steps_per_epoch = events[0]["steps_per_epoch"]
    assert len(steps_per_epoch) == 2 and all(n > 5 for n in steps_per_epoch)

    steps = train_events(events)
    assert [e["step"] for e in steps] == list(range(1, sum(steps_per_epoch) + 1))
    for e in steps:
        assert TRAIN_FIELDS <= e.keys()
        assert math.isfinite(e["loss"]) and e["loss"] > 0 and e["tokens_per_s"] > 0
        for kind in ("real", "synthetic"):
            assert e[f"loss_{kind}"] is None or (math.isfinite(e[f"loss_{kind}"]) and e[f"loss_{kind}"] > 0)
    assert any(e["loss_real"] is not None and e["loss_synthetic"] is not None for e in steps)
    # Linear warm-up over 2 steps to the peak, then a cosine decay towards 0 at the last step.
    peak = reference.config.train.learning_rate
    assert [e["lr"] for e in steps[:3]] == pytest.approx([peak / 3, 2 * peak / 3, peak])
    assert steps[-1]["lr"] < peak / 50

    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert e["target_synthetic_ratio"] == 0.3
        assert abs(e["realized_synthetic_ratio"] - 0.3) <= 0.01
        in_epoch = [s for s in steps if s["epoch"] == e["epoch"]]
        assert e["tokens_synthetic"] == sum(s["tokens_synthetic"] for s in in_epoch)
        assert e["tokens_real"] == sum(s["tokens_real"] for s in in_epoch)


def test_metrics_lines_stay_json_when_a_value_is_not_finite(tmp_path: Path) -> None:
    log = EventLog(tmp_path, enabled=True)
    log.event("train", step=1, loss=float("nan"), grad_norm=np.float32("inf"), nested={"x": [float("-inf"), 1.5]})
    log.close()
    (line,) = (tmp_path / METRICS).read_text().splitlines()
    event = strict_json(line)
    assert (event["loss"], event["grad_norm"], event["nested"]) == (None, None, {"x": [None, 1.5]})


# ---------------------------------------------------------------------------------------------- the adapter
def test_adapter_reloads_with_peft_and_gives_the_trained_logits(reference) -> None:
    tokenizer = AutoTokenizer.from_pretrained(reference.output_dir / "tokenizer")
    reloaded = PeftModel.from_pretrained(rebuilt_base(reference.config, tokenizer), reference.output_dir / "adapter")
    trained = reference.run.model
    saved = load_file(reference.output_dir / "adapter" / "adapter_model.safetensors")
    expected = get_peft_model_state_dict(trained)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    ids = sample_ids(tokenizer)
    torch.testing.assert_close(logits_of(reloaded, ids), logits_of(trained, ids), rtol=0, atol=1e-6)


def test_lora_weights_changed_while_base_weights_stay_bitwise_unchanged(reference) -> None:
    initial = add_lora(rebuilt_base(reference.config, reference.run.tokenizer), reference.config.lora)
    before = dict(initial.named_parameters())
    lora, base = 0, 0
    for name, param in reference.run.model.named_parameters():
        if "lora_" in name:
            lora += 1
            assert param.requires_grad, name
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            base += 1
            assert not param.requires_grad, name
            assert torch.equal(param, before[name]), f"base weight {name} changed"
    assert lora == 4 * 2 and base > 0  # q, k, v, o of the one layer, A and B each


def test_merge_adapter_writes_a_model_equal_to_base_plus_adapter(make_config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = run_config(make_config({**QUICK, "train": {"merge_adapter": True, "max_steps": 3}}), out)
    train(config)
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")  # the tokenizer is saved next to the weights
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = rebuilt_base(config, tokenizer)
    ids = sample_ids(tokenizer)
    base_logits = logits_of(base, ids)
    with_adapter = logits_of(PeftModel.from_pretrained(base, out / "adapter"), ids)
    assert (with_adapter - base_logits).abs().max() > 1e-4  # the adapter does something, so equality means something
    torch.testing.assert_close(logits_of(merged, ids), with_adapter, rtol=0, atol=1e-5)


def test_lora_r_zero_trains_and_saves_the_full_model(make_config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = run_config(make_config({**QUICK, "lora": {"r": 0}, "train": {"max_steps": 2}}), out)
    train(config)
    assert (out / "model").is_dir() and not (out / "adapter").exists()
    first = read_events(out / METRICS)[0]
    assert first["trainable_parameters"] == first["parameters"]
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    before = dict(rebuilt_base(config, tokenizer).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(out / "model").named_parameters())
    layer_weights = [name for name in after if ".layers." in name]
    assert layer_weights and all(not torch.equal(after[n], before[n]) for n in layer_weights)


# ---------------------------------------------------------------------------------------------- resume
def wait_for_train_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 300) -> None:
    """Return once metrics.jsonl holds a complete `train` event at `step` or later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before step {step}, so it could not be killed")
        text = metrics.read_text() if metrics.is_file() else ""
        for line in text.splitlines(keepends=True):
            if line.endswith("\n") and line.startswith('{"event": "train"') and json.loads(line)["step"] >= step:
                return
        time.sleep(0.005)
    pytest.fail(f"no train event at step {step} after {timeout} s")


def interrupted_cli_run(
    config: Path, out: Path, step: int, interrupt: Callable[[subprocess.Popen], object]
) -> tuple[int, str]:
    """Run `python -m synthmix train --config config --output_dir out`, call `interrupt(process)` once `step` is logged
    (send it a signal, fill its disk), and return the run's exit code and its stderr."""
    proc = subprocess.Popen(
        cli_command("--config", str(config), "--output_dir", str(out)),
        cwd=config.parent, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_train_step(proc, out / METRICS, step)
        interrupt(proc)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, stderr


@pytest.mark.slow
def test_run_killed_mid_training_resumes_to_the_identical_adapter(reference, tmp_path: Path) -> None:
    out = tmp_path / "run"
    total = reference.train_steps[-1]
    kill_at = random.Random(20261125).randint(5, total // 2)  # an arbitrary step, fixed so failures reproduce
    returncode, _ = interrupted_cli_run(
        reference.config_path, out, kill_at, lambda proc: proc.send_signal(signal.SIGKILL)
    )
    assert returncode == -signal.SIGKILL
    assert not (out / "adapter").exists()
    killed_at = train_events(read_events(out / METRICS))[-1]["step"]
    resume_from = step_of(find_checkpoint(out / "checkpoints", "latest"))
    assert 4 <= resume_from <= killed_at < total

    train(run_config(reference.config_path, out), resume="latest")

    events = read_events(out / METRICS)
    (resumed,) = [e for e in events if e["event"] == "resume"]
    assert resumed["step"] == resume_from
    assert_same_training(events, reference)  # every step logged once: only the remaining steps ran
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


@pytest.mark.slow
def test_resume_skips_a_checkpoint_killed_mid_write(reference, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference.output_dir, out)
    shutil.rmtree(out / "adapter")
    checkpoints = sorted((out / "checkpoints").iterdir(), key=step_of)
    newest, previous = checkpoints[-1], checkpoints[-2]
    # A kill while writing: the newest checkpoint lacks its manifest, and a temporary folder is left behind.
    (newest / "manifest.json").unlink()
    stale = out / "checkpoints" / f".step-{step_of(newest) + 4}.tmp-123-abcdef12"
    stale.mkdir()
    (stale / "optimizer.pt").write_bytes(b"half a file")

    with pytest.warns(UserWarning, match=rf"{newest.name} is damaged \(no manifest.json"):
        train(run_config(reference.config_path, out), resume="latest")

    events = read_events(out / METRICS)
    assert [e["step"] for e in events if e["event"] == "resume"] == [step_of(previous)]
    assert not stale.exists()
    assert verify(out / "checkpoints" / newest.name) is None  # rewritten whole when the run got there again
    assert_same_training(events, reference)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


@pytest.fixture(scope="module")
def resumed_with_new_lr(reference, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The reference run continued from its oldest kept checkpoint (by path) with twice the learning rate."""
    out = tmp_path_factory.mktemp("new-lr") / "run"
    shutil.copytree(reference.output_dir, out)
    peak = reference.config.train.learning_rate
    train(run_config(reference.config_path, out, "--train.learning_rate", str(2 * peak)),
          resume=str(oldest_checkpoint(out)))  # fmt: skip
    return read_events(out / METRICS)


def test_resume_reports_a_changed_setting_and_that_the_new_value_wins(
    reference, resumed_with_new_lr: list[dict]
) -> None:
    (resumed,) = [e for e in resumed_with_new_lr if e["event"] == "resume"]
    assert resumed["step"] == step_of(oldest_checkpoint(reference.output_dir))
    peak = reference.config.train.learning_rate
    assert f"train.learning_rate: checkpoint {peak!r}, now {2 * peak!r} (the new value wins)" in resumed["changed"]


def test_resume_trains_with_the_changed_learning_rate(reference, resumed_with_new_lr: list[dict]) -> None:
    start = step_of(oldest_checkpoint(reference.output_dir))
    after = {e["step"]: e["lr"] for e in train_events(resumed_with_new_lr) if e["step"] > start}
    before = {e["step"]: e["lr"] for e in train_events(reference.events) if e["step"] > start}
    assert after and after == pytest.approx({step: 2 * lr for step, lr in before.items()}, rel=1e-12)


def test_fresh_run_into_a_used_folder_is_an_error_that_suggests_resume_only_when_it_can(
    make_config, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS).write_text('{"event": "config"}\n')
    with pytest.raises(TrainerError, match=r"already holds a run \(it has no checkpoint to resume from\); choose"):
        train(run_config(make_config(QUICK), out))
    (out / "checkpoints" / "step-4").mkdir(parents=True)
    with pytest.raises(TrainerError, match=r"already holds a run \(pass --resume latest to continue it\); choose"):
        train(run_config(make_config(QUICK), out))
    assert (out / METRICS).read_text() == '{"event": "config"}\n'


def test_a_run_folder_in_use_by_another_process_is_refused_naming_it(make_config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    held = lock_file(out / RUN_LOCK)
    try:
        with pytest.raises(TrainerError, match=rf"output_dir {out} is in use by another run \(process {os.getpid()}\)"):
            train(run_config(make_config(QUICK), out))
    finally:
        held.close()
    assert not (out / METRICS).exists()


# ---------------------------------------------------------------------------------------------- a diverging loss
def test_non_finite_loss_stops_naming_the_step_and_the_intact_checkpoint(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    config = run_config(make_config({**QUICK, "checkpoint": {"every_steps": 2}, "train": {"max_steps": 8}}), out)
    calls = itertools.count(1)
    real = loop.per_token_nll
    monkeypatch.setattr(loop, "per_token_nll", lambda *a: real(*a) * (math.nan if next(calls) >= 5 else 1.0))

    with pytest.raises(TrainerError, match=r"not finite at step 5") as caught:
        train(config)
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-4'};" in str(caught.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert verify(find_checkpoint(out / "checkpoints", "latest")) is None
    assert [e["step"] for e in train_events(read_events(out / METRICS))] == [1, 2, 3, 4]
    assert not (out / "adapter").exists()


def test_cli_reports_an_exploding_loss_in_one_line_and_exits_2(make_config, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    path = make_config({**QUICK, "checkpoint": {"every_steps": 1}, "train": {"max_grad_norm": None}})
    code = main(["--config", str(path), "--output_dir", str(out), "--train.learning_rate", "1.0e+30"])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the loss is not finite at step ")
    failed_step = int(line.removeprefix("error: the loss is not finite at step ").split(";")[0])
    last_good = find_checkpoint(out / "checkpoints", "latest")
    assert step_of(last_good) == failed_step - 1 and verify(last_good) is None
    assert f"the last good checkpoint is {last_good};" in line  # the checkpoint it names is there, intact


# ---------------------------------------------------------------------------------------------- chat data
CHATS = [example_chat(i) for i in range(30)]


@pytest.fixture
def chat_config(make_config, tmp_path: Path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in CHATS))
    source = {"name": "chat", "kind": "real", "path": str(path), "messages_field": "messages"}
    data = {"sources": [source], "synthetic_ratio": 0.0, "assistant_only_loss": True}
    return make_config({**QUICK, "data": data, "tokenizer": {"vocab_size": 300}, "train": {"max_steps": 2}})


def test_chat_data_with_assistant_only_loss_labels_only_assistant_tokens(chat_config: Path, tmp_path: Path) -> None:
    config = run_config(chat_config, tmp_path / "run")
    corpora = build_corpora(config.data, config.tokenizer)
    tokenizer = corpora.tokenizer
    mixer = Mixer(corpora.train, config.data, config.seed)
    mixer.set_epoch(1)
    examples = list(mixer)
    assert len(examples) == len(CHATS) - len(corpora.held_out)
    for example in examples:
        labels = pack_rows([[example]], len(example.ids), tokenizer.pad_token_id).labels[0]
        trained = tokenizer.decode(labels[labels != IGNORE].tolist())
        replies = [m["content"] for m in CHATS[example.index] if m["role"] == "assistant"]
        assert trained == "".join(f"{reply}<|im_end|>\n" for reply in replies)


def test_chat_data_trains(chat_config: Path, tmp_path: Path) -> None:
    out = train(run_config(chat_config, tmp_path / "run"))
    steps = train_events(read_events(out / METRICS))
    assert [e["step"] for e in steps] == [1, 2]
    assert all(math.isfinite(e["loss_real"]) and e["loss_synthetic"] is None for e in steps)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_chats_packed_whole_with_bfd_train_every_reply_with_its_prompt(chat_config: Path, tmp_path: Path) -> None:
    overrides = ["--data.packing", "bfd", "--train.max_steps", "null", "--train.seq_len", "128"]  # every chat fits
    config = run_config(chat_config, tmp_path / "run", *overrides)
    run = setup(config, resume=None)
    pieces = record_pieces(run.mixer)
    try:
        fit(run)
    finally:
        run.close()
    lengths = {i: len(encode_chat(run.tokenizer, CHATS[i])[0]) for i in range(len(CHATS))}
    chats = [p for p in pieces if p[0] == 1]
    assert chats and all(start == 0 and n == lengths[index] for _, _, _, index, start, n in chats)
    assert sorted(p[3] for p in chats) == sorted(set(range(len(CHATS))) - held_indices(run))


def held_indices(run) -> set[int]:
    """The chats the run holds out (their token ids are the store's)."""
    held = {tuple(example.ids.tolist()) for example in run.held_out}
    return {i for i in range(len(CHATS)) if tuple(encode_chat(run.tokenizer, CHATS[i])[0].tolist()) in held}


def test_prompt_completion_data_trains_on_the_completions_only(make_config, tmp_path: Path) -> None:
    pairs = [{"prompt": f"What is {i} plus {i}?", "completion": f" It is {2 * i}."} for i in range(40)]
    source = pairs_source(tmp_path / "pairs.jsonl", pairs)
    data = {"sources": [source], "synthetic_ratio": 0.0, "packing": "bfd"}
    config = run_config(make_config({**QUICK, "data": data, "train": {"max_steps": 2}}), tmp_path / "run")
    corpora = build_corpora(config.data, config.tokenizer)
    tokenizer = corpora.tokenizer
    mixer = Mixer(corpora.train, config.data, config.seed, seq_len=config.train.seq_len)
    mixer.set_epoch(1)
    for example in mixer:
        labels = pack_rows([[example]], len(example.ids), tokenizer.pad_token_id).labels[0]
        assert (
            tokenizer.decode(labels[labels != IGNORE].tolist()) == pairs[example.index]["completion"] + "<|endoftext|>"
        )
    steps = train_events(read_events(train(config) / METRICS))
    assert [e["step"] for e in steps] == [1, 2] and all(math.isfinite(e["loss"]) for e in steps)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_trains_and_prints_the_run_folder_and_a_second_start_into_it_is_one_line(
    make_config, tmp_path: Path
) -> None:
    """Two identical commands started at the same moment into one empty output_dir: one trains, the other is
    refused in one line (the folder is in use, or already holds a run, depending on when it looks)."""
    out = tmp_path / "run"
    args = ["--config", str(make_config(QUICK)), "--output_dir", str(out), "--train.max_steps", "3"]
    started = [
        subprocess.Popen(
            cli_command(*args),
            cwd=REPO,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(process.wait(timeout=300), *process.communicate()) for process in started]
    (done,) = [r for r in results if r[0] == 0]
    (refused,) = [r for r in results if r[0] != 0]
    assert done[1].strip().splitlines()[-1] == f"run folder: {out}"
    assert refused[0] == 2 and len(refused[2].strip().splitlines()) == 1, refused[2]
    assert re.fullmatch(
        rf"error: output_dir {out} (is in use by another run \(process \d+\)|already holds a run \(.*\)); .*",
        refused[2].strip(),
    )
    assert [e["step"] for e in train_events(read_events(out / METRICS))] == [1, 2, 3]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_cli_bad_key_exits_2_with_one_line_and_no_traceback(make_config, tmp_path: Path) -> None:
    args = ["--config", str(make_config()), "--output_dir", str(tmp_path / "run"), "--train.learnig_rate", "0.1"]
    done = subprocess.run(
        cli_command(*args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    expected = "error: unknown key 'train.learnig_rate' (did you mean 'learning_rate'?)"
    assert done.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "run").exists()


def test_cli_debug_shows_the_traceback(make_config, tmp_path: Path, capsys) -> None:
    args = ["--config", str(make_config()), "--output_dir", str(tmp_path / "run"), "--train.epochs", "two", "--debug"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "error: train.epochs: expected an integer, got str 'two'"


def test_setup_resume_without_checkpoints_is_an_error(make_config, tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match=r"--resume latest: no checkpoint in"):
        setup(run_config(make_config(QUICK), tmp_path / "run"), resume="latest")
