"""Small file-system helpers shared by the downloads, the checkpoints and
the saved models."""

import errno
import os
import secrets
import stat
from contextlib import contextmanager, suppress
from pathlib import Path


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


def check_writable(path):
    """Check, before any work, that a file can be written at ``path``.

    Parameters
    ----------
    path : str or path-like
        A file to create or replace.

    Returns
    -------
    pathlib.Path
        The file that writing replaces: ``path``, or the file it links to
        when it is a symbolic link.

    Raises
    ------
    IsADirectoryError
        If ``path`` is a directory.
    FileNotFoundError, NotADirectoryError
        If its directory does not exist, or is not a directory.
    PermissionError
        If its directory may not be written.
    """
    path = Path(os.fspath(path))
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    directory = target.parent
    if target.is_dir():
        raise OSError(errno.EISDIR, "Cannot write a file there: it is a "
                                    "directory", str(path))
    if not directory.exists():
        raise OSError(errno.ENOENT, f"Cannot write a file there: the directory "
                                    f"{directory} does not exist", str(path))
    if not directory.is_dir():
        raise OSError(errno.ENOTDIR, f"Cannot write a file there: {directory} "
                                     f"is not a directory", str(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"Cannot write a file there: no permission "
                                    f"to write in {directory}", str(path))
    return target


@contextmanager
def replacing(path):
    """Write a file that replaces ``path`` atomically.

    Yields a binary file opened on a temporary file in the same directory.
    When the block ends, the file is flushed to disk and renamed onto
    ``path`` (keeping the mode of the file it replaces), then the rename is
    made durable: a reader, or a crash at any moment, sees the old file or
    the new one, never a part. If the block raises (``KeyboardInterrupt``
    included), the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        The file to write; checked with :func:`check_writable` first.

    Raises
    ------
    OSError
        As :func:`check_writable`, or when the temporary file cannot be
        created or written; the error names ``path``.
    """
    target = check_writable(path)
    descriptor, temporary = _create_next_to(target, path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _copy_mode(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(target.parent)


def _create_next_to(target, path):
    """Create a new, empty hidden file in ``target``'s directory.

    Its mode is what ``open(target, "w")`` would give a new file (the umask
    applies), not the owner-only mode of :func:`tempfile.mkstemp`.
    """
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return os.open(temporary, flags, 0o666), temporary
    except OSError as error:
        raise OSError(error.errno, f"Cannot write a file there: {error.strerror} "
                                   f"(creating a file in {target.parent})",
                      str(path)) from error


def _copy_mode(source, destination):
    with suppress(FileNotFoundError):
        os.chmod(destination, stat.S_IMODE(os.stat(source).st_mode))
