"""Training across processes launched by ``torchrun``: :func:`fit_distributed`.

This module sits above the estimator: it starts the process group, runs an
ordinary ``fit`` on the resulting :class:`~.cluster.Cluster` (what each rank
trains and how the ranks meet is :mod:`.cluster`'s), and closes the group.
"""

import datetime
import os

import torch.distributed as dist

from .cluster import DEFAULT_TIMEOUT, Cluster, NotRankZero, running_on
from .estimator import TorchRecommender
from .runtime import resolve_device


def environment_cluster(backend=None, device=None, timeout=DEFAULT_TIMEOUT):
    """The :class:`~.cluster.Cluster` of a ``torchrun`` launch, its process group started.

    Reads ``RANK``, ``WORLD_SIZE`` (and ``MASTER_ADDR``, ``MASTER_PORT``,
    set by ``torchrun``). The backend is gloo on the CPU, nccl for CUDA
    devices, unless given.

    Raises
    ------
    ValueError
        If the environment is not that of a ``torchrun`` launch.
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing and not dist.is_initialized():
        raise ValueError(
            f"Not started by torchrun: the environment lacks {missing}. Launch "
            f"with e.g. 'torchrun --nproc_per_node=2 -m skcrnn fit ...'.")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return Cluster(dist.get_rank(), dist.get_world_size(), timeout)


def fit_distributed(estimator, X, *, backend=None, timeout=DEFAULT_TIMEOUT):
    """Fit a torch recommender across the processes of a ``torchrun`` launch.

    Every process calls it with the same estimator parameters and the same
    events. The users are sharded across the processes, balanced by event
    count; each process trains its users' sequences and keeps their
    per-user parameters and optimizer statistics, while the item and shared
    parameters are replicated and their gradients summed after every step.
    With the same ``random_state``, the result is that of ``estimator.fit(X)``
    in one process, up to the order of floating-point sums. Rank 0 then
    gathers the per-user rows into an ordinary fitted estimator.

    Parameters
    ----------
    estimator : TorchRecommender
        E.g. :class:`~skcrnn.CollaborativeGRURecommender`.
    X : pandas.DataFrame
        The events, the same on every process.
    backend : {"gloo", "nccl"}, optional
        By default gloo on the CPU, nccl when the estimator's device is CUDA
        (each process then uses ``cuda:LOCAL_RANK`` when ``device="auto"``
        or ``"cuda"``).
    timeout : float, default=300
        Seconds a process waits for the others at a collective operation: a
        process that dies makes the others raise ``RuntimeError`` after at
        most this long.

    Returns
    -------
    estimator or None
        The fitted estimator on rank 0, None on the other ranks (whose
        ``estimator`` is left unfitted).

    Raises
    ------
    ValueError
        Before any training, if the process is not part of a ``torchrun``
        launch, if there are more processes than users, if the processes'
        events or parameters differ, or if the estimator has a
        ``checkpoint_dir`` (not supported across processes).
    RuntimeError
        If another process dies or times out during training.
    """
    if not isinstance(estimator, TorchRecommender):
        raise TypeError(f"fit_distributed trains the torch recommenders; got "
                        f"{type(estimator).__name__}.")
    if estimator.checkpoint_dir is not None:
        raise ValueError("checkpoint_dir is not supported by fit_distributed; "
                         "set checkpoint_dir=None.")
    device = resolve_device(estimator.device)
    owns_group = not dist.is_initialized()
    cluster = environment_cluster(backend, device, timeout)
    if device.type == "cuda" and device.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        estimator = estimator.set_params(device=f"cuda:{local_rank}")
    finished = False
    try:
        with running_on(cluster):
            estimator.fit(X)
        finished = True
    except NotRankZero:
        finished = True
        return None
    finally:
        if owns_group:
            _close_group(cluster, wait_for_others=finished)
    return estimator


def _close_group(cluster, wait_for_others):
    """Destroy the process group that :func:`fit_distributed` started.

    A gloo group left to the interpreter's exit can abort the process
    ("terminate called without an active exception"), so it is closed here.
    After a successful fit, the ranks first meet at a barrier, so that no
    rank tears its connections down while another still reads from them;
    after a failure the others may never arrive, so there is no barrier.
    """
    try:
        if wait_for_others:
            cluster.barrier()
    finally:
        dist.destroy_process_group()
