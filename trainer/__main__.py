"""`accelerate launch -m trainer --config CONFIG [--resume latest|PATH] [--section.key value ...]`

Also runs as `python -m trainer` (one process) and under `torchrun` (several processes; on CPU, gloo).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from data_mixers.errors import MixerError
from trainer.config import load_config
from trainer.errors import TrainerError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and train; a user-fixable error prints as one line (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config (YAML)")
    parser.add_argument("--resume", help="'latest' or a checkpoint folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    try:
        from trainer.loop import train

        output_dir = train(load_config(args.config, overrides), resume=args.resume)
    except (TrainerError, MixerError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {output_dir}")
    return 0


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


if __name__ == "__main__":
    sys.exit(main())
