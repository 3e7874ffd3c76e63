"""The compiled loops of the training recurrence (``csrc/recurrence.cpp``).

They are compiled with torch's C++ extension builder the first time a fit
needs them (about half a minute, once per machine: the library is cached in
torch's extensions directory, ``TORCH_EXTENSIONS_DIR``). Where that cannot
be done (no C++ compiler, no ninja, no Python headers, a non-x86 compiler
that refuses the source), :func:`load` returns None and training runs the
same loops in Python (:mod:`._fused`), about a fifth slower per epoch;
:func:`status` says which and why.
"""

import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "recurrence.cpp"
NAME = "skcrnn_recurrence"

#: Use the compiled loops where they build (False: always the Python loops).
#: ``SKCRNN_NATIVE=0`` (or ``false``, ``no``, ``off``) in the environment sets
#: it to False at import.
ENABLED = os.environ.get("SKCRNN_NATIVE", "1").strip().lower() not in {
    "0", "false", "no", "off"}

#: A build lock older than this is left by a build that was killed (torch's
#: builder waits on a lock forever); a real build takes well under a minute.
STALE_LOCK_SECONDS = 600

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_built = {}


def load():
    """The compiled module, built on first call; None where it cannot be."""
    if not ENABLED:
        return None
    if "module" not in _built:  # (called twice a chunk: no lock once built)
        with _lock:
            if "module" not in _built:
                module, _built["error"] = _build()
                _built["module"] = module  # last: it marks the build as done
    return _built["module"]


def ready():
    """Whether the compiled loops need no more work: loaded, failed or disabled."""
    return not ENABLED or "module" in _built


def status():
    """How the recurrence runs here: ``"compiled"`` or ``"python (why)"``."""
    if not ENABLED:
        return "python (compiled loops disabled)"
    if load() is not None:
        return "compiled"
    return f"python ({_built['error']})"


def _build():
    try:
        from torch.utils import cpp_extension
        _remove_stale_lock(cpp_extension)
        with _ninja_on_path():
            module = cpp_extension.load(
                name=NAME, sources=[str(SOURCE)],
                extra_cflags=["-O3", "-fopenmp-simd", "-fno-trapping-math",
                              "-fno-math-errno"],
                verbose=False)
    except Exception as error:  # noqa: BLE001 - any build failure: Python loops
        lines = str(error).strip().splitlines()
        reason = type(error).__name__ + (f": {lines[0]}" if lines else "")
        _logger.info("skcrnn: the compiled recurrence is unavailable (%s); "
                     "training runs the Python loops.", reason)
        return None, reason
    return module, None


def _remove_stale_lock(cpp_extension):
    """Delete the lock of a build that was killed, so that loading does not hang."""
    try:  # (a private helper of torch's: where it is gone, nothing is removed)
        lock = Path(cpp_extension._get_build_directory(NAME, verbose=False)) / "lock"
        age = time.time() - lock.stat().st_mtime
    except (AttributeError, OSError, TypeError):  # no lock: nothing to do
        return
    if age > STALE_LOCK_SECONDS:
        _logger.info("skcrnn: removing the stale build lock %s (%.0f s old)", lock, age)
        lock.unlink(missing_ok=True)


@contextmanager
def _ninja_on_path():
    """Make the ``ninja`` of the installed Python package findable by the builder.

    torch runs ``ninja`` from the PATH, which does not hold a virtual
    environment's ``bin`` folder unless it is activated.
    """
    saved = os.environ.get("PATH")
    try:
        import ninja
        os.environ["PATH"] = os.pathsep.join(filter(None, [ninja.BIN_DIR, saved]))
    except (ImportError, AttributeError):
        pass
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved
