"""The processes of a training run, and what training keeps to each of them.

A fit runs on a :class:`Cluster`: one process is a cluster of one (the
default, :func:`current_cluster` outside :func:`~skcrnn.fit_distributed`),
and ``torchrun`` starts a cluster of several ranks (:mod:`.launch`). The fit
path and the training loop are written once for both: every collective of a
cluster of one returns at once, and the :class:`Shard` of a cluster of one
is :class:`WholeShard`, which hands everything back unchanged.

Across several ranks, users are sharded, balanced by event count
(:func:`shard_users`): a rank keeps only its users' rows of the per-user
parameters (and their optimizer statistics), and trains only its users'
sequences (:class:`RankShard`). The items' and the shared parameters are
replicated: after every step the ranks sum their gradients
(:meth:`Cluster.step_reducer`), so every replica takes the same step.

The steps are those of a single process: each rank builds the same global
batches (users of similar lengths together, in the same shuffled order),
keeps the rows of its users (:meth:`~.batching.Batch.restricted`, whose loss
is still divided by the global batch's slots), and the ranks sum the
gradients of the shared parameters after each step. With the same seed,
``N`` processes therefore compute what one process does, up to the order of
floating-point sums. A rank that runs out of steps in a batch before the
others takes part in their sums with zero gradients: the sum also carries a
flag, "this rank took a step", and a batch ends when no rank did.

When training ends, rank 0 gathers the per-user rows from every rank into
an ordinary fitted network (:meth:`RankShard.gather`); the other ranks raise
:class:`NotRankZero`. Every collective has the cluster's timeout: a rank
that dies makes the others fail with a clear ``RuntimeError``.
"""

import contextlib
import contextvars

import numpy as np
import torch
import torch.distributed as dist

from .._events import Sequences
from .optim import user_parameters

#: Seconds a collective operation waits for the other ranks by default.
DEFAULT_TIMEOUT = 300.0


def shard_users(lengths, world_size):
    """The rank of each user: balanced event counts (longest users first).

    Greedy: users in decreasing number of events, each to the rank with the
    fewest events so far (ties to the lower rank). Deterministic, so every
    rank computes the same assignment.

    Parameters
    ----------
    lengths : ndarray of int
        Events of each user.
    world_size : int

    Returns
    -------
    ndarray of int64
        The rank of each user.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    owner = np.empty(len(lengths), dtype=np.int64)
    load = np.zeros(world_size, dtype=np.int64)
    for user in np.argsort(-lengths, kind="stable"):
        rank = int(np.argmin(load))
        owner[user] = rank
        load[rank] += lengths[user]
    return owner


class NotRankZero(Exception):
    """Raised inside ``fit`` on the ranks other than 0 once training is done.

    The fit is all or nothing: on those ranks it leaves the estimator as it
    was, and :func:`~skcrnn.fit_distributed` returns None there.
    """


class Cluster:
    """This process's place among the ranks, and the collectives training uses.

    ``Cluster()`` is a single process, a cluster of one: its collectives
    return at once without a process group.

    Parameters
    ----------
    rank, world_size : int
    timeout : float
        Seconds (the process group's timeout; kept for messages).
    """

    def __init__(self, rank=0, world_size=1, timeout=DEFAULT_TIMEOUT):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.timeout = float(timeout)

    def __repr__(self):
        return f"Cluster(rank={self.rank}, world_size={self.world_size})"

    @property
    def alone(self):
        """Whether this is a cluster of one (no other process to meet)."""
        return self.world_size == 1

    # ------------------------------------------------------------ sharding
    def shard(self, lengths):
        """The codes of this rank's users (:func:`shard_users`).

        Raises
        ------
        ValueError
            If there are more ranks than users with events.
        """
        n_users = int((np.asarray(lengths) > 0).sum())
        if n_users < self.world_size:
            raise ValueError(
                f"{self.world_size} processes but only {n_users} user(s) with "
                f"events: every process needs at least one user; launch at most "
                f"{n_users} processes.")
        return np.flatnonzero(shard_users(lengths, self.world_size) == self.rank)

    def start(self, lengths, fingerprint):
        """This process's shard of the users with events ``lengths``.

        A cluster of one gets a :class:`WholeShard`. Several ranks first
        check that they agree on ``fingerprint()`` (the events and
        parameters, computed only then), and each gets its
        :class:`RankShard`.
        """
        if self.alone:
            return WholeShard(self)
        self.check_same(fingerprint(), "events and parameters")
        return RankShard(self, self.shard(lengths), len(lengths))

    # --------------------------------------------------------- collectives
    def _collective(self, what, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except RuntimeError as error:
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: {what} failed; another "
                f"process probably died or stopped answering (timeout "
                f"{self.timeout:g} s). {type(error).__name__}: {error}") from error

    def barrier(self):
        if not self.alone:
            self._collective("waiting for the other processes", dist.barrier)

    def all_gather_object(self, value):
        if self.alone:
            return [value]
        gathered = [None] * self.world_size
        self._collective("exchanging values", dist.all_gather_object, gathered, value)
        return gathered

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank."""
        if self.alone:
            return value
        box = [value]
        self._collective("broadcasting from rank 0", dist.broadcast_object_list, box,
                         src=0)
        return box[0]

    def gather_object(self, value):
        """Every rank's ``value`` on rank 0 (a list by rank); None elsewhere."""
        if self.alone:
            return [value]
        gathered = [None] * self.world_size if self.rank == 0 else None
        self._collective("gathering on rank 0", dist.gather_object, value, gathered,
                         dst=0)
        return gathered

    def sum(self, values):
        """Sums over the ranks of a few floats (float64)."""
        values = np.asarray(values, dtype=np.float64)
        if self.alone:
            return values
        tensor = torch.as_tensor(values)
        self._collective("summing over the ranks", dist.all_reduce, tensor)
        return tensor.numpy()

    def check_same(self, fingerprint, what):
        """Raise ``ValueError`` on every rank if the ranks' ``fingerprint`` differ."""
        fingerprints = self.all_gather_object(fingerprint)
        different = [rank for rank, value in enumerate(fingerprints)
                     if value != fingerprints[0]]
        if different:
            raise ValueError(
                f"The processes do not have the same {what}: rank(s) {different} "
                f"differ from rank 0. Every process must read the same events "
                f"with the same parameters.")

    def step_reducer(self, module):
        """``reduce(touched, took_step)``: a step's gradients summed over the ranks.

        The replicated parameters are those ``module`` does not index by
        user (see :func:`~.optim.user_parameters`). ``reduce`` returns
        whether any rank took a step (when none did, nothing was changed);
        for a cluster of one, whether this process did.
        """
        if self.alone:
            return lambda touched, took_step: took_step
        by_user = set(user_parameters(module))
        replicated = [(name, param) for name, param in module.named_parameters()
                      if name not in by_user]
        return lambda touched, took_step: self.reduce_step(replicated, touched,
                                                           took_step)

    def reduce_step(self, parameters, touched, took_step):
        """Sum a step's gradients of the replicated ``parameters`` over the ranks.

        Each parameter's gradient is either dense (``param.grad``) or, for
        rows read lazily (``touched[name] = (rows, leaf)``, see
        :mod:`.optim`), the gradient of those rows. The ranks sum dense
        gradients (zeros from a rank without one) and, for lazily read
        parameters, the gradients of the union of the rows they read, which
        is what one process reading the global batch reads: the optimizer
        then moves the same rows' statistics. A parameter no rank has a
        gradient for keeps none.

        Two collective sums: first which rows each rank read (one flag per
        row of each lazily read parameter) and what kind of gradient each
        parameter has; then the dense gradients and the gradients of the
        union's rows only. A step of the sampled softmax reads a few hundred
        of a large catalogue's rows, so the second sum carries those rows,
        not the whole item tables.

        Parameters
        ----------
        parameters : list of (str, Parameter)
            The replicated parameters, in the same order on every rank.
        touched : dict
            This rank's ``Rows.touched`` of the step (modified: replicated
            entries are replaced by the summed ones).
        took_step : bool
            Whether this rank took a step.

        Returns
        -------
        bool
            Whether any rank took a step; when not, nothing was changed.
        """
        reference = parameters[0][1]
        # a flag per row of every parameter with rows (the same on every rank)
        with_rows = [name for name, param in parameters if param.dim() >= 1]
        masks, flags = [], [float(took_step)]
        for name, param in parameters:
            if name in with_rows:
                mask = reference.new_zeros(param.shape[0])
                if name in touched:
                    mask[touched[name][0]] = 1.0
                masks.append(mask)
            flags += [float(param.grad is not None), float(name in touched)]
        head = torch.cat(masks + [torch.tensor(flags, dtype=reference.dtype,
                                               device=reference.device)])
        self._collective("exchanging the rows read", dist.all_reduce, head)
        summed_flags = head[len(head) - len(flags):].tolist()
        if summed_flags[0] == 0:
            return False
        union, offset = {}, 0
        for index, (name, param) in enumerate(parameters):
            if name not in with_rows:
                continue
            if summed_flags[2 + 2 * index]:  # some rank read rows of it
                union[name] = torch.nonzero(head[offset:offset + param.shape[0]]).flatten()
            offset += param.shape[0]
        pieces = []
        for name, param in parameters:
            if name in union:
                piece = param.new_zeros((len(union[name]),) + param.shape[1:])
                if name in touched and touched[name][1].grad is not None:
                    rows, leaf = touched[name]
                    piece.index_add_(0, torch.searchsorted(union[name], rows), leaf.grad)
            else:
                piece = torch.zeros_like(param) if param.grad is None else param.grad
            pieces.append(piece)
        flat = torch.cat([piece.reshape(-1) for piece in pieces])
        self._collective("summing the gradients", dist.all_reduce, flat)
        offset = 0
        for index, ((name, param), piece) in enumerate(zip(parameters, pieces)):
            summed = flat[offset:offset + piece.numel()].view_as(piece)
            offset += piece.numel()
            has_dense, has_rows = summed_flags[1 + 2 * index:3 + 2 * index]
            param.grad = None
            touched.pop(name, None)
            if has_rows:
                touched[name] = (union[name], _Gradient(summed.clone()))
            elif has_dense:
                param.grad = summed.clone()
        return True


class _Gradient:
    """Stands in for a leaf of :class:`~.optim.Rows`: only its ``grad`` is read."""

    def __init__(self, grad):
        self.grad = grad


#: The cluster of the ``fit_distributed`` call running in this context.
_CURRENT = contextvars.ContextVar("skcrnn_cluster", default=None)


def current_cluster():
    """The cluster a fit runs on: that of a running ``fit_distributed``, else one process."""
    cluster = _CURRENT.get()
    return Cluster() if cluster is None else cluster


@contextlib.contextmanager
def running_on(cluster):
    """Context: fits started inside it run on ``cluster`` (:func:`current_cluster`)."""
    token = _CURRENT.set(cluster)
    try:
        yield cluster
    finally:
        _CURRENT.reset(token)


class WholeShard:
    """The shard of a cluster of one: every user, so each method hands back its input.

    It has the methods of :class:`RankShard`, the shard of one of several
    ranks, so that the fit path is written once.
    """

    def __init__(self, cluster=None):
        self.cluster = Cluster() if cluster is None else cluster

    def localize(self, network):
        return network

    def sequences(self, sequences):
        return sequences

    def users(self, per_user):
        return per_user

    def plan(self, batches, steps, n_steps):
        return batches, steps, n_steps

    def validation(self, validate, n_validated):
        return validate

    def gather(self, network, optimizer_state, new_network):
        return network, optimizer_state


class RankShard:
    """A rank's users and what training keeps to them.

    Parameters
    ----------
    cluster : Cluster
    owned : ndarray of int64
        This rank's users (global codes, increasing).
    n_users : int
        All users.
    """

    def __init__(self, cluster, owned, n_users):
        self.cluster = cluster
        self.owned = np.asarray(owned, dtype=np.int64)
        self.local_code = np.full(n_users, -1, dtype=np.int64)
        self.local_code[self.owned] = np.arange(len(self.owned))

    def localize(self, network):
        """Keep only this rank's rows of ``network``'s per-user parameters (in place)."""
        for name in user_parameters(network):
            parameter = network.get_parameter(name)
            rows = torch.as_tensor(self.owned, device=parameter.device)
            module, leaf = _owner_of(network, name)
            setattr(module, leaf, torch.nn.Parameter(
                parameter.detach().index_select(0, rows).clone(),
                requires_grad=parameter.requires_grad))
        return network

    def sequences(self, sequences):
        """This rank's users' sequences, numbered by local code."""
        mine = sequences.subset(self.owned)
        return Sequences(np.arange(len(self.owned), dtype=np.int64), mine.indptr,
                         mine.items)

    def users(self, per_user):
        """This rank's entries of a per-user array."""
        return per_user[self.owned]

    def plan(self, batches, steps, n_steps):
        """This rank's part of a training plan (see ``TorchRecommender._training_plan``).

        Its parts of the global ``batches`` (a list, or a callable of
        ``rng``); ``steps`` that yields no step for a part without rows (the
        rank still meets the others at each of their steps); the number of
        steps, unknown (None) once batches are cut.
        """
        def rank_steps(batch):
            return steps(batch) if len(batch.lengths) else iter(())

        def restrict(global_batches):
            for batch in global_batches:
                if not hasattr(batch, "restricted"):
                    raise ValueError(
                        f"fit_distributed cannot split batches of type "
                        f"{type(batch).__name__} between processes; this model "
                        f"trains in one process only.")
            return [batch.restricted(self.local_code) for batch in global_batches]
        if callable(batches):
            return (lambda rng: restrict(batches(rng))), rank_steps, None
        return restrict(batches), rank_steps, None

    def validation(self, validate, n_validated):
        """The mean over all ranks' users of ``validate``'s per-rank mean.

        ``n_validated`` is how many of this rank's users have held-out events
        (the users that ``validate`` averages over).
        """
        def global_loss():
            local = float(validate()) if n_validated else 0.0
            total, count = self.cluster.sum([local * n_validated, n_validated])
            return total / count
        return global_loss

    def gather(self, network, optimizer_state, new_network):
        """On rank 0: a full network with every rank's rows, and the full statistics.

        ``new_network()`` makes an uninitialized network at the full
        vocabularies (called on rank 0 only). The replicated parameters are
        rank 0's; each per-user parameter and its optimizer statistics get
        every rank's rows. The other ranks raise :class:`NotRankZero` once
        their rows are sent.
        """
        names = user_parameters(network)
        rows = {name: network.get_parameter(name).detach().cpu() for name in names}
        statistics = ({name: optimizer_state["state"][name] for name in names}
                      if optimizer_state is not None else None)
        parts = self.cluster.gather_object((self.owned, rows, statistics))
        if self.cluster.rank != 0:
            raise NotRankZero()
        full_network = new_network()
        state = None if optimizer_state is None else {
            "name": optimizer_state["name"], "state": dict(optimizer_state["state"])}
        with torch.no_grad():
            for name, parameter in full_network.named_parameters():
                if name not in names:
                    parameter.copy_(network.get_parameter(name))
                    continue
                for owned, part, _ in parts:
                    parameter[torch.as_tensor(owned, device=parameter.device)] = (
                        part[name].to(parameter.device))
                if state is not None:
                    state["state"][name] = _gathered_statistics(name, parts,
                                                                parameter.shape[0])
        return full_network, state


def _gathered_statistics(name, parts, n_rows):
    """The optimizer statistics of per-user parameter ``name``, all ranks' rows."""
    first = parts[0][2][name]
    full = {key: torch.zeros((n_rows,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
            for key, tensor in first.items()}
    for owned, _, statistics in parts:
        for key, tensor in statistics[name].items():
            full[key][torch.as_tensor(owned)] = tensor
    return full


def _owner_of(module, name):
    """The submodule that holds parameter ``name``, and its attribute name."""
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf
