"""The package as a user installs it: `pip wheel .`, the wheel installed into a fresh virtual environment, and
`synthmix` run from another folder; then Coqui's `trainer` distribution installed beside it (it owns the
top-level `trainer` package too) and synthmix still runs its own code.

The fresh environment gets synthmix's dependencies from this one through a path file (nothing is downloaded for
them), and the wheel with `--no-deps`; Coqui's `trainer` comes from the package registry, as a user's would."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from testkit import subprocess_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COQUI_TRAINER = "trainer==0.0.36"


def run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = subprocess_env(PYTHONPATH=None, VIRTUAL_ENV=None)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel, its dependencies visible from this environment; its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(REPO)],
        cwd=root)  # fmt: skip
    (wheel,) = root.glob("synthmix-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    (purelib,) = (venv / "lib").glob("python*/site-packages")
    # This environment's packages (and the system's, which it sees) as plain path entries: their .pth files, our
    # own editable install's among them, are not processed there.
    paths = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "zz_dependencies.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], cwd=root)
    return venv / "bin"


def tiny_run_config(folder: Path) -> Path:
    config = {
        "data": {"sources": [{"name": "docs", "kind": "real", "builtin": "python_docs", "max_examples": 40}]},
        "tokenizer": {"vocab_size": 300},
        "model": {
            "arch": {
                "model_type": "llama",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            }
        },  # fmt: skip
        "train": {"max_steps": 2, "seq_len": 64, "per_device_train_batch_size": 4, "progress": False},
        "collapse": {"num_prompts": 4, "max_eval_texts": 4, "sampling": {"max_new_tokens": 8}},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_wheel_runs_from_another_folder_beside_coquis_trainer(installed: Path, tmp_path: Path) -> None:
    python, synthmix = str(installed / "python"), str(installed / "synthmix")
    run([python, "-m", "pip", "install", "-q", "--no-deps", COQUI_TRAINER], cwd=tmp_path)
    # Where each import name resolves, found and not imported (Coqui's needs packages of its own: coqpit, ...).
    where = (
        "import importlib.util as u, importlib.metadata as m; from synthmix.configs import FOLDER; "
        "print(u.find_spec('synthmix.trainer.runtime.loop').origin, FOLDER, u.find_spec('trainer').origin, "
        "m.distribution('trainer').version)"
    )
    ours, configs, theirs, version = run([python, "-c", where], cwd=tmp_path).stdout.split()
    venv = str(installed.parent)
    assert ours.startswith(venv) and configs.startswith(venv), (ours, configs)  # the wheel's code, not the repo's
    assert theirs.startswith(venv) and version == "0.0.36" and not Path(theirs).samefile(ours)
    assert (Path(configs) / "demo.yaml").is_file() and (Path(configs) / "accelerate" / "fsdp.yaml").is_file()
    assert "synthmix's demo.yaml" in run([synthmix, "demo", "--help"], cwd=tmp_path).stdout
    done = run([synthmix, "train", "--config", str(tiny_run_config(tmp_path)), "--output_dir", "run"], cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "run folder: run"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
