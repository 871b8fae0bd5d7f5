"""`python -m data_mixers inspect ...`: an alias of `synthmix inspect ...`."""

import sys

from synthmix.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m data_mixers"))
