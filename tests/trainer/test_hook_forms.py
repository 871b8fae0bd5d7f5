"""The collapse hook on chats and prompt-completion pairs: prompts are conversations up to their last reply (with
the template's generation prompt) or the pair's prompt, held-out perplexity counts what training's loss counts,
and every eval's samples are written to OUTPUT_DIR/samples/step-<N>.jsonl."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import example_chat, pairs_source, run_config

from synthmix.data_mixers.encoding import last_span_starts
from synthmix.trainer.generation.prompts import end_of_turn_id
from synthmix.trainer.integrations.collapse_callback import CollapseCallback
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.reporting.report import write_report
from synthmix.trainer.reporting.samples import read_samples, sample_files
from synthmix.trainer.runtime.loop import train
from synthmix.trainer.runtime.setup import setup

GENERATION_PROMPT = "<|im_start|>assistant\n"


CHATS = [example_chat(i) for i in range(40)]
HOOK = {"max_eval_texts": 8, "num_prompts": 4, "every_steps": 2, "sampling": {"max_new_tokens": 6}}


@pytest.fixture
def chat_config(make_config, tmp_path: Path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in CHATS))
    source = {"name": "chat", "kind": "real", "path": str(path), "messages_field": "messages"}

    def make(assistant_only_loss: bool = True) -> Path:
        data = {"sources": [source], "synthetic_ratio": 0.0, "assistant_only_loss": assistant_only_loss,
                "held_out": {"fraction": 0.25}}  # fmt: skip
        train = {"max_steps": 4}
        changes = {"data": data, "tokenizer": {"vocab_size": 300}, "train": train, "collapse": HOOK}
        return make_config({**changes, "checkpoint": {"every_steps": None}}, name=f"aol-{assistant_only_loss}")

    return make


def test_a_chat_run_samples_replies_to_user_turns_and_writes_them_per_eval(chat_config, tmp_path: Path) -> None:
    out = train(run_config(chat_config(), tmp_path / "run"))
    files = sample_files(out)
    assert list(files) == [0, 2, 4]  # step 0, every_steps 2, the last step
    first = read_samples(files[0])
    assert len(first) == HOOK["num_prompts"]
    for record in first:
        # The conversation up to its last user turn, then the template's generation prompt.
        assert record["prompt"].endswith("<|im_start|>user\n" + record["prompt"].split("<|im_start|>user\n")[-1])
        assert record["prompt"].endswith("?<|im_end|>\n" + GENERATION_PROMPT)
        assert record["form"] == "reply" and record["source"] == "chat"
        assert CHATS[record["index"]][-2]["content"] in record["prompt"]
        assert "<|im_start|>" not in record["completion"]  # stopped at the end of turn, specials not shown
        assert record["sampling"]["max_new_tokens"] == 6 and record["step"] == 0
    # Every eval prompts the same examples in the same order, so the files read side by side.
    later = read_samples(files[4])
    assert [r["prompt"] for r in later] == [r["prompt"] for r in first]
    evals = [e for e in read_events(out / METRICS) if e["event"] == "eval"]
    assert [e["samples"] for e in evals] == ["samples/step-0.jsonl", "samples/step-2.jsonl", "samples/step-4.jsonl"]
    # The report shows the first prompts with each eval's completion beside the others.
    page = write_report([out]).read_text()
    section = page[page.index("<h2>Samples</h2>") : page.index("<h2>Configuration</h2>")]
    assert html.escape(first[0]["prompt"]) in section
    for step in (0, 2, 4):
        assert (
            f"<td>step {step}</td><td class='text'>{html.escape(read_samples(files[step])[0]['completion'])}" in section
        )


@pytest.mark.parametrize("assistant_only_loss", [True, False])
def test_held_out_perplexity_counts_the_tokens_training_counts(chat_config, tmp_path, assistant_only_loss) -> None:
    config = run_config(chat_config(assistant_only_loss), tmp_path / "run")
    run = setup(config, resume=None)
    try:
        measured = run.monitor.measure(run.unwrapped).values["real_ppl"]
        nll_sum, counted, every_token = 0.0, 0, 0
        model = run.unwrapped.eval()
        with torch.no_grad():
            for example in run.held_out[: config.collapse.max_eval_texts]:
                ids = torch.as_tensor(example.ids[: config.collapse.eval_seq_len]).unsqueeze(0)
                logits = model(input_ids=ids).logits[0, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
                mask = np.ones(ids.shape[1], dtype=bool) if example.loss_mask is None else example.loss_mask
                mask = torch.as_tensor(mask[1 : ids.shape[1]])
                nll_sum += float(nll[mask].sum())
                counted += int(mask.sum())
                every_token += ids.shape[1] - 1
    finally:
        run.log.close()
    assert measured == pytest.approx(math.exp(nll_sum / counted), rel=1e-4)
    # Assistant-only: far fewer tokens than the whole chats (the template and the questions are left out).
    assert (counted < every_token / 2) if assistant_only_loss else (counted == every_token)


def test_prompt_completion_pairs_are_prompted_with_their_prompt(make_config, tmp_path: Path) -> None:
    pairs = [{"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f" It is {2 * i}."} for i in range(40)]
    source = pairs_source(tmp_path / "pairs.jsonl", pairs)
    data = {"sources": [source], "synthetic_ratio": 0.0, "completion_only_loss": True, "held_out": {"fraction": 0.25}}
    changes = {"data": data, "tokenizer": {"vocab_size": 300}, "train": {"max_steps": 1}, "collapse": HOOK}
    out = train(run_config(make_config({**changes, "checkpoint": {"every_steps": None}}), tmp_path / "run"))
    for record in read_samples(sample_files(out)[0]):
        assert record["prompt"] == pairs[record["index"]]["prompt"]
        assert record["form"] == "reply"


def test_the_last_reply_starts_after_the_last_gap_of_the_mask() -> None:
    masks = [np.array(m, dtype=bool) for m in ([0, 1, 1, 0, 0, 1, 1], [1, 1, 0], [0, 0], [0, 0, 1])]
    assert last_span_starts(masks).tolist() == [5, 0, 2, 2]


def test_the_end_of_turn_token_comes_from_the_template(chat_config, tmp_path: Path) -> None:
    run = setup(run_config(chat_config(), tmp_path / "run"), resume=None)
    run.log.close()
    tokenizer = run.tokenizer
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|im_end|>"
    tokenizer.chat_template = None
    assert end_of_turn_id(tokenizer) is None


def test_a_resumed_run_measures_its_later_evals_again_and_keeps_the_earlier_files(chat_config, tmp_path) -> None:
    path = chat_config()
    out = train(run_config(path, tmp_path / "run", "--checkpoint.every_steps", "2"))
    before = {step: file.read_bytes() for step, file in sample_files(out).items()}
    assert list(before) == [0, 2, 4]
    # Resumed from step 2 to a last step of 3: the eval at 4 is gone, the last step's is new, 0 and 2 untouched.
    checkpoint = out / "checkpoints" / "step-2"
    train(run_config(path, out, "--checkpoint.every_steps", "2", "--train.max_steps", "3"), resume=str(checkpoint))
    after = {step: file.read_bytes() for step, file in sample_files(out).items()}
    assert list(after) == [0, 2, 3]
    assert after[0] == before[0] and after[2] == before[2]
    # The resumed eval samples the same prompts with the same seed as an uninterrupted run to step 3 would.
    straight = train(run_config(path, tmp_path / "straight", "--train.max_steps", "3"))
    assert after[3] == (straight / "samples" / "step-3.jsonl").read_bytes()


def test_the_hf_callback_takes_held_out_chats(tiny_tokenizer) -> None:
    callback = CollapseCallback.from_chats(CHATS[:6], tiny_tokenizer, num_prompts=3, prompt_tokens=4)
    monitor = callback.monitor
    for prompt in monitor.prompts:
        text = tiny_tokenizer.decode(prompt.prompt)
        assert prompt.reply and text.endswith("?<|im_end|>\n" + GENERATION_PROMPT)
        assert tiny_tokenizer.decode(prompt.reference) == CHATS[prompt.example][-1]["content"]
    # Held-out perplexity counts the replies (and their end of turn) only.
    ids, counted = monitor.eval_rows[1]
    scored = tiny_tokenizer.decode([t for t, on in zip(ids, counted, strict=True) if on])
    assert scored == "".join(f"{m['content']}<|im_end|>\n" for m in CHATS[1] if m["role"] == "assistant")
    every = CollapseCallback.from_chats(CHATS[:6], tiny_tokenizer, assistant_only_loss=False).monitor
    assert all(mask.all() for _, mask in every.eval_rows)
