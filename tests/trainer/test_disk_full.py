"""A disk that fills up: on a small tmpfs (root mounts one; elsewhere these tests skip), every writer of a run
(checkpoint, adapter, metrics, TensorBoard, the tokenized store) ends with one line naming the path, leaves
nothing half-written and every sealed checkpoint intact, and the run resumes exactly once space is back."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_loop import QUICK, assert_same_training, interrupted_cli_run
from testkit import run_config

from synthmix.data_mixers.corpus import build_corpora
from synthmix.errors import DiskFullError
from synthmix.trainer.reporting.events import METRICS, read_events
from synthmix.trainer.runtime.checkpoint import verify
from synthmix.trainer.runtime.loop import finish, save_checkpoint, train
from synthmix.trainer.runtime.setup import setup

pytestmark = pytest.mark.slow

DISK_MIB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MIB tmpfs mounted at tmp_path/disk for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros into disk/filler until the file system is full; the file, to delete to free the space."""
    filler = disk / "filler"
    block = bytes(1 << 20)
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    for size in (4096, 1):  # the last partial block
        try:
            with filler.open("ab", buffering=0) as handle:
                while True:
                    handle.write(bytes(size))
        except OSError:
            pass
    return filler


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_a_run_whose_disk_fills_up_stops_with_one_line_and_resumes_exactly(reference, small_disk: Path) -> None:
    out = small_disk / "run"
    fillers: list[Path] = []
    # Past the first checkpoint (step 4): the disk fills while the run goes on.
    returncode, stderr = interrupted_cli_run(reference.config_path, out, 6, lambda _: fillers.append(fill(small_disk)))
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: no space left on device while writing {out}")
    assert "free some space there" in line and "--resume latest" in line
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert checkpoints and all(verify(c) is None for c in checkpoints)
    assert not temporaries(out)
    assert (out / METRICS).read_text().endswith("\n")  # no half-written event
    read_events(out / METRICS)

    fillers[0].unlink()
    train(run_config(reference.config_path, out), resume="latest")

    assert_same_training(read_events(out / METRICS), reference)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == reference.adapter_bytes


def test_every_writer_of_a_run_names_its_path_and_leaves_nothing_behind(make_config, small_disk: Path) -> None:
    out = small_disk / "run"
    config = run_config(make_config({**QUICK, "train": {"max_steps": 2}}), out)
    run = setup(config, resume=None)
    save_checkpoint(run)
    sealed = out / "checkpoints" / "step-0"
    metrics_before = (out / METRICS).read_bytes()
    fill(small_disk)

    run.progress.step = 1
    with pytest.raises(DiskFullError, match=f"while writing {out / 'checkpoints' / 'step-1'}"):
        save_checkpoint(run)
    assert verify(sealed) is None and not (out / "checkpoints" / "step-1").exists()

    with pytest.raises(DiskFullError, match=f"while writing {out / 'adapter'}"):
        finish(run)
    assert not (out / "adapter").exists()

    with pytest.raises(DiskFullError, match=f"while writing {out / METRICS}"):
        run.log.event("train", step=1, loss=1.0, note="x" * 100_000)
    assert (out / METRICS).read_bytes() == metrics_before
    run.close(warn=False)
    assert not temporaries(out)


def test_a_store_build_on_a_full_disk_names_the_entry_and_leaves_no_partial_entry(
    make_config, small_disk: Path
) -> None:
    cache = small_disk / "cache"
    config = run_config(make_config({**QUICK, "data": {"cache_dir": str(cache)}}), small_disk / "run")
    fill(small_disk)
    with pytest.raises(DiskFullError, match=f"while writing {cache}"):
        build_corpora(config.data, config.tokenizer)
    assert not temporaries(cache)
    entries = [p for p in (cache / "store").iterdir()] if (cache / "store").is_dir() else []
    assert all((entry / "manifest.json").is_file() for entry in entries)
