"""synthmix.trainer.integrations: the collapse callback inside a real TRL `SFTTrainer` on a tiny model: evals at step 0,
every N steps and at the last step into metrics.jsonl and report.html, the indicators through the trainer's
own log, a stop rule that stops training, and a resume that keeps the baseline."""

from __future__ import annotations

import json
import pydoc_data.topics
from pathlib import Path

import datasets
import pytest
from testkit import BENCHMARK_TASK, write_benchmark_task

from synthmix.trainer.integrations import STATE_FILE, CollapseCallback
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.reporting.samples import sample_files

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TEXTS = [text[:300] for text in pydoc_data.topics.topics.values() if len(text) > 200]
HELD_OUT, TRAIN = TEXTS[:4], TEXTS[4:44]
HOOK = {"num_prompts": 4, "prompt_tokens": 8, "max_eval_texts": 4, "eval_seq_len": 64, "self_bleu_samples": 4,
        "sampling": {"max_new_tokens": 8, "batch_size": 4}}  # fmt: skip


def sft_trainer(tmp_path: Path, tiny_tokenizer, tiny_model, max_steps: int, report_to=(), **collapse):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=0.01,
        max_length=64, use_cpu=True, report_to=list(report_to), logging_steps=1, save_steps=3, save_strategy="steps",
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    model = tiny_model(tiny_tokenizer).train()
    dataset = datasets.Dataset.from_dict({"text": TRAIN})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    trainer.add_callback(CollapseCallback.from_texts(HELD_OUT, tiny_tokenizer, trainer, **HOOK, **collapse))
    return trainer


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


@pytest.mark.slow
def test_the_callback_evaluates_and_logs_like_a_synthmix_run(tmp_path: Path, tiny_tokenizer, tiny_model) -> None:
    rules = [{"indicator": "real_ppl", "direction": "down", "threshold": 0.0001, "action": "warn"}]
    trainer = sft_trainer(tmp_path, tiny_tokenizer, tiny_model, 5, every_steps=2, rules=rules)
    trainer.train()
    out = Path(trainer.args.output_dir)
    events = read_events(out / METRICS)
    assert [e["step"] for e in of(events, "eval")] == [0, 2, 4, 5]  # step 0, every 2, and the last step
    assert len(of(events, "reference")) == 1 and (out / "report.html").is_file()
    # A full model (no peft adapter): the base-model indicators are not measured, the others are.
    assert all(e["real_ppl"] > 0 and "tail_mass" in e and "vendi_score" not in e for e in of(events, "eval"))
    # The indicators went through the trainer's own log: every report_to integration sees them.
    logged = [h for h in trainer.state.log_history if "collapse/real_ppl" in h]
    assert [h["step"] for h in logged] == [0, 2, 4, 5]
    assert logged[-1]["collapse/real_ppl"] == of(events, "eval")[-1]["real_ppl"]
    assert [a["step"] for a in of(events, "alert")] == [2, 4, 5]  # training lowers real_ppl: the rule fires


@pytest.mark.slow
def test_the_callback_scores_benchmarks_and_writes_samples_to_tensorboard(tmp_path, tiny_tokenizer, tiny_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    benchmarks = {"tasks": [BENCHMARK_TASK], "include_path": str(write_benchmark_task(tmp_path / "tasks")), "limit": 4}
    trainer = sft_trainer(tmp_path, tiny_tokenizer, tiny_model, 2, ["tensorboard"], benchmarks=benchmarks)
    trainer.train()
    out = Path(trainer.args.output_dir)
    key = f"benchmark.{BENCHMARK_TASK}.acc"
    assert [0.0 <= e[key] <= 1.0 for e in of(read_events(out / METRICS), "eval")] == [True, True]
    assert [h["step"] for h in trainer.state.log_history if f"collapse/{key}" in h] == [0, 2]
    (folder,) = {path.parent for path in (out / "runs").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    board.Reload()
    assert [s.step for s in board.Tensors("collapse/samples/text_summary")] == [0, 2] == list(sample_files(out))


@pytest.mark.slow
def test_a_stop_rule_stops_the_trainer(tmp_path: Path, tiny_tokenizer, tiny_model) -> None:
    rules = [{"indicator": "real_ppl", "direction": "down", "threshold": 0.0001, "action": "stop"}]
    trainer = sft_trainer(tmp_path, tiny_tokenizer, tiny_model, 8, every_steps=2, rules=rules)
    trainer.train()
    assert trainer.state.global_step == 2


@pytest.mark.slow
def test_a_resumed_trainer_keeps_the_baseline(tmp_path: Path, tiny_tokenizer, tiny_model) -> None:
    first = sft_trainer(tmp_path, tiny_tokenizer, tiny_model, 3)
    first.train()
    out = Path(first.args.output_dir)
    saved = json.loads((out / "checkpoint-3" / STATE_FILE).read_text())
    baseline = of(read_events(out / METRICS), "eval")[0]
    assert saved["baseline"] == {k: baseline[k] for k in saved["baseline"]}
    second = sft_trainer(tmp_path, tiny_tokenizer, tiny_model, 5)
    second.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    events = read_events(out / METRICS)
    assert [e["step"] for e in of(events, "eval")] == [0, 3, 5]  # no second baseline at step 3
    assert list(sample_files(out)) == [0, 3, 5]
    assert len(of(events, "reference")) == 1


def test_bad_collapse_settings_are_config_errors(tiny_tokenizer) -> None:
    from synthmix.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean"):
        CollapseCallback.from_texts(HELD_OUT, tiny_tokenizer, every_stpes=2)
    with pytest.raises(ConfigError, match="collapse.every_steps: must be at least 1"):
        CollapseCallback.from_texts(HELD_OUT, tiny_tokenizer, every_steps=0)
