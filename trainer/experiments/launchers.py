"""Where the runs of an experiment (the sweep's ratios and seeds, the recursive script's arms and seeds) train:
the launchers, shared by `synthmix sweep` and scripts/recursive_experiment.py.

- `local` (the default): on this machine. Without `--gpus-per-run` each experiment keeps its own way (the sweep
  trains in this process, or `--jobs` processes of one torch thread). With `--gpus-per-run K`, each run is a
  `synthmix` process of its own on a slice of K of the visible GPUs (CUDA_VISIBLE_DEVICES), started with torchrun
  over its K GPUs when K > 1; runs queue until a slice is free (`plan_slices`, `run_on_slices`).
- `submitit`: one job per run through submitit, on Slurm (`--submitit.cluster slurm`, submitted as a job array)
  or on this machine without a scheduler (`--submitit.cluster local`, the same code path, which the tests run).
  Each job runs one `synthmix` command (`run_task`); with several GPUs or nodes, Slurm starts one task per GPU
  (srun) and each task joins the run's process group through the environment submitit derives from Slurm's.
  The job ids are kept in RUN_DIR/jobs.json: run the same command again to collect (finished runs are read,
  failed ones resubmitted, running ones waited for); `--no-wait` returns after submitting.

A run is a `Task`: the `synthmix` arguments that train it, and its folder. Every launcher runs the same command,
so a run trains the same numbers whichever launcher started it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synthmix.errors import ConfigError, UserError

JOBS_FILE = "jobs.json"
"""RUN_DIR/jobs.json: per run, the latest submitit job (cluster, id, folder, logs, attempts)."""
SUBMITIT_FOLDER = "submitit"
"""RUN_DIR/submitit: submitit's folder (submission scripts, pickles, logs); each run folder links its jobs' logs
under RUN_FOLDER/submitit."""
LAUNCHERS = ("local", "submitit")
ACTIVE_SLURM_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
    "RESIZING", "STAGE_OUT", "SIGNALING",
}  # fmt: skip
UNKNOWN_GRACE_S = 600
"""A Slurm job that sacct does not know yet (just submitted) counts as active for this long after submission."""


class LauncherError(UserError):
    """A run that its launcher could not train (its process or job failed): the message names its log."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One run: `synthmix` arguments (e.g. `train --config FILE`) and the folder the run trains into."""

    name: str
    folder: Path
    argv: tuple[str, ...]
    resume_from: Path | None = None
    """When this folder exists as the command starts, `--resume latest` is added (an interrupted run continues)."""
    log: str = "launch.log"
    """The local launcher's log of the process, in `folder` (stdout and stderr, appended)."""

    def synthmix_argv(self) -> list[str]:
        """The arguments as the run starts now: with `--resume latest` when there is something to resume."""
        resume = self.resume_from is not None and self.resume_from.is_dir()
        return [*self.argv, *(["--resume", "latest"] if resume else [])]


@dataclasses.dataclass(frozen=True)
class SubmititSettings:
    """`--submitit.*`: where and how the jobs run (the sbatch settings of each job)."""

    cluster: str = "slurm"
    """slurm: sbatch (a job array); local: processes on this machine, no scheduler (for tests and a quick try)."""
    partition: str | None = None
    time: int = 240
    """Minutes of each job (Slurm's --time; local: killed after it)."""
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    """At most this many jobs of the array run at once (Slurm's --array=...%N)."""
    slurm_additional_parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Further sbatch settings as JSON, e.g. '{"constraint": "a100", "exclusive": true}'."""
    poll: float | None = None
    """Seconds between two looks at the jobs' states while waiting (default: 30 on Slurm, 1 locally)."""

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU: srun starts each, and each joins the run's process group (see `run_task`)."""
        return max(1, self.gpus_per_node)

    @property
    def poll_s(self) -> float:
        return self.poll if self.poll is not None else (30.0 if self.cluster == "slurm" else 1.0)


@dataclasses.dataclass(frozen=True)
class Launcher:
    """Which launcher, and its settings (`--launcher`, `--gpus-per-run`, `--no-wait`, `--submitit.*`)."""

    kind: str = "local"
    gpus_per_run: int | None = None
    """local: GPUs per run (each run its own slice of the visible GPUs); None or 0: as without GPUs."""
    submitit: SubmititSettings = dataclasses.field(default_factory=SubmititSettings)
    wait: bool = True
    """submitit: wait for the jobs (False: return once they are submitted; run again to collect)."""

    @property
    def on_slices(self) -> bool:
        """Runs as processes on GPU slices (`--launcher local --gpus-per-run K`)."""
        return self.kind == "local" and bool(self.gpus_per_run)


# ---------------------------------------------------------------------------------------------- the command line
SUBMITIT_FLAGS: dict[str, tuple[Any, str | None, str]] = {
    "cluster": (str, None, "slurm (default): sbatch, one job array; local: jobs as processes here, no scheduler"),
    "partition": (str, "NAME", "Slurm partition"),
    "time": (int, "MINUTES", "time limit of each job (default 240)"),
    "gpus_per_node": (int, "N", "GPUs per job (per node); one task (process) per GPU"),
    "nodes": (int, "N", "nodes per job (default 1)"),
    "cpus_per_task": (int, "N", "CPUs per task (also the task's OMP_NUM_THREADS when that is unset)"),
    "mem_gb": (float, "GB", "memory per node"),
    "account": (str, "NAME", "Slurm account"),
    "qos": (str, "NAME", "Slurm QOS"),
    "array_parallelism": (int, "N", "jobs of the array running at once, at most"),
    "slurm_additional_parameters": (str, "JSON", 'further sbatch settings, e.g. \'{"constraint": "a100"}\''),
    "poll": (float, "S", "seconds between two looks at the jobs while waiting (default: 30 on Slurm, 1 locally)"),
}


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """--launcher, --gpus-per-run, --no-wait and --submitit.* (a group of their own)."""
    group = parser.add_argument_group("launcher", "where the runs train (docs: how-to/sweep.md#launchers)")
    group.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: on this machine (default); submitit: one job per run through submitit (Slurm, or local)",
    )
    group.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="K",
        help="local: each run on its own K of the visible GPUs (torchrun when K > 1); runs queue for a free slice",
    )
    group.add_argument(
        "--no-wait",
        action="store_true",
        help="submitit: return once the jobs are submitted; run the same command again to collect",
    )
    for name, (kind, metavar, text) in SUBMITIT_FLAGS.items():
        choices = ("slurm", "local") if name == "cluster" else None
        group.add_argument(
            f"--submitit.{name}", dest=f"submitit_{name}", type=kind, choices=choices, metavar=metavar, help=text
        )


def launcher_from_args(args: argparse.Namespace) -> Launcher:
    """The Launcher of parsed arguments; flags that do not fit the launcher are one-line errors."""
    given = {name: getattr(args, f"submitit_{name}") for name in SUBMITIT_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if args.launcher != "submitit":
        if given:
            raise ConfigError(f"--submitit.{next(iter(given))}: only with --launcher submitit")
        if args.no_wait:
            raise ConfigError("--no-wait: only with --launcher submitit (the local launcher trains as it goes)")
    elif args.gpus_per_run is not None:
        raise ConfigError("--gpus-per-run: for --launcher local; a submitit job asks for --submitit.gpus_per_node")
    if args.gpus_per_run is not None and args.gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run: must be at least 0, got {args.gpus_per_run}")
    extra = given.get("slurm_additional_parameters")
    if extra is not None:
        try:
            given["slurm_additional_parameters"] = json.loads(extra)
        except json.JSONDecodeError:
            extra = None
        if not isinstance(given.get("slurm_additional_parameters"), dict) or extra is None:
            raise ConfigError(
                '--submitit.slurm_additional_parameters: a JSON object expected, e.g. \'{"constraint": "a100"}\''
            )
    settings = SubmititSettings(**given)
    check_settings(settings)
    return Launcher(kind=args.launcher, gpus_per_run=args.gpus_per_run, submitit=settings, wait=not args.no_wait)


def check_settings(settings: SubmititSettings) -> None:
    for name in ("time", "nodes"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"--submitit.{name}: must be at least 1, got {getattr(settings, name)}")
    for name in ("gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism", "poll"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise ConfigError(f"--submitit.{name}: must be at least 0, got {value}")
    if settings.cluster == "local" and settings.nodes > 1:
        raise ConfigError("--submitit.nodes: the local cluster has one node")


def check_launcher(launcher: Launcher, jobs: int) -> None:
    """What can only be checked on this machine: GPUs for --gpus-per-run, submitit installed."""
    if launcher.on_slices:
        if jobs != 1:
            raise ConfigError("--jobs: with --gpus-per-run the GPU slices set how many runs train at once")
        visible = visible_gpus()
        if not visible:
            raise ConfigError(
                f"--gpus-per-run {launcher.gpus_per_run}: no GPU is visible here (CUDA_VISIBLE_DEVICES, "
                "torch.cuda); leave it out to train on the CPU"
            )
        plan_slices(visible, launcher.gpus_per_run, 1)
    if launcher.kind == "submitit":
        if jobs != 1:
            raise ConfigError(
                "--jobs: with --launcher submitit each run is a job (--submitit.array_parallelism caps them)"
            )
        _submitit()


# ---------------------------------------------------------------------------------------------- local: GPU slices
def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them for its children (indices or UUIDs); none without
    CUDA. Imports torch."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def plan_slices(visible: Sequence[str], gpus_per_run: int, runs: int) -> list[list[str]]:
    """The GPU slices runs take turns on: disjoint groups of `gpus_per_run` of the `visible` GPUs, in order,
    no more than there are runs (GPUs left over idle); each run waits for a free slice."""
    if gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run: must be at least 1 to slice the GPUs, got {gpus_per_run}")
    if gpus_per_run > len(visible):
        raise ConfigError(f"--gpus-per-run {gpus_per_run}: only {len(visible)} GPU(s) visible ({','.join(visible)})")
    count = min(len(visible) // gpus_per_run, max(runs, 1))
    return [list(visible[i * gpus_per_run : (i + 1) * gpus_per_run]) for i in range(count)]


def slice_command(task: Task, gpus: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command and the environment changes of `task` on the GPU slice `gpus`: one process on one GPU,
    torchrun's processes (one per GPU, a rendezvous of their own on this machine) on several."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    if len(gpus) > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(len(gpus))]
        return [*launch, "-m", "synthmix", *task.synthmix_argv()], env
    return [sys.executable, "-m", "synthmix", *task.synthmix_argv()], env


def run_on_slices(
    tasks: Sequence[Task],
    slices: Sequence[Sequence[str]],
    command: Callable[[Task, Sequence[str]], tuple[list[str], dict[str, str]]] = slice_command,
    poll_s: float = 0.5,
) -> None:
    """Run every task as a process on a free slice (the queue: a task starts when a slice frees up), its output
    appended to FOLDER/LOG. After a failure no task starts; those running finish, then LauncherError names the
    first failure and its log."""
    pending = deque(tasks)
    free = deque(list(s) for s in slices)
    running: list[tuple[subprocess.Popen[bytes], Task, list[str], Any]] = []
    failed: list[str] = []
    try:
        while running or (pending and not failed):
            while pending and free and not failed:
                task, gpus = pending.popleft(), free.popleft()
                argv, changes = command(task, gpus)
                task.folder.mkdir(parents=True, exist_ok=True)
                log = open(task.folder / task.log, "ab")  # noqa: SIM115 (closed when the process ends)
                print(f"[{task.name}] GPUs {','.join(gpus) or '-'}: training; log {task.folder / task.log}", flush=True)
                process = subprocess.Popen(argv, env={**os.environ, **changes}, stdout=log, stderr=subprocess.STDOUT)
                running.append((process, task, gpus, log))
            time.sleep(poll_s)
            for entry in [e for e in running if e[0].poll() is not None]:
                process, task, gpus, log = entry
                running.remove(entry)
                log.close()
                free.append(gpus)
                if process.returncode:
                    failed.append(f"{task.name}: exit {process.returncode}; see {task.folder / task.log}")
                else:
                    print(f"[{task.name}] done", flush=True)
    except BaseException:
        for process, *_ in running:
            process.terminate()  # SIGTERM: the trainer checkpoints and stops (resumed by the next call)
        for process, *_ in running:
            process.wait()
        raise
    if failed:
        raise LauncherError(failed[0] + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))


# ---------------------------------------------------------------------------------------------- submitit
def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        from synthmix.extras import install_command

        raise ConfigError(f"--launcher submitit needs submitit: {install_command('cluster')}") from None
    return submitit


def run_task(task: Task, threads: int | None = None) -> None:
    """A submitit job's function: the task's `synthmix` command in a process of its own (the same command as any
    launcher). Under several tasks (GPUs or nodes), each task exports the torch.distributed environment derived
    from the job's (MASTER_ADDR, RANK, WORLD_SIZE, LOCAL_RANK) and its process joins the run's group."""
    import submitit

    env = dict(os.environ)
    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        env = dict(os.environ)
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
    if threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "synthmix", *task.synthmix_argv()]
    print(f"[{task.name}] task {job.global_rank}/{job.num_tasks}: {' '.join(command)}", flush=True)
    code = subprocess.call(command, env=env)
    if code:
        raise LauncherError(f"{task.name}: synthmix exited {code}")


def read_jobs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """RUN_DIR/jobs.json: {run name: its latest job}; empty when there is none."""
    path = run_dir / JOBS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not JSON ({err}); remove it to submit every unfinished run again") from None


def job_active(record: dict[str, Any], now: float | None = None) -> tuple[bool, str]:
    """Whether the job of `record` is still queued or running, and its state in a word."""
    submitit = _submitit()
    from submitit.core.utils import JobPaths

    paths = JobPaths(record["folder"], record["job_id"])
    if paths.result_pickle.exists():
        return False, "ENDED"
    if record["cluster"] == "local":  # the job id is the pid of submitit's controller on this machine
        alive = _alive(int(record["job_id"]))
        return alive, "RUNNING" if alive else "GONE"
    state = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"]).state.split()[0].upper()
    if state == "UNKNOWN":  # sacct does not list it (yet)
        return ((now or time.time()) - record.get("submitted_s", 0) < UNKNOWN_GRACE_S), state
    return state in ACTIVE_SLURM_STATES, state


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except (FileNotFoundError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _executor(settings: SubmititSettings, folder: Path, name: str) -> Any:
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=folder, cluster=settings.cluster)
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": settings.time,
        "nodes": settings.nodes,
        "gpus_per_node": settings.gpus_per_node,
        "tasks_per_node": settings.tasks_per_node,
    }
    if settings.cpus_per_task is not None:
        parameters["cpus_per_task"] = settings.cpus_per_task
    if settings.mem_gb is not None:
        parameters["mem_gb"] = settings.mem_gb
    if settings.cluster == "slurm":
        slurm = {
            "partition": settings.partition,
            "account": settings.account,
            "qos": settings.qos,
            "array_parallelism": settings.array_parallelism,
        }
        parameters.update({f"slurm_{key}": value for key, value in slurm.items() if value is not None})
        if settings.slurm_additional_parameters:
            parameters["slurm_additional_parameters"] = dict(settings.slurm_additional_parameters)
    executor.update_parameters(**parameters)
    return executor


def submit(
    tasks: Sequence[Task], settings: SubmititSettings, run_dir: Path, jobs: dict[str, dict[str, Any]], name: str
) -> None:
    """Submit one job per task (on Slurm one job array), record each in `jobs` and RUN_DIR/jobs.json, and link
    each job's logs into its run folder (RUN_FOLDER/submitit/JOB_log.out and .err)."""
    folder = run_dir / SUBMITIT_FOLDER
    executor = _executor(settings, folder, name)
    submitted = []
    with executor.batch():
        for task in tasks:
            submitted.append(executor.submit(run_task, task, settings.cpus_per_task))
    for task, job in zip(tasks, submitted, strict=True):
        links = task.folder / SUBMITIT_FOLDER
        links.mkdir(parents=True, exist_ok=True)
        logs = {}
        for kind, path in (("out", job.paths.stdout), ("err", job.paths.stderr)):
            link = links / f"{job.job_id}_log.{kind}"
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(path, links))
            logs[kind] = str(link)
        previous = jobs.get(task.name, {})
        jobs[task.name] = {
            "cluster": settings.cluster, "job_id": str(job.job_id), "folder": str(folder), "stdout": logs["out"],
            "stderr": logs["err"], "submitted": datetime.datetime.now().isoformat(timespec="seconds"),
            "submitted_s": time.time(), "attempts": previous.get("attempts", 0) + 1,
        }  # fmt: skip
        print(f"[{task.name}] job {job.job_id} submitted; log {logs['out']} (and .err)", flush=True)
    from synthmix.files import write_text

    write_text(run_dir / JOBS_FILE, json.dumps(jobs, indent=2) + "\n")


def run_submitit(
    tasks: Sequence[Task],
    launcher: Launcher,
    run_dir: Path,
    finished: Callable[[Task], bool],
    name: str = "synthmix",
) -> bool:
    """Submit, collect or wait for every task's job; returns whether every task has finished.

    A task `finished` says is done needs nothing; one whose recorded job (RUN_DIR/jobs.json) is still queued or
    running is waited for; any other (never submitted, or its job ended without finishing it: failed, timed out,
    preempted, cancelled) is submitted (again; an interrupted run resumes). Without `launcher.wait` this returns
    once everything is submitted. Waiting, a job that ends without finishing its task is a LauncherError naming
    its log (the next call resubmits it)."""
    settings = launcher.submitit
    run_dir.mkdir(parents=True, exist_ok=True)
    jobs = read_jobs(run_dir)
    todo, waiting = [], []
    for task in tasks:
        if finished(task):
            continue
        record = jobs.get(task.name)
        if record is None:
            todo.append(task)
            continue
        active, state = job_active(record)
        if active:
            print(f"[{task.name}] job {record['job_id']} {state.lower()}; log {record['stdout']}", flush=True)
            waiting.append(task)
        else:
            print(f"[{task.name}] job {record['job_id']} ended ({state}) unfinished; log {record['stdout']}; "
                  "submitting again", flush=True)  # fmt: skip
            todo.append(task)
    if todo:
        submit(todo, settings, run_dir, jobs, name)
    pending = [*waiting, *todo]
    if not pending:
        return True
    if not launcher.wait:
        print(f"{len(pending)} job(s) queued or running; run the same command again to collect", flush=True)
        return False
    while pending:
        time.sleep(settings.poll_s)
        still = []
        for task in pending:
            record = jobs[task.name]
            active, state = job_active(record)
            if active:
                still.append(task)
            elif finished(task):
                print(f"[{task.name}] done", flush=True)
            else:
                raise LauncherError(
                    f"{task.name}: job {record['job_id']} ended ({state}) without finishing the run; see "
                    f"{record['stdout']} and .err (run the same command again to resubmit it)"
                )
        pending = still
    return True


def job_succeeded(record: dict[str, Any] | None) -> bool:
    """Whether the recorded job ended and its function returned (submitit's result file says success)."""
    if record is None:
        return False
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(record["folder"], record["job_id"]).result_pickle
    if not path.exists():
        return False
    try:
        outcome = pickle_load(path)
    except Exception:  # noqa: BLE001 (a half-written or foreign file: not a success)
        return False
    return isinstance(outcome, tuple) and outcome[:1] == ("success",)
