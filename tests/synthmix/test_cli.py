"""`synthmix`: every subcommand has a --help with one line per option, `train --help` lists every config key,
and one error edge serves all: a user error is one line and exit 2, --debug adds the traceback, a bug keeps
its traceback; the module forms stay as aliases."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import subprocess_env

from synthmix import cli
from synthmix.data_mixers.errors import MixerError
from synthmix.errors import ConfigError, UserError
from synthmix.schema import reference
from synthmix.trainer.config import RunConfig
from synthmix.trainer.errors import TrainerError

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    """`synthmix ARGS` as a user runs it (the console script of this venv), from the repository root."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "synthmix"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    return done.returncode, done.stdout, done.stderr


def test_the_console_script_lists_every_job() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for name in ("train", "inspect", "report", "recursive", "generate", "demo"):
        assert f"    {name}" in out, name


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_subcommand_help_lists_its_options_with_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: synthmix {name}") and "--debug" in out
    parser = cli._parser("synthmix", [])
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands.choices[name]._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        assert " ".join(action.help.split()[:3]) in " ".join(out.split())


def test_train_help_lists_every_config_key_with_type_default_and_doc(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    entries = list(reference(RunConfig))
    assert len(entries) > 80
    for entry in entries:
        assert f"--{entry.key}  ({entry.type}, default: {entry.default})" in out, entry.key
    assert "--train.seq_len  (int, default: 256)\n        Length of each packed row in tokens." in out
    assert "--data.sources[].kind  ('real' | 'synthetic', default: real)" in out
    assert "--collapse.sampling.top_p  (float, default: 1.0)" in out


@pytest.mark.slow
def test_a_user_error_is_one_line_and_exit_2_and_debug_adds_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    code, out, err = run("train", "--config", str(missing))
    assert (code, out, err) == (2, "", f"error: {missing}: config file does not exist\n")
    code, _, err = run("train", "--config", str(missing), "--debug")
    assert (
        code == 2
        and "Traceback" in err
        and err.strip().splitlines()[-1] == f"error: {missing}: config file does not exist"
    )


def test_an_unexpected_exception_is_a_bug_and_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args, overrides) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "report", dataclasses.replace(cli.COMMANDS["report"], handler=broken))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["report", "somewhere"])


def test_an_unknown_argument_of_a_command_without_overrides_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["report", "runs/x", "--data.synthetic_ratio", "0.3"])
    assert done.value.code == 2 and "unrecognized arguments: --data.synthetic_ratio 0.3" in capsys.readouterr().err


def test_every_package_error_is_a_user_error_and_a_config_error_is_not_a_mixer_error() -> None:
    assert issubclass(MixerError, UserError) and issubclass(TrainerError, UserError)
    assert issubclass(ConfigError, UserError) and not issubclass(ConfigError, MixerError)


@pytest.mark.slow
def test_python_dash_m_trainer_is_an_alias_of_synthmix_train(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "synthmix", "train", "--config", str(tmp_path / "nope.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (2, f"error: {tmp_path / 'nope.yaml'}: config file does not exist\n")


def test_the_console_script_is_installed() -> None:
    assert shutil.which("synthmix", path=str(Path(sys.executable).parent))


# A CPU with AVX512-BF16, for bitsandbytes: on import it then asks the hub for a kernel, and warns when it cannot.
AVX512_BF16 = """
import importlib.abc, importlib.machinery, sys

class _AVX512BF16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _AVX512BF16())
"""


@pytest.mark.slow
def test_a_run_that_quantizes_nothing_never_loads_bitsandbytes(tmp_path: Path) -> None:
    """On a CPU with AVX512-BF16, importing bitsandbytes (which peft does when it is installed) fetches a kernel
    from the hub and warns; a run without model.quantization loads none of it."""
    (tmp_path / "sitecustomize.py").write_text(AVX512_BF16)
    env = subprocess_env(PYTHONPATH=str(tmp_path), HF_HUB_OFFLINE="1")
    noise = subprocess.run(
        [sys.executable, "-c", "import bitsandbytes"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "kernels-community" in noise.stderr  # the machine this test stands in for: peft imports this, loudly
    config = tmp_path / "run.yaml"
    config.write_text(
        "data: {sources: [{name: docs, kind: real, builtin: python_docs, max_examples: 24}]}\n"
        "tokenizer: {vocab_size: 300}\n"
        "model: {arch: {model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,"
        " num_attention_heads: 2}}\n"
        "train: {max_steps: 1, seq_len: 64, progress: false, report_to: [none]}\n"
        "collapse: {enabled: false}\n"
    )
    command = [
        sys.executable,
        "-m",
        "synthmix",
        "train",
        "--config",
        str(config),
        "--output_dir",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kernels-community" not in done.stderr + done.stdout and "bitsandbytes" not in done.stderr
