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
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "recurrence.cpp"

#: Use the compiled loops where they build (False: always the Python loops).
#: The environment variable ``SKCRNN_NATIVE=0`` sets it to False at import.
ENABLED = os.environ.get("SKCRNN_NATIVE", "1") != "0"

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_built = {}


def load():
    """The compiled module, built on first call; None where it cannot be."""
    if not ENABLED:
        return None
    with _lock:
        if "module" not in _built:
            _built["module"], _built["error"] = _build()
    return _built["module"]


def ready():
    """Whether :func:`load` has already been called (built, loaded or failed)."""
    return "module" in _built


def status():
    """How the recurrence runs here: ``"compiled"`` or ``"python (why)"``."""
    if not ENABLED:
        return "python (compiled loops disabled)"
    if load() is not None:
        return "compiled"
    return f"python ({_built['error']})"


def _build():
    try:
        from torch.utils.cpp_extension import load as load_extension
        module = load_extension(name="skcrnn_recurrence", sources=[str(SOURCE)],
                                extra_cflags=["-O3", "-fopenmp-simd", "-fno-trapping-math",
                                              "-fno-math-errno"],
                                verbose=False)
    except Exception as error:  # noqa: BLE001 - any build failure: Python loops
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        _logger.info("skcrnn: the compiled recurrence is unavailable (%s); "
                     "training runs the Python loops.", reason)
        return None, reason
    return module, None
