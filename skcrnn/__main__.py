"""Command line: ``python -m skcrnn reproduce`` (also the ``skcrnn`` script)."""

import sys

from ._reproduce import main

if __name__ == "__main__":
    sys.exit(main())
