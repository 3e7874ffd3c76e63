"""Small file-system helpers shared by the downloads and the checkpoints."""

import os
from contextlib import suppress


def fsync_directory(directory):
    """Make a rename in ``directory`` durable.

    Not possible everywhere (Windows cannot open a directory), so failures
    are ignored: the rename itself is still atomic.
    """
    with suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
