"""`python -m synthmix ...`: the same as the `synthmix` command."""

import sys

from synthmix.cli import main

if __name__ == "__main__":
    sys.exit(main())
