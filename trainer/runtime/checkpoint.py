"""Checkpoints: named stateful objects written into a temporary folder, sealed with a manifest, renamed into place.

The loop hands `Checkpointer.save` a list of `Part`s (torch's `Stateful` objects: `state_dict()` /
`load_state_dict()`) and gets their states back from `Checkpointer.restore`; this module owns everything else:
the layout, gathering the per-rank states onto the main process, the manifest (checksums, world size, data
fingerprint, config), the compatibility checks before anything is loaded, the config diff, pruning, and choosing
`latest`.

Layout of OUTPUT_DIR/checkpoints/step-N/ (one file or folder per part):
    adapter/ or model/    trainable weights: peft format (PeftModel.from_pretrained reads it) or full weights
    optimizer.pt          optimizer state keyed by parameter name (whole, also when a LoRA run is sharded)
    sharded/              instead of both, for full fine-tuning under FSDP2: torch.distributed.checkpoint's
                          folder, one `__R_0.distcp` of weights and optimizer shards per rank R, and `.metadata`
    scheduler.pt          learning-rate schedule position
    scaler.pt             fp16 loss scale (fp16 only)
    rng.pt                every rank's Python, NumPy, torch and CUDA RNG states (a list, rank order)
    mixer.json            every rank's stream position (a list, rank order)
    progress.json         step, epoch, counters
    collapse.json         the collapse baseline
    metrics.jsonl         the run's events up to this step
    manifest.json         written last: step, world size, data fingerprint, config, SHA-256 of every file
A folder without a manifest (a crash while writing) or with a file that does not match it is never loaded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from accelerate.utils import broadcast_object_list, gather_object
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.stateful import Stateful

from synthmix.files import atomic_folder, disk_full_is_an_error, sha256_of, temporary_sibling
from synthmix.schema import flatten
from synthmix.trainer.distributed.accelerator import on_main_process
from synthmix.trainer.errors import TrainerError

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class Codec(Protocol):
    """How one part's state is stored: its file (or folder) name and how to write and read it."""

    def filename(self, name: str) -> str: ...

    def write(self, path: Path, state: Any) -> None: ...

    def read(self, path: Path) -> Any: ...


class JsonCodec:
    """Plain data as indented JSON."""

    def filename(self, name: str) -> str:
        return f"{name}.json"

    def write(self, path: Path, state: Any) -> None:
        path.write_text(json.dumps(state, indent=2, sort_keys=True))

    def read(self, path: Path) -> Any:
        return json.loads(path.read_text())


class TorchCodec:
    """Tensors and plain containers, loaded with `weights_only=True` (no pickled code)."""

    def filename(self, name: str) -> str:
        return f"{name}.pt"

    def write(self, path: Path, state: Any) -> None:
        # Through a Python file: a full disk is then an OSError (ENOSPC). Given a path, torch writes with its own
        # C++ stream, whose failure says only "iostream error" (seen on a full disk), not why.
        with path.open("wb") as handle:
            torch.save(state, handle)

    def read(self, path: Path) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True)


JSON, TORCH = JsonCodec(), TorchCodec()


@dataclasses.dataclass(frozen=True)
class Part:
    """One named object of a checkpoint."""

    name: str
    obj: Stateful
    codec: Codec = TORCH
    per_rank: bool = False
    """Every process has its own state (RNG, stream position): all are gathered and each gets its own back."""
    collective: bool = False
    """`state_dict()` / `load_state_dict()` must run on every process (sharded weights and optimizer states)."""
    sharded: bool = False
    """Every process writes and reads its own shards through torch.distributed.checkpoint (a folder `name/`);
    nothing is gathered. The codec is not used."""

    @property
    def filename(self) -> str:
        """The part's file or folder in a checkpoint."""
        return self.name if self.sharded else self.codec.filename(self.name)


@dataclasses.dataclass(frozen=True)
class Shards:
    """Where the processes wrote their shards before the checkpoint is sealed, and the files each part's
    torch.distributed.checkpoint metadata says were written (relative to the part's folder)."""

    folder: Path
    files: dict[str, set[str]]

    def check_complete(self) -> None:
        """Every shard file is here (on the main process): a run folder that the processes do not share (nodes
        with their own disks) would otherwise seal a checkpoint that cannot be loaded."""
        for name, expected in self.files.items():
            missing = sorted(f for f in expected if not (self.folder / name / f).is_file())
            if missing:
                raise TrainerError(
                    f"the shards of the checkpoint in {self.folder.parent} are not all there ({name}/{missing[0]} "
                    f"and {len(missing) - 1} more are missing): with a sharded full fine-tune every process writes "
                    "its own; put output_dir on a file system every process (every node) sees"
                )


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a resume found: where it came from and which settings differ from the checkpoint's."""

    path: Path
    step: int
    changed: list[str]


class Checkpointer:
    """Writes, verifies, chooses and restores the checkpoints of one run folder."""

    def __init__(self, root: Path, accelerator: Any, keep_last: int, every_steps: int | None = None) -> None:
        self.root = root
        self.accelerator = accelerator
        self.keep_last = keep_last
        self.every_steps = every_steps

    def due(self, step: int) -> bool:
        """Whether `checkpoint.every_steps` asks for a checkpoint at `step` (epoch ends write one regardless)."""
        return bool(self.every_steps) and step % self.every_steps == 0

    # ------------------------------------------------------------ saving
    def save(self, step: int, parts: list[Part], meta: dict[str, Any], files: dict[str, Path]) -> Path:
        """Write checkpoints/step-`step` from every process's parts; `meta` (world size, data fingerprint,
        config) goes into the manifest, `files` are copied in as they are. Returns the folder."""
        shards = self._write_shards(step, [part for part in parts if part.sharded])
        gathered = [part for part in parts if not part.sharded]
        try:
            states = {part.name: self._state_of(part) for part in gathered}
            final = self.root / f"step-{step}"
            on_main_process(self.accelerator, lambda: self._write(step, gathered, states, shards, meta, files))
        finally:  # sealed, the shards were moved into the checkpoint; otherwise they go with the failure
            if shards is not None and self.accelerator.is_main_process:
                shutil.rmtree(shards.folder, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def _write_shards(self, step: int, parts: list[Part]) -> Shards | None:
        """Every process writes its shards of `parts` into one temporary folder that the main process names (the
        folders must be on a file system every process sees); None when no part is sharded."""
        if not parts:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        # A temporary name: a crash before the checkpoint is sealed leaves it to remove_temporaries.
        staging = [str(temporary_sibling(self.root / f"step-{step}")) if self.accelerator.is_main_process else ""]
        broadcast_object_list(staging)
        shards = Shards(Path(staging[0]), {})
        try:
            with disk_full_is_an_error(shards.folder):
                for part in parts:
                    try:
                        written = dcp.save({part.name: part.obj}, checkpoint_id=shards.folder / part.name)
                    except CheckpointException as err:  # every process raises it, with the failing ranks' errors
                        cause = _first_failure(err)
                        if isinstance(cause, OSError):
                            raise cause from None  # a full disk is then the usual one line
                        raise cause from err
                    shards.files[part.name] = {info.relative_path for info in (written.storage_data or {}).values()}
        except BaseException:
            if self.accelerator.is_main_process:
                shutil.rmtree(shards.folder, ignore_errors=True)
            raise
        self.accelerator.wait_for_everyone()
        return shards

    def _write(
        self,
        step: int,
        parts: list[Part],
        states: dict[str, Any],
        shards: Shards | None,
        meta: dict[str, Any],
        files: dict[str, Path],
    ) -> None:
        if shards is not None:
            shards.check_complete()
        # Pruning comes after the new checkpoint is sealed: a full disk leaves the older ones as they were.
        with atomic_folder(self.root / f"step-{step}") as folder:
            if shards is not None:
                for written in shards.folder.iterdir():
                    written.replace(folder / written.name)
            for part in parts:
                part.codec.write(folder / part.filename, states[part.name])
            for name, source in files.items():
                if source.exists():
                    shutil.copyfile(source, folder / name)
            checksums = {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}
            manifest = {**meta, "step": step, "created": time.time(), "files": checksums}
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        self._prune()

    def _state_of(self, part: Part) -> Any:
        if part.per_rank:
            return gather_object([part.obj.state_dict()])
        if part.collective or self.accelerator.is_main_process:
            return part.obj.state_dict()
        return None

    def _prune(self) -> None:
        for old in sorted(_step_dirs(self.root), key=_step_of)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ choosing
    def find(self, which: str) -> Path:
        """The checkpoint `--resume which` names (see `find_checkpoint`)."""
        return find_checkpoint(self.root, which)

    @staticmethod
    def step(folder: Path | None) -> int | None:
        """The step a checkpoint folder holds (None for no folder)."""
        return None if folder is None else int(json.loads((folder / MANIFEST).read_text())["step"])

    # ------------------------------------------------------------ restoring
    def restore(self, folder: Path, parts: list[Part], meta: dict[str, Any], files: dict[str, Path]) -> Restored:
        """Check that `folder` fits this launch (`meta`: world size, data fingerprint), load every part, put the
        copied files back, and say which config settings differ ("the new value wins")."""
        manifest = json.loads((folder / MANIFEST).read_text())
        _check_compatible(folder, manifest, meta)
        for part in parts:
            path = folder / part.filename
            if not path.exists():
                raise TrainerError(
                    f"checkpoint {folder} has no {path.name}: it was written by another version of synthmix, or by "
                    "a run sharded otherwise (full fine-tuning under FSDP2 writes sharded/); resume it as it was run"
                )
            if part.sharded:
                load_shards(path, part)
                continue
            state = part.codec.read(path)
            part.obj.load_state_dict(state[self.accelerator.process_index] if part.per_rank else state)
        if self.accelerator.is_main_process:
            for name, target in files.items():
                if (folder / name).exists():
                    with disk_full_is_an_error(target):
                        shutil.copyfile(folder / name, target)
        self.accelerator.wait_for_everyone()
        return Restored(folder, int(manifest["step"]), config_changes(manifest.get("config", {}), meta["config"]))


def load_shards(path: Path, part: Part) -> None:
    """Read this process's shards of `part` from the folder torch.distributed.checkpoint wrote (collective)."""
    try:
        dcp.load(
            {part.name: part.obj}, checkpoint_id=path, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner()
        )
    except (CheckpointException, pickle.UnpicklingError) as err:
        cause = _first_failure(err) if isinstance(err, CheckpointException) else err
        if isinstance(cause, TrainerError):
            raise cause from None
        # A refused global may come wrapped (torch.distributed.checkpoint retries a metadata read and asserts).
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(cause))
        if found:
            reason = f"it holds {found[1]}, which torch.load(weights_only=True) refuses"
        else:
            reason = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
        raise TrainerError(f"checkpoint {path} does not load ({reason})") from None


class _MetadataUnpickler(pickle.Unpickler):
    """Builds what torch.distributed.checkpoint's `.metadata` holds (its own dataclasses, torch sizes, dtypes and
    layouts, paths) and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        allowed = (
            (module.startswith("torch.distributed.checkpoint.") and isinstance(found, type))
            or (module == "torch" and (found is torch.Size or isinstance(found, torch.dtype)))
            or (module == "torch.serialization" and name == "_get_layout")
            or (module == "pathlib" and name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"))
            or (module == "collections" and name == "OrderedDict")
        )
        if not allowed:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")
        return found


class _SafeReader(FileSystemReader):
    """torch.distributed.checkpoint's file reader, whose `.metadata` (a pickle it loads unrestricted) is first
    read with `_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        rank = kwargs.get("rank")
        with (Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")).open("rb") as handle:
            _MetadataUnpickler(handle).load()  # raises on a global it does not know
        return super().read_metadata(*args, **kwargs)


def _first_failure(err: CheckpointException) -> BaseException:
    """The error of the first process that failed (torch.distributed.checkpoint wraps each rank's)."""
    failures = sorted(err.failures.items())
    return failures[0][1][0] if failures else RuntimeError(str(err))


class _SafeLoadPlanner(DefaultLoadPlanner):
    """torch.distributed.checkpoint's load planner, refusing what `torch.load(weights_only=True)` refuses in the
    non-tensor items (the optimizer's param groups), as every other checkpoint file is read: the default planner
    unpickles them unrestricted. Bytes that pass the restricted unpickler hold only plain data and tensors."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on anything but plain data and tensors
        value.seek(0)
        super().load_bytes(read_item, value)


def find_checkpoint(root: Path, which: str) -> Path:
    """`latest`: the newest checkpoint under `root` whose files match its manifest (older ones are tried in turn,
    with a warning for each one skipped); otherwise `which` is a checkpoint folder, which must be intact."""
    if which != "latest":
        path = Path(which)
        if not path.is_dir():
            steps = sorted(_step_dirs(root), key=_step_of)
            there = f"the checkpoints in {root} are {', '.join(p.name for p in steps)}" if steps else f"{root} has none"
            raise TrainerError(f"--resume {which}: no such checkpoint folder ({there})")
        problem = verify(path)
        if problem:
            raise TrainerError(f"--resume {which}: {problem}")
        return path
    candidates = sorted(_step_dirs(root), key=lambda p: -_step_of(p))
    if not candidates:
        raise TrainerError(f"--resume latest: no checkpoint in {root}")
    for path in candidates:
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is damaged ({problem}); trying the previous one", stacklevel=3)
    raise TrainerError(f"--resume latest: every checkpoint in {root} is damaged")


def _check_compatible(folder: Path, manifest: dict[str, Any], meta: dict[str, Any]) -> None:
    saved = manifest.get("world_size")
    if saved != meta["world_size"]:
        raise TrainerError(
            f"checkpoint {folder} was written by {saved} processes; this launch has {meta['world_size']} "
            "(every process resumes its own share of the stream: launch the same number)"
        )
    if manifest.get("data_fingerprint") != meta["data_fingerprint"]:
        raise TrainerError(
            f"checkpoint {folder} was trained on other data (sources, their cleaning or their sizes changed); "
            "resume with the data it was trained on, or start a new run in another output_dir"
        )


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per setting whose value differs between the checkpoint's config and this run's."""
    before, after = flatten(saved), flatten(now)
    return [
        f"{key}: checkpoint {before.get(key)!r}, now {after.get(key)!r} (the new value wins)"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when every file matches its checksum."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (half-written)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, OSError):
        return "manifest.json is unreadable"
    for name, digest in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if sha256_of(file) != digest:
            return f"{name} does not match its checksum"
    return None


# ---------------------------------------------------------------- small stateful objects
class RngState:
    """This process's RNG states (python, numpy, torch, CUDA) in types `torch.load(weights_only=True)` reads."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _step_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)] if root.is_dir() else []


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))  # type: ignore[union-attr]
