"""Where and how torch computes: the device, the CPU threads, the seeds.

Each is decided in one place, when a model fits (or loads), never at import:

- :func:`resolve_device` turns the ``device`` parameter into a torch device
  and says clearly when this machine lacks it;
- :func:`cpu_threads` is the thread policy: torch's intra-op threads follow
  scikit-learn's ``n_jobs`` convention, and the caller's setting is restored
  afterwards, on error too; inside it, :func:`small_kernels` runs loops of
  tiny kernels (a recurrence's steps) on one thread;
- :func:`draw_seeds` draws the two seeds of a fit (weights, batch order).
"""

import os
import threading
from contextlib import contextmanager

import torch
from sklearn.utils import check_random_state


def resolve_device(spec):
    """The torch device named by ``spec`` ("auto", "cpu", "cuda", "cuda:1", ...).

    Raises
    ------
    ValueError
        If ``spec`` names no device, or one this machine does not have.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={spec!r} is not a device name; use 'auto', 'cpu', "
                         f"'cuda' or 'cuda:N'.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r} but CUDA is not available on this "
                             f"machine; use device='auto' or 'cpu'.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={spec!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s).")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={spec!r} but MPS is not available on this "
                             f"machine; use device='auto' or 'cpu'.")
        return device
    raise ValueError(f"device={spec!r} is not supported; use 'auto', 'cpu', 'cuda' "
                     f"or 'cuda:N'.")


def usable_device(spec):
    """``resolve_device(spec)``, or the CPU when this machine lacks it."""
    try:
        return resolve_device(spec)
    except ValueError:
        return torch.device("cpu")


def draw_seeds(random_state):
    """Two seeds for a fit: the weights' generator and the batch order's."""
    seeds = check_random_state(random_state).randint(0, 2 ** 31 - 1, size=2)
    return [int(seed) for seed in seeds]


def n_threads(n_jobs):
    """How many CPU threads torch uses for ``n_jobs`` (scikit-learn's meaning).

    ``None`` means 1, unless a :func:`joblib.parallel_config` context says
    otherwise; ``-1`` all processors; ``-2`` all but one, and so on. One
    thread is the default because a recurrent step's kernels are tiny: on a
    machine where another process is busy, several torch threads wait for
    each other at every kernel (an epoch 10 to 25 times slower, measured with
    ``benchmarks/rnn_speed.py --contention``), and under joblib workers each
    worker taking every core would oversubscribe them.
    """
    from joblib import effective_n_jobs
    return max(1, min(int(effective_n_jobs(n_jobs)), os.cpu_count() or 1))


class _ThreadPolicy:
    """Set torch's CPU thread count for a block, then restore the caller's.

    torch's setting is global to the process: when fits run in several Python
    threads at once, the first one in saves the caller's count and sets its
    own, and the last one out restores the saved count.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = None

    @contextmanager
    def __call__(self, count):
        with self._lock:
            if self._inside == 0:
                self._saved = torch.get_num_threads()
                if count != self._saved:
                    torch.set_num_threads(count)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and torch.get_num_threads() != self._saved:
                    torch.set_num_threads(self._saved)


_policy = _ThreadPolicy()
_small = _ThreadPolicy()


def cpu_threads(n_jobs):
    """Context manager: torch computes with :func:`n_threads` ``(n_jobs)`` threads.

    The caller's count is restored on exit, also when the block raises.
    """
    return _policy(n_threads(n_jobs))


@contextmanager
def small_kernels(tensor):
    """Run the enclosed CPU kernels on one thread, then restore the count.

    For loops of tiny kernels, such as a recurrence's steps (20 x 32 x 96
    products): a second thread costs more to wake than it saves. Large
    kernels outside keep the threads of :func:`cpu_threads`. Does nothing
    for tensors on other devices.
    """
    if tensor.device.type != "cpu":
        yield
        return
    with _small(1):
        yield

