"""Training on the exact mix, with the collapse hook: the runtime, the model, generation, the collapse indicators,
reports, experiments and the integrations with transformers' `Trainer` and TRL.

The subpackages are layers, each importing only from the ones below it (checked by import-linter, `make lint`):

    experiments, integrations   jobs made of runs; synthmix inside other trainers
    runtime                     set-up, the step loop, checkpoints, when the hook runs
    collapse                    the indicators, the monitor, eval recording
    generation, modeling        sampling and corpora; the model, attention, packing, loss
    distributed, reporting      several processes and FSDP2; the event log, records, reports, cards
    config, errors              the run config; the package's error

The public names below are imported on first use, so that `import synthmix.trainer` stays cheap:

    from synthmix.trainer import load_config, train
    run_folder = train(load_config("configs/tiny.yaml", ["--train.max_steps", "4"]))
"""

from __future__ import annotations

from synthmix.libraries import lazy_exports

_EXPORTS = {
    "RunConfig": "synthmix.trainer.config",
    "load_config": "synthmix.trainer.config",
    "TrainerError": "synthmix.trainer.errors",
    "train": "synthmix.trainer.runtime.loop",
    "fit": "synthmix.trainer.runtime.loop",
    "setup": "synthmix.trainer.runtime.setup",
    "CollapseMonitor": "synthmix.trainer.collapse.monitor",
    "generate_corpus": "synthmix.trainer.generation.corpus",
    "write_report": "synthmix.trainer.reporting.report",
    "read_events": "synthmix.trainer.reporting.events",
    "Sweep": "synthmix.trainer.experiments.sweep",
    "run_sweep": "synthmix.trainer.experiments.sweep",
    "Experiment": "synthmix.trainer.experiments.recursive",
    "run_experiment": "synthmix.trainer.experiments.recursive",
    "CollapseCallback": "synthmix.trainer.integrations",
    "attach_stream": "synthmix.trainer.integrations",
    "mixed_stream": "synthmix.trainer.integrations",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
