"""`synthmix`: one command for every job, and the one error edge they share.

    synthmix train     --config CONFIG [--resume latest|PATH] [--section.key VALUE ...]
    synthmix sft       --config CONFIG [--resume latest|checkpoint-N] [--section.key VALUE ...]
    synthmix inspect   --config CONFIG [--json] [--dump FILE] [--rows FILE] [--epochs N] [--section.key VALUE ...]
    synthmix report    RUN_DIR [RUN_DIR ...] [--out FILE]
    synthmix recursive --config CONFIG --strategy replace|accumulate|fixed_real|adaptive [--generations G] ...
    synthmix sweep     --config CONFIG --ratios 0,0.25,0.5 [--seeds 0,1,2] [--steps N] [--run-dir DIR] [--jobs J]
                       [--gpus-per-run K | --launcher submitit --submitit.KEY VALUE ... [--no-wait]]
    synthmix generate  --model MODEL --prompts FILE [--n N] [--out FILE] [sampling flags]
    synthmix generate  --backend openai --base-url URL --model NAME --prompts FILE [--messages-field F] ...
    synthmix demo      [--samples N] [--cache-dir DIR] [--section.key VALUE ...]

An error the user can fix (a `UserError`: a bad key, a missing file, a malformed line, a full disk) prints one
line `error: ...` and exits 2; `--debug` also prints its traceback. A run stopped by SIGTERM or SIGUSR1 (after
writing a checkpoint) says so and exits 75. Any other exception is a bug: its traceback
is printed as Python prints it. Heavy libraries are imported only by the command that needs them, so `--help`
and configuration errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthmix.errors import ConfigError, Preempted, UserError
from synthmix.libraries import load_bitsandbytes_only_to_quantize, quiet_libraries

Handler = Callable[[argparse.Namespace, list[str]], None]
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run stopped on SIGTERM/SIGUSR1 with a checkpoint; try again


def main(argv: list[str] | None = None, prog: str = "synthmix") -> int:
    """Parse the command line, run the chosen job, and turn a UserError into one line on stderr (exit 2)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(prog, argv)
    args, rest = parser.parse_known_args(argv)
    handler: Handler = args.handler
    if rest and not args.overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        quiet_libraries()
        handler(args, rest)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as err:
        print(str(err), file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Destroy the launch's process group (torchrun, accelerate launch) while the interpreter is whole: left to the
    interpreter's teardown, gloo's worker threads can abort a process that finished its job (SIGABRT, "terminate
    called without an active exception", seen after a two-process run had printed its run folder)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def _one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# ---------------------------------------------------------------------------------------------- the parser
def _parser(prog: str, argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="LoRA fine-tuning on an exact real/synthetic mix, with model-collapse monitoring.",
        epilog="Run `synthmix COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wants_help = any(a in ("-h", "--help") for a in argv)
    for name, spec in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=spec.summary,
            description=spec.summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            # The config reference imports the config classes: built only when help is asked for.
            epilog=_config_epilog() if spec.overrides and wants_help and name in argv else None,
        )
        spec.arguments(command)
        command.add_argument("--debug", action="store_true", help="show the traceback of an error")
        command.set_defaults(handler=spec.handler, overrides=spec.overrides)
    return parser


def _config_epilog() -> str:
    from synthmix.schema import format_reference
    from synthmix.trainer.config import RunConfig

    return (
        "Any key of the run config can be set with --KEY VALUE (values are YAML: 0.3, true, null, [a, b], {}); "
        "a mapping value replaces the mapping.\n\nconfig keys:\n" + format_reference(RunConfig)
    )


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, type=Path, help="run config (YAML)")


def _load(path: Path | None, overrides: list[str], data_only: bool = False) -> Any:
    from synthmix.trainer.config import load_config

    return load_config(path, overrides, data_only=data_only)


def _libraries_for(*configs: Any) -> None:
    """Before the job imports peft: bitsandbytes only for a job that quantizes."""
    load_bitsandbytes_only_to_quantize(any(c.model.quantization.bits is not None for c in configs))


# ---------------------------------------------------------------------------------------------- train
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config(parser, required=False)
    parser.add_argument("--resume", help="continue from 'latest' (the newest intact checkpoint) or a checkpoint folder")


def _train(args: argparse.Namespace, overrides: list[str]) -> None:
    config = _load(args.config, overrides)
    _libraries_for(config)
    from synthmix.trainer.runtime.loop import train

    print(f"run folder: {train(config, resume=args.resume)}")


# ---------------------------------------------------------------------------------------------- sft
def _sft_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument("--resume", help="'latest' (the newest checkpoint-N of output_dir) or a checkpoint-N folder")


def _sft(args: argparse.Namespace, overrides: list[str]) -> None:
    config = _load(args.config, overrides)
    _libraries_for(config)
    from synthmix.trainer.integrations.sft import run_sft

    print(f"run folder: {run_sft(config, resume=args.resume)}")


# ---------------------------------------------------------------------------------------------- inspect
def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--dump", type=Path, help="write epoch 1's stream as JSONL (source, kind, index, n_tokens)")
    parser.add_argument("--rows", type=Path, help="write epoch 1's packed rows as JSONL (pieces and padding per row)")
    parser.add_argument("--epochs", type=int, help="epochs to plan (default: train.epochs of the config)")


def _inspect(args: argparse.Namespace, overrides: list[str]) -> None:
    config = _load(args.config, overrides, data_only=True)
    _libraries_for(config)
    from synthmix.data_mixers.inspect import format_report, inspect_mix

    epochs = args.epochs if args.epochs is not None else config.train.epochs
    if epochs < 1:
        raise ConfigError(f"--epochs: must be at least 1, got {epochs}")
    from synthmix.trainer.config import run_tokenizer

    described = inspect_mix(
        config.data, run_tokenizer(config), config.seed, epochs, config.train.seq_len, args.dump, args.rows,
        base_model=config.model.name,
    )  # fmt: skip
    report = {"config": str(args.config), **described}
    print(json.dumps(report, indent=2) if args.json else format_report(report))


# ---------------------------------------------------------------------------------------------- report
def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folder(s) with metrics.jsonl")
    parser.add_argument("--out", type=Path, help="HTML file to write (default RUN_DIR/report.html or compare.html)")


def _report(args: argparse.Namespace, overrides: list[str]) -> None:
    from synthmix.trainer.reporting.report import write_report

    print(write_report(args.run_dirs, args.out))


# ---------------------------------------------------------------------------------------------- sampling flags
def _sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int, top_p: float) -> None:
    """One flag per SamplingConfig field; the defaults differ per job and are given here."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens generated per prompt")
    group.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy")
    group.add_argument("--top-p", type=float, default=top_p, help="nucleus sampling; 1.0 is off")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 is off")
    group.add_argument("--num-beams", type=int, default=1, help="beams; > 1 with --no-do-sample is beam search")
    group.add_argument(
        "--do-sample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-do-sample decodes greedily, or with beam search when --num-beams > 1",
    )
    group.add_argument("--batch-size", type=int, default=32, help="prompts generated together")


def _sampling(args: argparse.Namespace, seed: int) -> Any:
    from synthmix.trainer.config import SamplingConfig, validate_sampling

    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        batch_size=args.batch_size,
        seed=seed,
    )
    validate_sampling(sampling, lambda name: "--" + name.replace("_", "-"))
    return sampling


# ---------------------------------------------------------------------------------------------- served backend
def _served_arguments(parser: argparse.ArgumentParser, model_flag: str | None = None, backend_help: str = "") -> None:
    """--backend and the flags of a served model (an OpenAI-compatible server); see trainer/generation/served.py."""
    group = parser.add_argument_group("served backend")
    group.add_argument(
        "--backend",
        choices=("hf", "openai"),
        default="hf",
        help=backend_help
        or "hf: sample in this process with transformers (default); openai: request completions from an "
        "OpenAI-compatible server (vLLM, TGI, llama.cpp, transformers serve, OpenAI)",
    )
    group.add_argument(
        "--base-url", metavar="URL", help="--backend openai: the API root, e.g. http://127.0.0.1:8000/v1"
    )
    if model_flag is not None:
        group.add_argument(model_flag, metavar="NAME", help="--backend openai: the model name the server expects")
    group.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="--backend openai: environment variable holding the API key (default: OPENAI_API_KEY; unset: no key)",
    )
    group.add_argument("--concurrency", type=int, metavar="K", help="--backend openai: requests in flight (default: 8)")
    group.add_argument(
        "--timeout", type=float, metavar="S", help="--backend openai: seconds per request (default: 300)"
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="--backend openai: tries per request on 429, 5xx, timeouts (default: 6)",
    )


def _endpoint(args: argparse.Namespace, model: str | None, model_flag: str = "--model") -> Any:
    """The served model's Endpoint, or None for --backend hf (where the served flags are errors)."""
    served_flags = {
        "--base-url": args.base_url,
        "--api-key-env": args.api_key_env,
        "--concurrency": args.concurrency,
        "--timeout": args.timeout,
        "--max-attempts": args.max_attempts,
    }
    if model_flag != "--model":  # generate's --model names the hf model too
        served_flags[model_flag] = model
    if args.backend != "openai":
        for flag, value in served_flags.items():
            if value is not None:
                raise ConfigError(f"{flag}: only with --backend openai")
        return None
    for flag, value in (("--base-url", args.base_url), (model_flag, model)):
        if not value:
            raise ConfigError(f"{flag}: required with --backend openai")
    variable = args.api_key_env or "OPENAI_API_KEY"
    key = os.environ.get(variable) or None
    if args.api_key_env and key is None:
        raise ConfigError(f"--api-key-env: the environment variable {variable} is not set")
    from synthmix.trainer.generation.served import Endpoint

    defaults = {"concurrency": 8, "timeout": 300.0, "max_attempts": 6}
    chosen = {name: getattr(args, name) for name in defaults if getattr(args, name) is not None}
    return Endpoint(args.base_url, model, key, **{**defaults, **chosen})


# ---------------------------------------------------------------------------------------------- recursive
def _recursive_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument(
        "--strategy",
        choices=("replace", "accumulate", "fixed_real", "adaptive"),
        required=True,
        help="replace: newest corpus only; accumulate: real + every corpus; fixed_real: a fixed real share; "
        "adaptive: replace until a collapse rule fires, then real data mixed back in (x collapse.reduce_factor)",
    )
    parser.add_argument("--generations", type=int, default=5, help="generations to train (default 5)")
    parser.add_argument("--real-fraction", type=float, default=0.2, help="fixed_real: share of real data")
    parser.add_argument("--samples", type=int, help="texts sampled per generation (default: as many as real)")
    parser.add_argument("--run-dir", type=Path, help="where the generations go (default: OUTPUT_DIR/<strategy>)")
    # Truncated sampling by default: it cuts each generation's tail, so collapse shows within a few generations.
    _sampling_arguments(parser, max_new_tokens=112, top_p=0.9)
    # --served-model, not --model: `--model ...` is the config's model section as an override.
    _served_arguments(
        parser,
        model_flag="--served-model",
        backend_help="hf: every generation samples in this process (default); openai: generation 1's corpus is "
        "requested from a served model (--served-model, e.g. the base model or a teacher), later generations "
        "sample in this process from the model just trained",
    )


def _recursive(args: argparse.Namespace, overrides: list[str]) -> None:
    config = _load(args.config, overrides)
    _libraries_for(config)
    from synthmix.data_mixers.corpus import real_training_texts
    from synthmix.trainer.experiments.recursive import SUMMARY, Experiment, run_experiment

    if args.generations < 1:
        raise ConfigError(f"--generations: must be at least 1, got {args.generations}")
    if not 0 < args.real_fraction < 1:
        raise ConfigError(f"--real-fraction: must be in (0, 1), got {args.real_fraction}")
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples: must be at least 1, got {args.samples}")
    experiment = Experiment(
        config=config,
        run_dir=args.run_dir or Path(config.output_dir) / args.strategy,
        generations=args.generations,
        strategy=args.strategy,
        real_fraction=args.real_fraction,
        samples=args.samples or sum(1 for _ in real_training_texts(config.data)),
        sampling=_sampling(args, seed=config.seed),
        served=_endpoint(args, args.served_model, "--served-model"),
    )
    if experiment.served is not None:
        from synthmix.trainer.generation.served import ServedSampling

        ServedSampling.from_sampling(experiment.sampling)  # --top-k, --num-beams: refused before any training
    print(f"generations: {run_experiment(experiment) / SUMMARY}")


# ---------------------------------------------------------------------------------------------- sweep
def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: comma-separated numbers expected, got {text!r}") from None


def _tolerances(items: list[str]) -> dict[str, float]:
    from synthmix.trainer.experiments.sweep import DEFAULT_TOLERANCES

    if not items:
        return dict(DEFAULT_TOLERANCES)
    tolerances = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            tolerances[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--tolerance: INDICATOR=FRACTION expected (e.g. real_ppl=0.05), got {item!r}") from None
    return tolerances


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument("--ratios", required=True, help="synthetic ratios to train at, comma-separated; include 0")
    parser.add_argument("--seeds", default="0", help="seeds per ratio, comma-separated (default: 0)")
    parser.add_argument("--steps", type=int, help="optimizer steps of every run (default: what ratio 0 plans)")
    parser.add_argument("--run-dir", type=Path, help="where the runs go (default: OUTPUT_DIR/sweep)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, one process and torch thread each")
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="INDICATOR=FRACTION",
        help="allowed change vs ratio 0 the way collapse moves it; repeat for each indicator (replaces the "
        "defaults real_ppl=0.05 distinct_2=0.05 tail_mass=0.1)",
    )
    from synthmix.trainer.experiments.launchers import add_launcher_arguments  # light: no torch

    add_launcher_arguments(parser)


def _sweep(args: argparse.Namespace, overrides: list[str]) -> None:
    from synthmix.trainer.experiments.launchers import launcher_from_args

    launcher = launcher_from_args(args)  # a flag that does not fit the launcher: before the config loads
    config = _load(args.config, overrides)
    _libraries_for(config)
    from synthmix.trainer.experiments.sweep import Sweep, run_sweep

    try:
        seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: comma-separated integers expected, got {args.seeds!r}") from None
    sweep = Sweep(
        config=config,
        run_dir=args.run_dir or Path(config.output_dir) / "sweep",
        ratios=_floats("--ratios", args.ratios),
        seeds=seeds,
        steps=args.steps,
        tolerances=_tolerances(args.tolerance),
        jobs=args.jobs,
        launcher=launcher,
    )
    result = run_sweep(sweep)
    if result is None:  # --no-wait: jobs still queued or running
        print(f"jobs: {sweep.run_dir / 'jobs.json'}")
        return
    print(result["message"])
    print(f"verdict: {sweep.run_dir / 'verdict.json'}\npage:    {sweep.run_dir / 'sweep.html'}")


# ---------------------------------------------------------------------------------------------- generate
def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="hub name or local folder of a causal LM; --backend openai: the served name"
    )
    parser.add_argument(
        "--tokenizer",
        help="hub name or folder (default: --model); --backend openai: counts --prompt-tokens (default: words)",
    )
    parser.add_argument("--adapter", help="peft adapter folder applied on top of --model")
    parser.add_argument("--prompts", required=True, type=Path, help="JSONL, Parquet, CSV or .txt file of real texts")
    parser.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    parser.add_argument(
        "--messages-field",
        help="--backend openai: field holding chats; each is prompted up to its last user turn, written as messages",
    )
    parser.add_argument("--n", type=int, default=1000, help="samples to write (default: 1000)")
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=16,
        help="tokens of real text per prompt (default: 16); --backend openai without --tokenizer: words",
    )
    parser.add_argument("--out", type=Path, default=Path("synthetic.jsonl"), help="output JSONL file")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub to run")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present")
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompt choice and the sampling")
    _sampling_arguments(parser, max_new_tokens=128, top_p=1.0)
    _served_arguments(parser)


def _generate(args: argparse.Namespace, overrides: list[str]) -> None:
    for flag, value in (("--n", args.n), ("--prompt-tokens", args.prompt_tokens)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1, got {value}")
    sampling = _sampling(args, seed=args.seed)
    endpoint = _endpoint(args, args.model)
    if endpoint is not None:
        _generate_served(args, endpoint, sampling)
        return
    if args.messages_field is not None:
        raise ConfigError("--messages-field: chat prompts need --backend openai")
    load_bitsandbytes_only_to_quantize(False)  # sampling loads no quantized model
    from synthmix.data_mixers.config import SourceConfig
    from synthmix.data_mixers.sources import load_source

    # The prompts first: a file that is missing or malformed is named before the model libraries load.
    prompts = load_source(SourceConfig(name="prompts", path=str(args.prompts), text_field=args.text_field))
    from synthmix.trainer.generation.corpus import generate_corpus
    from synthmix.trainer.modeling.model import load_for_sampling

    model, tokenizer = load_for_sampling(
        args.model, args.tokenizer or args.model, args.adapter, args.trust_remote_code, args.device
    )
    generator = args.model + (f" + adapter {args.adapter}" if args.adapter else "")
    written = generate_corpus(
        model, tokenizer, list(prompts.items), args.n, args.prompt_tokens, sampling,
        generator_name=generator, prompt_file=str(args.prompts), out_path=args.out, progress=True,
    )  # fmt: skip
    print(f"wrote {written} samples to {args.out}", file=sys.stderr)


def _generate_served(args: argparse.Namespace, endpoint: Any, sampling: Any) -> None:
    """`synthmix generate --backend openai`: resumable, see trainer/generation/served.py."""
    if args.adapter is not None:
        raise ConfigError("--adapter: with --backend openai the server applies adapters; name the served one --model")
    from synthmix.trainer.generation.served import Prompts, ServedSampling, generate_served, load_tokenizer

    served_sampling = ServedSampling.from_sampling(sampling)
    from synthmix.data_mixers.config import SourceConfig
    from synthmix.data_mixers.sources import load_source

    chat = args.messages_field is not None
    source = SourceConfig(
        name="prompts", path=str(args.prompts), text_field=args.text_field, messages_field=args.messages_field
    )
    items = list(load_source(source).items)
    tokenizer = load_tokenizer(args.tokenizer, args.trust_remote_code) if args.tokenizer and not chat else None
    prompts = Prompts(
        str(args.prompts), items, field=args.messages_field if chat else args.text_field, chat=chat,
        length=args.prompt_tokens, tokenizer=tokenizer, tokenizer_name=args.tokenizer if tokenizer else None,
    )  # fmt: skip
    totals = generate_served(endpoint, prompts, args.n, served_sampling, args.out, progress=True)
    print(
        f"wrote {totals.written} new samples to {args.out} ({totals.lines} lines; {totals.prompt_tokens:,} prompt "
        f"and {totals.completion_tokens:,} completion tokens)",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------- demo
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from synthmix.configs import packaged  # the configs that ship with synthmix: the demo runs from any folder

    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/synthmix/demo"), help="stages 1-2 cache")
    parser.add_argument(
        "--base-config",
        type=Path,
        default=packaged("demo_base.yaml"),
        help="stage 1 config (default: synthmix's demo_base.yaml)",
    )
    parser.add_argument(
        "--config", type=Path, default=packaged("demo.yaml"), help="stage 3 config (default: synthmix's demo.yaml)"
    )
    parser.add_argument("--samples", type=int, default=1200, help="synthetic passages (~110k tokens by default)")


def _demo(args: argparse.Namespace, overrides: list[str]) -> None:
    base_config = _load(args.base_config, ["--output_dir", str(args.cache_dir / "base-run")])
    config = _load(args.config, overrides)  # the overrides apply to stage 3
    _libraries_for(base_config, config)
    from synthmix.trainer.experiments.demo import run_demo

    result = run_demo(base_config, config, args.cache_dir, args.samples)
    print(f"\ndone in {result.seconds:.0f} s")
    print(f"report:  {result.run_dir / 'report.html'}")
    print(f"adapter: {result.run_dir / 'adapter'}  (PeftModel.from_pretrained(base, this folder); base: {result.base})")


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its one-line summary, its arguments, what it runs, whether it takes config overrides."""

    summary: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    overrides: bool


COMMANDS: dict[str, Command] = {
    "train": Command("fine-tune with LoRA on the configured real/synthetic mix", _train_arguments, _train, True),
    "sft": Command(
        "the same run trained by TRL's SFTTrainer: the exact mix as its dataset, the collapse hook as a callback",
        _sft_arguments,
        _sft,
        True,
    ),
    "inspect": Command(
        "show what training would see: sources, and per epoch the exact mix", _inspect_arguments, _inspect, True
    ),
    "report": Command("write the HTML report of one run, or compare several", _report_arguments, _report, False),
    "recursive": Command(
        "the self-consuming loop: generations trained on their own output", _recursive_arguments, _recursive, True
    ),
    "sweep": Command(
        "how much synthetic data is safe: train per ratio and seed at equal steps, and the verdict",
        _sweep_arguments,
        _sweep,
        True,
    ),
    "generate": Command(
        "sample a synthetic corpus from a model, with provenance", _generate_arguments, _generate, False
    ),
    "demo": Command(
        "the offline demo: base model, synthetic corpus, LoRA with the collapse hook", _demo_arguments, _demo, True
    ),
}
