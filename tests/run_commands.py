"""Run `synthmix ...` command lines one after another in this one process, through the console script's own
entry (`synthmix.cli.main`), stopping at the first that fails with its exit code. Tests that set an environment
once (a Hugging Face cache, a working directory) use it to pay the libraries' import time once, not per command.
A command that quantizes must come before any that does not (a run without quantization sets bitsandbytes aside
for the rest of the process: synthmix.libraries).

    python tests/run_commands.py "synthmix inspect --config configs/chat-sft.yaml" "synthmix train ..."
"""

from __future__ import annotations

import shlex
import sys

from synthmix.cli import main

if __name__ == "__main__":
    for line in sys.argv[1:]:
        argv = shlex.split(line)
        if argv[:1] != ["synthmix"]:
            sys.exit(f"not a synthmix command: {line}")
        print(f"$ {line}", flush=True)
        code = main(argv[1:])
        if code:
            sys.exit(code)
