"""A training run that leaves evidence from every process, for tests/trainer/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/trainer/dist_probe.py --config C --output_dir D [--a.b v ...]

Runs `setup` and `fit` like `python -m synthmix train`, recording which example pieces the rank's mixer
hands to the loop; then every rank (not only the main one) writes its own LoRA weights to D/rank{r}.safetensors
(made whole when sharded), its pieces, in stream order, to D/rank{r}.json as [epoch, kind, source, index, start,
length] rows, and what its parameters were during training to D/rank{r}.params.json ({name: [class, local
shape, global shape]}).
`record_pieces` is also what tests/trainer/test_resume.py watches the stream with.
"""

from __future__ import annotations

import argparse
import json

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from synthmix.trainer.config import load_config
from synthmix.trainer.distributed.sharding import full_value
from synthmix.trainer.runtime.loop import fit
from synthmix.trainer.runtime.setup import setup


def main() -> None:
    """Train as configured, then write this rank's adapter weights and the pieces it trained on."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args, overrides = parser.parse_known_args()
    run = setup(load_config(args.config, overrides), resume=None)
    pieces = record_pieces(run.mixer)
    rank = run.accelerator.process_index
    describe_after_first_step(run, run.output_dir / f"rank{rank}.params.json")
    try:
        fit(run)
    finally:
        run.close()
    weights = get_peft_model_state_dict(run.accelerator.unwrap_model(run.model))
    save_file(
        {k: full_value(v.detach()).to("cpu", torch.float32).contiguous() for k, v in weights.items()},
        str(run.output_dir / f"rank{rank}.safetensors"),
    )
    (run.output_dir / f"rank{rank}.json").write_text(json.dumps(pieces))
    run.accelerator.wait_for_everyone()


def describe_after_first_step(run, path) -> None:
    """Write `describe_parameters` to `path` once the first optimizer step is done (between steps: what a
    sharded run holds while it trains)."""

    def describe(optimizer, args, kwargs) -> None:
        if not path.exists():
            path.write_text(json.dumps(describe_parameters(run.model)))

    getattr(run.optimizer, "optimizer", run.optimizer).register_step_post_hook(describe)


def describe_parameters(model: torch.nn.Module) -> dict[str, list]:
    """{name: [class, local shape, global shape]} of every parameter (a DTensor's local shard is its part)."""
    described = {}
    for name, param in model.named_parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        described[name] = [type(param).__name__, list(local.shape), list(param.shape)]
    return described


def record_pieces(mixer) -> list[list]:
    """Wrap this mixer's `next_row` (the loop's only way to read the stream) to log what it returns, as
    [epoch, kind, source, index, start, length] rows."""
    pieces: list[list] = []
    next_row = mixer.next_row

    def recording():
        taken = next_row()
        pieces.extend([mixer.epoch, e.kind, e.source, int(e.index), int(e.start), len(e.ids)] for e in taken)
        return taken

    mixer.next_row = recording
    return pieces


if __name__ == "__main__":
    main()
