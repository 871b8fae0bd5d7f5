"""`python -m trainer ...` (also under `accelerate launch -m trainer` and `torchrun -m trainer`): an alias of
`synthmix train ...`."""

import sys

from synthmix.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog="python -m trainer"))
