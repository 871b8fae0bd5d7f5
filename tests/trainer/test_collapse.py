"""synthmix.trainer.collapse.monitor: the eval hook in real runs (its events, its three actions, resume, no effect on
training), its alert rules by hand, and the evidence that it sees collapse: a degenerate synthetic corpus at a high
ratio moves the indicators the way collapse moves them. The runs are the tiny config of conftest.py (its `reference`
run, shared with test_loop.py) with changed rules; each is trained once per module and read by several tests."""

from __future__ import annotations

import dataclasses
import json
import math
import pydoc_data.topics
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthmix.errors import ConfigError
from synthmix.schema import apply_overrides, flatten
from synthmix.trainer.collapse.indicators import self_bleu
from synthmix.trainer.collapse.monitor import CollapseMonitor, Measured
from synthmix.trainer.config import (
    HELD_OUT_INDICATORS,
    INDICATOR_DIRECTION,
    AlertRule,
    CollapseConfig,
    RunConfig,
    SamplingConfig,
    load_config,
)
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.checkpoint import find_checkpoint, verify
from synthmix.trainer.runtime.loop import train

EVAL_KEYS = {
    "real_ppl", "distinct_1", "distinct_2", "distinct_3", "unigram_entropy", "self_bleu", "repetition_rate",
    "mean_length", "std_length", "tail_mass", "js_divergence", "compression_ratio", "next_token_entropy",
    "realized_synthetic_ratio", "epoch", "step", "sampling",
}  # fmt: skip
SAMPLE_INDICATORS = set(INDICATOR_DIRECTION) - set(HELD_OUT_INDICATORS)


def rule(indicator: str, direction: str, threshold: float, action: str = "warn", against: str = "baseline") -> dict:
    return dict(indicator=indicator, direction=direction, threshold=threshold, action=action, against=against)


def variant(reference, folder: Path, changes: dict[str, Any]) -> Path:
    """The reference run's config with `changes` deep-merged into it (lists replace), written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    raw = yaml.safe_load(reference.config_path.read_text())
    path.write_text(yaml.safe_dump(apply_overrides(raw, flatten(changes).items()), sort_keys=False))
    return path


def config_for(path: Path, output_dir: Path, *overrides: str) -> RunConfig:
    return load_config(path, ["--output_dir", str(output_dir), *overrides])


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def epoch_end_steps(events: list[dict]) -> dict[int, int]:
    return {e["epoch"]: e["step"] for e in of(events, "epoch")}


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


@dataclasses.dataclass
class Trained:
    """A finished run of this module: its config file, folder and events."""

    config_path: Path
    output_dir: Path
    events: list[dict[str, Any]]


def trained(config_path: Path, output_dir: Path, *overrides: str, resume: str | None = None) -> Trained:
    train(config_for(config_path, output_dir, *overrides), resume=resume)
    return Trained(config_path, output_dir, read_events(output_dir / METRICS))


# ---------------------------------------------------------------------------------------------- events
def test_every_eval_carries_every_indicator_at_step_0_and_at_each_epoch_end(reference) -> None:
    events = reference.events
    evals = of(events, "eval")
    for event in evals:
        assert EVAL_KEYS <= event.keys(), EVAL_KEYS - event.keys()
        assert event["sampling"] == dataclasses.asdict(reference.config.collapse.sampling)
        assert all(math.isfinite(event[k]) for k in INDICATOR_DIRECTION)
    ends = epoch_end_steps(events)
    assert [(e["step"], e["epoch"]) for e in evals] == [(0, 0)] + [(ends[k], k) for k in (1, 2)]
    assert evals[0]["realized_synthetic_ratio"] is None  # the baseline comes before any training
    realized = [e["realized_synthetic_ratio"] for e in of(events, "epoch")]
    assert [e["realized_synthetic_ratio"] for e in evals[1:]] == realized
    (ref,) = of(events, "reference")
    assert ref["step"] == 0 and SAMPLE_INDICATORS <= ref.keys()
    assert (reference.output_dir / "report.html").is_file()


# ---------------------------------------------------------------------------------------------- actions
@pytest.fixture(scope="module")
def warned(reference, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The reference run with a rule that fires at every epoch (LoRA at lr 0.01 lowers real_ppl by ~7%)."""
    root = tmp_path_factory.mktemp("warned")
    path = variant(reference, root, {"collapse": {"rules": [rule("real_ppl", "down", 0.0001, "warn")]}})
    return trained(path, root / "run")


@pytest.mark.slow
def test_warn_logs_the_alert_and_training_goes_on_to_the_end(warned) -> None:
    alerts = of(warned.events, "alert")
    evals = {e["epoch"]: e for e in of(warned.events, "eval")}
    assert [a["epoch"] for a in alerts] == [1, 2]
    for alert in alerts:
        assert alert["action"] == "warn" and alert["indicator"] == "real_ppl" and alert["against"] == "baseline"
        assert alert["value"] == evals[alert["epoch"]]["real_ppl"] and alert["baseline"] == evals[0]["real_ppl"]
        assert alert["message"].startswith("real_ppl fell ")
        assert alert["message"].endswith(f"(epoch {alert['epoch']}), past the 0.01% limit; action: warn")
    (end,) = of(warned.events, "end")
    assert end["status"] == "finished" and end["epoch"] == 2
    assert sorted(epoch_end_steps(warned.events)) == [1, 2]


@pytest.mark.slow
def test_alerts_do_not_change_training(reference, warned) -> None:
    assert (warned.output_dir / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


@pytest.mark.slow
def test_the_hook_does_not_disturb_training(reference, tmp_path: Path) -> None:
    """Same config and held-out split, no hook at all: the very same adapter, byte for byte."""
    path = variant(reference, tmp_path, {"collapse": {"enabled": False}})
    run = trained(path, tmp_path / "run")
    assert not of(run.events, "eval") and not (run.output_dir / "report.html").exists()
    assert (run.output_dir / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


@pytest.fixture(scope="module")
def stopped(reference, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Real rules that fire at the first epoch end: lower the ratio, and stop (2 epochs configured)."""
    root = tmp_path_factory.mktemp("stopped")
    rules = [rule("real_ppl", "down", 0.0001, "reduce_ratio"), rule("real_ppl", "down", 0.0001, "stop")]
    path = variant(reference, root, {"collapse": {"rules": rules}})
    return trained(path, root / "run")


@pytest.mark.slow
def test_stop_checkpoints_the_epoch_and_ends_the_run_early(stopped) -> None:
    events, out = stopped.events, stopped.output_dir
    assert sorted(epoch_end_steps(events)) == [1]
    (end,) = of(events, "end")
    assert end["status"] == "stopped" and end["epoch"] == 1 and end["step"] == epoch_end_steps(events)[1]
    assert end["reason"].startswith("real_ppl fell ")
    assert [a["action"] for a in of(events, "alert")] == ["reduce_ratio", "stop"]
    latest = find_checkpoint(out / "checkpoints", "latest")
    assert latest.name == f"step-{end['step']}" and verify(latest) is None
    assert json.loads((latest / "progress.json").read_text())["epoch"] == 2  # the next epoch is where a resume starts
    saved, final = adapter_tensors(latest), adapter_tensors(out)
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in saved)


@pytest.mark.slow
def test_a_stopped_run_resumes_from_its_checkpoint_at_the_reduced_ratio(stopped, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(stopped.output_dir, out)
    events = trained(stopped.config_path, out, resume="latest").events
    # Epoch 1's reduction came back with the checkpoint; the resumed epoch 2 fires the rules once more.
    reductions = of(events, "ratio_reduced")
    assert [(r["epoch"], r["scale"]) for r in reductions] == [(2, 0.5), (3, 0.25)]
    assert reductions[0]["next_target"] == pytest.approx(0.15)
    (second,) = [e for e in of(events, "epoch") if e["epoch"] == 2]
    assert second["target_synthetic_ratio"] == pytest.approx(0.15)
    assert abs(second["realized_synthetic_ratio"] - 0.15) <= 0.01
    assert len(of(events, "reference")) == 1 and [e["epoch"] for e in of(events, "eval")] == [0, 1, 2]


SCRIPT = [  # what the patched CollapseMonitor.measure returns at step 0, then at each epoch end
    {},
    {"distinct_2": 0.5, "self_bleu": 2.0},  # epoch 1: -50% (reduce_ratio) and +100% (warn)
    {"tail_mass": 0.5},  # epoch 2: -50% (stop); distinct_2 is back, so no second reduction
    {},
]


@pytest.fixture(scope="module")
def scripted(reference, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Three epochs configured; the indicators follow SCRIPT, so every action fires when planned."""
    root = tmp_path_factory.mktemp("scripted")
    rules = [
        rule("distinct_2", "down", 0.2, "reduce_ratio"),
        rule("tail_mass", "down", 0.2, "stop"),
        rule("self_bleu", "up", 0.1, "warn"),
    ]
    path = variant(reference, root, {"collapse": {"rules": rules}, "train": {"epochs": 3}})
    calls: list[int] = []

    def measure(self, model) -> Measured:
        calls.append(len(calls))
        values = {name: 1.0 for name in INDICATOR_DIRECTION} | SCRIPT[len(calls) - 1]
        return Measured(values, samples=[[] for _ in self.prompts])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CollapseMonitor, "measure", measure)
        return trained(path, root / "run")


@pytest.mark.slow
def test_scripted_indicators_fire_each_action_at_its_epoch(scripted) -> None:
    events = scripted.events
    assert [(a["epoch"], a["indicator"], a["action"]) for a in of(events, "alert")] == [
        (1, "distinct_2", "reduce_ratio"),
        (1, "self_bleu", "warn"),
        (2, "tail_mass", "stop"),
    ]
    assert [e["distinct_2"] for e in of(events, "eval")] == [1.0, 0.5, 1.0]
    (end,) = of(events, "end")
    assert end["status"] == "stopped" and end["epoch"] == 2 and "tail_mass fell 50%" in end["reason"]
    assert sorted(epoch_end_steps(events)) == [1, 2]  # the third epoch never ran
    latest = find_checkpoint(scripted.output_dir / "checkpoints", "latest")
    assert latest.name == f"step-{end['step']}" and verify(latest) is None


@pytest.mark.slow
def test_reduce_ratio_halves_the_next_epochs_realized_ratio(scripted) -> None:
    events = scripted.events
    (reduced,) = of(events, "ratio_reduced")
    epochs = {e["epoch"]: e for e in of(events, "epoch")}
    assert reduced["step"] == epochs[1]["step"] and reduced["epoch"] == 2 and reduced["scale"] == 0.5
    assert epochs[1]["target_synthetic_ratio"] == pytest.approx(0.3)
    assert epochs[2]["target_synthetic_ratio"] == pytest.approx(0.3 * 0.5)
    for epoch, target in ((1, 0.3), (2, 0.15)):
        assert abs(epochs[epoch]["realized_synthetic_ratio"] - target) <= 0.01


# ---------------------------------------------------------------------------------------------- when it runs
@pytest.mark.slow
def test_max_steps_mid_epoch_gets_a_final_eval(reference, tmp_path: Path) -> None:
    """A run that train.max_steps stops inside its first epoch is measured at its last step."""
    run = trained(reference.config_path, tmp_path / "run", "--train.max_steps", "5")
    evals = of(run.events, "eval")
    assert [(e["step"], e["epoch"]) for e in evals] == [(0, 0), (5, 1)]
    assert not of(run.events, "epoch")  # the epoch never ended
    assert 0 < evals[1]["realized_synthetic_ratio"] < 1  # what the 5 steps trained on
    (end,) = of(run.events, "end")
    assert end["step"] == 5 and find_checkpoint(run.output_dir / "checkpoints", "latest").name == "step-5"


@pytest.fixture(scope="module")
def every_10(reference, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("every-10")
    path = variant(reference, root, {"collapse": {"every_steps": 10, "rules": [rule("real_ppl", "down", 0.0001)]}})
    return trained(path, root / "run")


@pytest.mark.slow
def test_every_steps_evaluates_between_epoch_ends_and_rules_fire_per_eval(reference, every_10) -> None:
    ends = epoch_end_steps(every_10.events)
    last = max(ends.values())
    expected = sorted({0, *range(10, last + 1, 10), *ends.values()})
    evals = of(every_10.events, "eval")
    assert [e["step"] for e in evals] == expected  # one eval at a step that is both
    alerts = of(every_10.events, "alert")
    assert [a["step"] for a in alerts] == expected[1:]  # LoRA lowers real_ppl from the first steps on
    mid = [e for e in evals if e["step"] and e["step"] not in ends.values()]
    assert all(e["epoch"] == (1 if e["step"] < ends[1] else 2) for e in mid)
    # Mid-epoch evals change nothing that training computes.
    assert (every_10.output_dir / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


@pytest.mark.slow
def test_the_report_plots_per_eval_when_evals_come_between_epoch_ends(every_10) -> None:
    from synthmix.trainer.reporting.plots import eval_axis
    from synthmix.trainer.reporting.records import load_run

    record = load_run(every_10.output_dir)
    assert eval_axis([record]) == "step"
    page = (every_10.output_dir / "report.html").read_text()
    assert "<th>step 10 (epoch 1)</th>" in page and "<th>epoch 1</th>" in page


@pytest.mark.slow
def test_a_stop_rule_at_a_mid_epoch_eval_ends_the_run_there(reference, tmp_path: Path) -> None:
    changes = {"collapse": {"every_steps": 2, "rules": [rule("real_ppl", "down", 0.0001, "stop")]}}
    run = trained(variant(reference, tmp_path, changes), tmp_path / "run")
    (end,) = of(run.events, "end")
    assert end["status"] == "stopped" and end["step"] == 2
    assert [e["step"] for e in of(run.events, "eval")] == [0, 2]
    assert find_checkpoint(run.output_dir / "checkpoints", "latest").name == "step-2"


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_on_more_epochs_keeps_the_baseline(reference, tmp_path: Path) -> None:
    """No second baseline or reference after a resume; later alerts still compare with the step-0 values."""
    out = tmp_path / "run"
    shutil.copytree(reference.output_dir, out)
    rules = yaml.safe_dump([rule("real_ppl", "down", 0.0001)], default_flow_style=True)
    events = trained(
        reference.config_path, out, "--train.epochs", "3", "--collapse.rules", rules, resume="latest"
    ).events
    assert len(of(events, "resume")) == 1 and len(of(events, "reference")) == 1
    evals = of(events, "eval")
    assert [e["epoch"] for e in evals] == [0, 1, 2, 3] and [e["step"] for e in evals].count(0) == 1
    (alert,) = of(events, "alert")
    assert alert["epoch"] == 3 and alert["baseline"] == evals[0]["real_ppl"]


# ---------------------------------------------------------------------------------------------- rules by hand
HELD_OUT = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:6]


@pytest.fixture
def monitor(tiny_tokenizer) -> Callable[..., CollapseMonitor]:
    """A monitor on a few held-out texts with the given rules; baseline and reference are set by the test."""

    def make(*rules: AlertRule, **settings: Any) -> CollapseMonitor:
        config = CollapseConfig(num_prompts=2, sampling=SamplingConfig(max_new_tokens=4), rules=list(rules), **settings)
        made = CollapseMonitor(config, tiny_tokenizer, tiny_tokenizer(HELD_OUT)["input_ids"])
        made.baseline = {"distinct_2": 0.8, "real_ppl": 100.0, "self_bleu": 0.2, "repetition_rate": 0.0}
        made.reference = {"distinct_2": 0.9, "self_bleu": 0.1}
        return made

    return make


def test_a_down_rule_fires_past_its_threshold_only(monitor) -> None:
    m = monitor(AlertRule("distinct_2", "down", 0.2, action="stop"))
    (alert,) = m.alerts({"distinct_2": 0.6}, step=10, epoch=1)
    assert alert == {
        "step": 10, "epoch": 1, "indicator": "distinct_2", "value": 0.6, "baseline": 0.8, "against": "baseline",
        "change": pytest.approx(-0.25), "rule": "distinct_2 down > 20% vs baseline", "action": "stop",
        "message": "distinct_2 fell 25% vs baseline (0.8 -> 0.6) at step 10 (epoch 1), past the 20% limit; "
        "action: stop",
    }  # fmt: skip
    assert m.alerts({"distinct_2": 0.65}, step=10, epoch=1) == []  # -18.75%: under the threshold
    assert m.alerts({"distinct_2": 1.6}, step=10, epoch=1) == []  # the other direction never fires a down rule


def test_an_up_rule_fires_past_its_threshold_only(monitor) -> None:
    m = monitor(AlertRule("real_ppl", "up", 0.1))
    assert [a["change"] for a in m.alerts({"real_ppl": 111.0}, 5, 2)] == [pytest.approx(0.11)]
    assert m.alerts({"real_ppl": 109.0}, 5, 2) == [] and m.alerts({"real_ppl": 50.0}, 5, 2) == []


def test_rules_compare_with_the_baseline_or_with_the_reference(monitor) -> None:
    m = monitor(
        AlertRule("self_bleu", "up", 0.5, against="baseline"), AlertRule("self_bleu", "up", 0.5, against="reference")
    )
    # 0.2 is +0% vs the baseline (0.2) and +100% vs the reference (0.1).
    (alert,) = m.alerts({"self_bleu": 0.2}, 1, 1)
    assert alert["against"] == "reference" and alert["baseline"] == 0.1 and "vs reference" in alert["message"]
    assert [a["against"] for a in m.alerts({"self_bleu": 0.31}, 1, 1)] == ["baseline", "reference"]


def test_no_baseline_yet_means_no_baseline_alert(monitor) -> None:
    m = monitor(AlertRule("distinct_2", "down", 0.2))
    m.baseline = None
    assert m.alerts({"distinct_2": 0.0}, 0, 0) == []


def test_a_rule_on_an_indicator_that_started_at_zero_uses_the_absolute_change(monitor) -> None:
    m = monitor(AlertRule("repetition_rate", "up", 0.2))
    assert m.alerts({"repetition_rate": 0.1}, 1, 1) == []
    (alert,) = m.alerts({"repetition_rate": 0.3}, 1, 1)
    assert alert["change"] == pytest.approx(0.3) and "rose by 0.3 vs baseline" in alert["message"]


def test_an_overflowing_perplexity_is_a_rise_and_nan_breaks_no_rule(monitor) -> None:
    m = monitor(AlertRule("real_ppl", "up", 0.1))
    assert [a["change"] for a in m.alerts({"real_ppl": math.inf}, 1, 1)] == [math.inf]
    assert m.alerts({"real_ppl": math.nan}, 1, 1) == []


def test_state_dict_round_trips_the_baseline_through_json(monitor) -> None:
    first = monitor(AlertRule("distinct_2", "down", 0.2))
    second = monitor(AlertRule("distinct_2", "down", 0.2))
    second.baseline = None
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.baseline == first.baseline
    assert second.alerts({"distinct_2": 0.1}, 3, 1) == first.alerts({"distinct_2": 0.1}, 3, 1) != []


def test_self_bleu_scores_the_configured_number_of_samples(monitor) -> None:
    generator = random.Random(0)
    samples = [[generator.randrange(3, 300) for _ in range(12)] for _ in range(10)]
    scored = monitor(self_bleu_samples=4)._indicators(samples)["self_bleu"]
    assert scored == self_bleu(samples, max_samples=4, seed=0) != self_bleu(samples)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("bad_rule", "key"),
    [
        (rule("distinct_9", "down", 0.2), "collapse.rules[0].indicator"),
        (rule("distinct_2", "sideways", 0.2), "collapse.rules[0].direction"),
        (rule("distinct_2", "down", 0.0), "collapse.rules[0].threshold"),
        (rule("distinct_2", "down", 0.2, action="panic"), "collapse.rules[0].action"),
        (rule("real_ppl", "up", 0.2, against="reference"), "collapse.rules[0].against"),
    ],
)
def test_a_bad_rule_is_a_config_error_naming_its_key(make_config, bad_rule: dict, key: str) -> None:
    rules = yaml.safe_dump([bad_rule], default_flow_style=True)
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        load_config(make_config(), ["--collapse.rules", rules])


def test_the_unknown_indicator_error_lists_the_known_ones(make_config) -> None:
    with pytest.raises(ConfigError, match=r"unknown 'distinct_9' \(known: compression_ratio, distinct_1"):
        load_config(make_config(), ["--collapse.rules", "[{indicator: distinct_9, direction: down, threshold: 0.2}]"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (["--collapse.reduce_factor", "1.0"], "collapse.reduce_factor"),
        (["--collapse.tail_share", "0"], "collapse.tail_share"),
        (["--collapse.self_bleu_samples", "0"], "collapse.self_bleu_samples"),
        (["--collapse.num_prompts", "0"], "collapse.num_prompts"),
    ],
)
def test_out_of_range_hook_settings_are_config_errors(make_config, override: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        load_config(make_config(), override)


# ---------------------------------------------------------------------------------------------- evidence
DEGENERATE = [  # common words only: none of their tokens is in the held-out text's rare tail
    "The value of the name is the object of the class.",
    "An attribute of the object is the name of the target.",
    "A class is an object and the name is a value.",
]


@pytest.mark.slow
def test_a_degenerate_synthetic_corpus_at_a_high_ratio_shows_as_collapse(
    tmp_path: Path, token_cache: Path, tiny_arch
) -> None:
    """Full fine-tuning of a tiny random model, with the same training budget (optimizer steps of 8 x 64
    tokens): 1 epoch at synthetic ratio 0.9 on 3 sentences x 300 lines, against 10 epochs of the real text
    alone. Samples from 1-token prompts look alike (self-BLEU up, distinct trigrams down), drift from the real
    token distribution and lose its rare tokens, and the held-out perplexity stays far higher. (distinct_2 is
    not asserted: the degenerate model ends its memorised sentences early, and short samples keep a high
    bigram ratio; at equal epochs the 0.9 run takes 10x the steps, and the extra steps lower a tiny model's
    real_ppl more than the degenerate text raises it.)"""
    corpus = tmp_path / "degenerate.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for _ in range(300) for s in DEGENERATE))
    config = {
        "seed": 0,
        "tokenizer": {"vocab_size": 512},
        "data": {
            "cache_dir": str(token_cache),
            "synthetic_ratio": 0.9,
            "dedup": False,  # the repetition IS the corpus
            "allow_repeat": True,
            "held_out": {"fraction": 0.3},
            "sources": [
                {"name": "docs", "kind": "real", "builtin": "python_docs", "max_examples": 80},
                {"name": "degenerate", "kind": "synthetic", "path": str(corpus)},
            ],
        },
        "model": {"arch": {**tiny_arch, "hidden_size": 64, "intermediate_size": 128}},
        "lora": {"r": 0},
        "train": {
            "epochs": 1,
            "per_device_train_batch_size": 8,
            "seq_len": 64,
            "learning_rate": 0.003,
            "warmup_steps": 2,
            "progress": False,
        },  # fmt: skip
        "checkpoint": {"keep_last": 1},
        "collapse": {"num_prompts": 64, "prompt_tokens": 1, "sampling": {"max_new_tokens": 32}, "report": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    synthetic = trained(path, tmp_path / "ratio-0.9").events
    real = trained(path, tmp_path / "ratio-0", "--data.synthetic_ratio", "0", "--train.epochs", "10").events
    steps = [of(run, "end")[0]["step"] for run in (synthetic, real)]
    assert abs(steps[0] - steps[1]) <= 0.1 * steps[1]  # the same budget
    collapsed, healthy = of(synthetic, "eval")[-1], of(real, "eval")[-1]
    assert collapsed["realized_synthetic_ratio"] == pytest.approx(0.9, abs=0.01)
    # Seen with seeds 0, 1, 2: self_bleu 0.30-0.43 vs 0.11-0.12, distinct_3 0.84-0.93 vs 0.98, tail_mass
    # 0.107-0.124 vs 0.147-0.153, js_divergence 0.10-0.15 vs 0.07-0.08, real_ppl 173-205 vs 35-36.
    assert collapsed["self_bleu"] > 2 * healthy["self_bleu"]
    assert collapsed["distinct_3"] < 0.96 * healthy["distinct_3"]
    assert collapsed["tail_mass"] < 0.9 * healthy["tail_mass"]
    assert collapsed["js_divergence"] > 1.2 * healthy["js_divergence"]
    assert collapsed["real_ppl"] > 2 * healthy["real_ppl"]


# ---------------------------------------------------------------------------------------------- base-model scores
def test_samples_are_scored_by_the_base_model_with_the_adapter_disabled(tiny_tokenizer, tiny_model) -> None:
    """sample_base_ppl_* and vendi_score equal a row-by-row computation with the base model alone (no padding,
    no adapter), while the adapter itself changes what the model predicts."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model(tiny_tokenizer)
    config = CollapseConfig(num_prompts=2, eval_batch_size=3, sampling=SamplingConfig(max_new_tokens=4))
    m = CollapseMonitor(config, tiny_tokenizer, tiny_tokenizer(HELD_OUT)["input_ids"])
    pairs = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14]), ([15], [16, 17, 18, 19, 20]), ([21, 22], [])]
    expected_ppl, pooled = [], []
    with torch.no_grad():
        for prompt, continuation in pairs:
            out = base(input_ids=torch.tensor([prompt + continuation]), output_hidden_states=True)
            if not continuation:
                continue
            logits = out.logits[0, len(prompt) - 1 : -1]
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(continuation), reduction="sum")
            expected_ppl.append(math.exp(float(nll) / len(continuation)))
            pooled.append(out.hidden_states[-1][0, len(prompt) :].mean(dim=0))
    from synthmix.trainer.collapse.indicators import vendi_score

    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.eval()
    m.center = torch.linspace(-1, 1, pooled[0].numel())
    got = m._model_scored(m._embed(lora, pairs), base_is_separate=True)
    assert got["sample_base_ppl_mean"] == pytest.approx(sum(expected_ppl) / 3, rel=1e-4)
    ordered = sorted(expected_ppl)
    assert got["sample_base_ppl_p90"] == pytest.approx(ordered[1] + 0.8 * (ordered[2] - ordered[1]), rel=1e-4)
    expected_vendi = vendi_score(torch.stack(pooled), m.center)  # the empty continuation left out
    assert got["vendi_score"] == pytest.approx(expected_vendi, rel=1e-4)
    with torch.no_grad():
        ids = torch.tensor([pairs[0][0] + pairs[0][1]])
        with lora.disable_adapter():
            without = lora(input_ids=ids).logits
        assert not torch.allclose(lora(input_ids=ids).logits, without)
    # Without an adapter (full training) there is no base model left: neither value is measured.
    plain = tiny_model(tiny_tokenizer)
    assert m._model_scored(m._embed(plain, pairs), base_is_separate=False) == {}


def test_the_reference_holds_the_real_continuations_scored_by_the_base_model(reference) -> None:
    (ref,) = of(reference.events, "reference")
    baseline = of(reference.events, "eval")[0]
    for name in ("sample_base_ppl_mean", "sample_base_ppl_p90", "vendi_score"):
        assert math.isfinite(ref[name]) and math.isfinite(baseline[name])
    assert ref["vendi_score"] != baseline["vendi_score"]  # real text and the model's samples, not one thing twice
    assert baseline["real_ppl_p50"] <= baseline["real_ppl_p90"] <= baseline["real_ppl_p99"]
