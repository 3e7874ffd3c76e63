"""Command line: ``python -m skcrnn COMMAND`` (also the ``skcrnn`` script)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
