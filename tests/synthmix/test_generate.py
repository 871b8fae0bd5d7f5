"""`synthmix generate`: the command line end to end on a saved tiny model, and its error cases."""

from __future__ import annotations

import json
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from synthmix.cli import main as synthmix

TEXTS = [text for text in pydoc_data.topics.topics.values() if len(text) > 200][:30]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_model) -> Path:
    """A tiny Llama and its locally trained tokenizer, saved the way a user's checkpoint is."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model(tiny_tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=2).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return path


def run(model_dir: Path, prompts: Path, out: Path, *extra: str) -> int:
    args = ["--model", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--device", "cpu"]
    return synthmix(
        ["generate", *args, "--n", "6", "--prompt-tokens", "5", "--max-new-tokens", "8", "--batch-size", "4", *extra]
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_writes_samples_with_provenance(model_dir, prompts_file, tmp_path):
    out = tmp_path / "out" / "synthetic.jsonl"
    assert run(model_dir, prompts_file, out, "--text-field", "body", "--seed", "3", "--top-k", "50") == 0
    lines = read_jsonl(out)
    assert len(lines) == 6
    assert {line["generator"] for line in lines} == {str(model_dir)}
    assert {line["prompt_source"]["file"] for line in lines} == {str(prompts_file)}
    assert all(0 <= line["prompt_source"]["index"] < len(TEXTS) for line in lines)
    assert lines[0]["sampling"] == {
        "max_new_tokens": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 50,
        "num_beams": 1,
        "do_sample": True,
        "batch_size": 4,
        "seed": 3,
    }
    assert all(line["text"] for line in lines)
    again = tmp_path / "again.jsonl"
    assert run(model_dir, prompts_file, again, "--text-field", "body", "--seed", "3", "--top-k", "50") == 0
    assert again.read_bytes() == out.read_bytes()


def test_text_paragraphs_beam_search_and_adapter(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    prompts = tmp_path / "real.txt"
    prompts.write_text("\n\n".join(TEXTS[:5]) + "\n", encoding="utf-8")
    out = tmp_path / "beam.jsonl"
    code = run(model_dir, prompts, out, "--adapter", str(adapter), "--num-beams", "2", "--no-do-sample")
    assert code == 0
    lines = read_jsonl(out)
    assert len(lines) == 6
    assert lines[0]["generator"] == f"{model_dir} + adapter {adapter}"
    assert lines[0]["sampling"]["do_sample"] is False and lines[0]["sampling"]["num_beams"] == 2


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "file does not exist"),
        ("", "no examples"),
        ('{"body": "hello"}\n', "no field 'text' (fields: body)"),
        ('{"text": "ok"}\nnot json\n', ":2: invalid JSON"),
    ],
)
def test_bad_prompts_file_is_one_line_and_exit_code_2(model_dir, tmp_path, capsys, content, expected):
    prompts = tmp_path / "prompts.jsonl"
    if content is not None:
        prompts.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run(model_dir, prompts, out) == 2
    err = capsys.readouterr().err.strip()
    assert str(prompts) in err and expected in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_prompts_too_short_and_bad_sampling(model_dir, tmp_path, capsys):
    prompts = tmp_path / "short.txt"
    prompts.write_text("a\n\nb\n", encoding="utf-8")
    assert run(model_dir, prompts, tmp_path / "out.jsonl") == 2
    assert "prompt_tokens=5" in capsys.readouterr().err
    assert run(model_dir, prompts, tmp_path / "out.jsonl", "--top-p", "0") == 2
    assert "error: --top-p: must be in (0, 1], got 0.0" in capsys.readouterr().err


def test_missing_model_is_one_line(tmp_path, prompts_file, capsys):
    missing = tmp_path / "no-such-model"
    assert run(missing, prompts_file, tmp_path / "out.jsonl", "--text-field", "body") == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_command_line_process(tmp_path):
    """Run as users do, from another directory: no traceback, exit code 2, the file named."""
    missing = tmp_path / "missing.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "synthmix", "generate", "--model", "unused", "--prompts", str(missing)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
