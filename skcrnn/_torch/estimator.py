"""The base class of every torch-backed recommender.

:class:`TorchRecommender` owns, once for all neural models, what
:class:`~skcrnn._base.BaseRecommender` leaves to a model's ``_fit_sequences``
and persistence hooks:

- the device (:func:`.runtime.resolve_device`), the seeds, and the CPU
  thread policy (``n_jobs``, restored for the caller afterwards);
- the fit path: a run with early stopping on each user's last events, then
  (``refit=True``) a new network trained on all events for the best number
  of epochs, with a checkpoint that resumes a killed fit (:mod:`.checkpoint`);
- the training loop and its optimizer (:mod:`.loop`, :mod:`.optim`), whose
  final statistics are kept (``optimizer_state_``) for ``partial_fit``;
- ``partial_fit`` (``_learn_events``): the network grown for the new users
  and items along the rows it declares in ``row_indexed``, the optimizer's
  statistics with it, then the same training loop over the new events only,
  each user continuing where its history left off;
- ``warm_start``: a ``fit`` of a fitted model that starts from its network
  and optimizer statistics, carried to the new vocabularies by label
  (``_warm_start_point``);
- saving, loading (onto any device) and pickling the fitted network.

A model is a subclass that supplies its network and its batches:

``_new_network()``
    an uninitialized ``torch.nn.Module`` with ``reset_parameters(generator)``,
    a ``config`` dict that rebuilds it (``_network_type(**config)``) and
    ``row_indexed`` (see :mod:`.optim`);
``_training_plan(network, sequences, n_train, device, continuation=False)``
    the training batches of each user's first ``n_train`` events (a list,
    or a callable that draws each epoch's batches: see
    :func:`~.loop.train`), the callable that yields a batch's
    :class:`~.loop.Step` s, and the number of steps per epoch; with
    ``continuation``, the sequences continue the users' histories
    (``partial_fit``) and each user's training starts where its history
    left off;
``_validation(network, sequences, n_train)``
    the validation loss of the network's current weights on the events
    after the first ``n_train`` of each user: a :class:`.validation.Validation`
    (held-out events, per-user mean) whose subclass computes those events'
    log-probabilities;
``_network_log_proba(sequences, prefixes, targets)``
    scoring with the fitted ``network_`` (see ``BaseRecommender._log_proba``);
``_after_fit(sequences)``, optional
    fitted attributes computed from the trained network (listed in
    ``_fitted_tensors`` when they are tensors, so that they are saved and
    moved with the network);
``_append_events(continuation)``, optional
    :meth:`~skcrnn._base.BaseRecommender.update`'s hook, which
    ``partial_fit`` also calls once the network has learned the new events;
``_initial_rows(name, known, n_new, n_seen)``, optional
    the rows of new users or items of a row-indexed parameter (by default
    the mean of the known rows).
"""

import copy
import hashlib
import os
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from tqdm.auto import tqdm

from .. import _encoding
from .._base import BaseRecommender
from .batching import validation_sizes
from .checkpoint import Checkpoint, fingerprint
from .cluster import WholeShard, current_cluster
from .loop import train
from .optim import Optimizer, grown_state_dict
from .repeats import check_repeat_bias, seen_mask, with_repeat_bias
from .runtime import cpu_threads, draw_seeds, resolve_device, usable_device

#: Parameters that may differ between a fit and the fit that resumes it: they
#: do not change what training computes (a resumed run may also use another
#: device or thread count; results are then equal up to floating-point
#: rounding).
NOT_IN_FINGERPRINT = frozenset({"verbose", "device", "n_jobs", "checkpoint_dir",
                                "user_col", "item_col", "time_col",
                                "handle_unknown", "partial_epochs", "replay_epochs",
                                "repeat_bias", "warm_start"})


class TorchRecommender(BaseRecommender):
    """Base class of the recommenders that train a torch network.

    Not meant to be instantiated: see the module's docstring for what a
    subclass supplies, and :class:`~skcrnn.CollaborativeGRURecommender` for
    the parameters (this class validates those they share).
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [StrOptions({"rmsprop", "adam"})],
        "rho": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "refit": ["boolean"],
        "warm_start": ["boolean"],
        "partial_epochs": [Interval(Integral, 0, None, closed="left"),
                           StrOptions({"auto"})],
        "replay_epochs": [Interval(Integral, 0, None, closed="left"),
                          StrOptions({"auto"})],
        "repeat_bias": [Interval(Real, None, None, closed="neither")],
        "device": [str],
        "n_jobs": [None, Integral],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "checkpoint_dir": [None, str, os.PathLike],
    }

    #: See BaseRecommender: these take effect at once after fit.
    _scoring_time_params = BaseRecommender._scoring_time_params | {
        "repeat_bias", "learning_rate", "optimizer", "rho", "epsilon",
        "batch_size", "max_epochs", "validation_fraction",
        "n_iter_no_change", "refit", "partial_epochs", "replay_epochs",
        "device", "n_jobs", "random_state", "verbose", "checkpoint_dir",
        "warm_start"}

    #: Fitted tensor attributes besides ``network_``: attribute -> entry of
    #: the saved file. They are saved, loaded and pickled on the CPU, and
    #: moved to ``device_`` with the network.
    _fitted_tensors = {}

    # ------------------------------------------------------ subclass steps
    @abstractmethod
    def _new_network(self):
        """An uninitialized network for the fitted vocabularies."""

    @classmethod
    @abstractmethod
    def _network_type(cls):
        """The network's class (rebuilt from its ``config`` on load)."""

    @abstractmethod
    def _training_plan(self, network, sequences, n_train, device):
        """``(batches, steps, n_steps)`` of each user's first ``n_train`` events."""

    @abstractmethod
    def _validation(self, network, sequences, n_train):
        """The :class:`.validation.Validation` of the events after ``n_train``."""

    @abstractmethod
    def _network_log_proba(self, sequences, prefixes, targets=None):
        """``BaseRecommender._log_proba`` with the fitted ``network_``."""

    def _after_fit(self, sequences):
        """Set fitted attributes that derive from the trained ``network_``."""

    def _initial_rows(self, name, known, n_new, n_seen):
        """Rows of ``n_new`` new users or items of the row-indexed parameter ``name``.

        By default the mean of the ``known`` rows (in double precision,
        rounded once to their type): a newcomer starts as the average of
        those the model knows.

        Parameters
        ----------
        name : str
            The parameter's name in the network.
        known : Tensor
            Its rows in ``network_``, those of the known users or items.
        n_new : int
            Rows to make.
        n_seen : int
            Events in the histories before the new ones.

        Returns
        -------
        Tensor of shape (n_new, *known.shape[1:])
        """
        mean = known.mean(dim=0, dtype=torch.float64).to(known.dtype)
        return mean.expand((n_new,) + tuple(known.shape[1:]))

    # -------------------------------------------------------------- fitting
    def _check_fit_params(self):
        resolve_device(self.device)
        if self.n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning; use None, a positive "
                             "count, or -1 for all processors.")
        if self.checkpoint_dir is not None:
            _check_directory(self.checkpoint_dir, "checkpoint_dir")

    def fit(self, X, y=None):
        """Learn from the events in ``X``.

        The fit is all or nothing: if it raises (bad data found late, a
        diverging optimizer, ``KeyboardInterrupt``), the recommender is left
        exactly as it was before the call, fitted or not.

        With ``warm_start=True`` on a fitted model, training starts from the
        model's network and optimizer statistics instead of a new
        initialisation (scikit-learn's ``warm_start``). The vocabularies and
        histories are those of ``X``, as in any fit: an item or user that
        the model knows keeps its rows (found by label), a new one gets the
        rows that :meth:`partial_fit` would give it, and the rows of items
        and users absent from ``X`` are dropped. Training then runs as a
        cold fit does: validation split, early stopping and, with
        ``refit=True``, a refit on all events that starts from the same warm
        weights. Otherwise (``warm_start=False``, or an unfitted model) the
        fit starts afresh.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns.
        y : None
            Ignored; present for scikit-learn's API.

        Returns
        -------
        self : object
            The fitted recommender.

        Raises
        ------
        ValueError
            With ``warm_start=True`` on a fitted model, if a fit-time
            parameter (``docs/parameters.rst``) changed since the model was
            fitted: the network cannot continue at another shape. Set it
            back, or set ``warm_start=False`` for a fit from scratch. Also
            raised by a warm fit under :func:`~skcrnn.fit_distributed`.
        """
        self._validate_params()
        if self._warm():
            self._check_warm_params()
        return super().fit(X, y)

    def _warm(self):
        """Whether the next ``fit`` starts from this model (``warm_start``)."""
        return bool(self.warm_start) and hasattr(self, "network_")

    def _check_warm_params(self):
        """Raise ``ValueError`` if a fit-time parameter changed since ``fit``."""
        changed = self._changed_fit_time_params()
        if changed:
            name, fitted, value = changed[0]
            others = ("" if len(changed) == 1 else
                      f" (and {', '.join(n for n, _, _ in changed[1:])})")
            raise ValueError(
                f"{type(self).__name__}: warm_start=True continues the fitted "
                f"network, but {name}={value!r} was set after fit, and the model "
                f"was fitted with {name}={fitted!r}{others}; it is a fit-time "
                f"parameter, which the network cannot continue from. Set it "
                f"back with set_params({name}={fitted!r}), or set "
                f"warm_start=False to fit from scratch.")

    def _unfitted_copy(self):
        """``fit``'s staging copy; a warm fit's also holds the fitted model.

        The fitted model (a shallow copy: its objects are only read) is
        ``_warm_from`` until ``_fit_sequences`` takes it.
        """
        staged = super()._unfitted_copy()
        vars(staged).pop("_warm_from", None)
        if self._warm():
            staged._warm_from = self._shallow_copy()
        return staged

    def _fit_sequences(self, sequences):
        previous = vars(self).pop("_warm_from", None)
        device = resolve_device(self.device)
        with cpu_threads(self.n_jobs):
            cluster = current_cluster()
            start = None
            if previous is not None:
                if not cluster.alone:
                    raise ValueError(
                        f"warm_start=True cannot continue a fitted model under "
                        f"fit_distributed (its {cluster.world_size} processes "
                        f"start from new networks); set warm_start=False, or "
                        f"fit in one process.")
                start = self._warm_start_point(previous)
            shard = cluster.start(sequences.lengths,
                                  lambda: self._fingerprint(sequences, start))
            network = self._fit_network(sequences, device, shard, start)
            # a rank other than 0 of several stops here (NotRankZero)
            network, self.optimizer_state_ = shard.gather(
                network, self.optimizer_state_,
                lambda: self._new_network().to(device))
            self.network_ = _frozen(network)
            self.device_ = str(device)
            self.partial_history_ = []
            self._after_fit(sequences)

    def _fingerprint(self, sequences, start=None):
        """What this fit's training depends on (:func:`.checkpoint.fingerprint`).

        A warm fit's also holds ``warm_start``, a digest of the weights and
        statistics it starts from (``start``, a :class:`_WarmStart`): its
        checkpoint resumes only a warm fit from the same model.
        """
        params = {name: value for name, value in self.get_params(deep=False).items()
                  if name not in NOT_IN_FINGERPRINT}
        result = fingerprint(params, sequences, self.n_items_)
        if start is not None:
            result["warm_start"] = start.digest()
        return result

    def _warm_start_point(self, previous):
        """The weights and optimizer statistics that a warm fit starts from.

        ``previous`` is the fitted model; ``self`` has the vocabularies of
        the new fit. The previous network is first grown, as ``partial_fit``
        grows it (:meth:`_grown`: the known rows, ``_initial_rows`` for the
        users and items it does not know, zero statistics for them), to the
        previous vocabularies followed by the new labels; the rows of every
        row-indexed parameter, and of its statistics, are then taken in the
        order of the new vocabularies (those of labels absent from the new
        events are dropped).

        Returns
        -------
        _WarmStart
            On the CPU.
        """
        grown = previous._shallow_copy()
        new = {}
        for name, labels in (("classes_", self.classes_), ("users_", self.users_)):
            old = getattr(previous, name)
            unknown = pd.Index(old).get_indexer(labels) < 0
            setattr(grown, name, _encoding.grown(old, labels[unknown]))
            new[name] = pd.Index(getattr(grown, name)).get_indexer(labels)
        grown.n_items_, grown.n_users_ = len(grown.classes_), len(grown.users_)
        with torch.no_grad():
            network, optimizer_state = grown._grown(len(previous._history.items))
        rows = {"item": torch.as_tensor(new["classes_"]),
                "user": torch.as_tensor(new["users_"])}
        row_indexed = network.row_indexed

        def taken(name, tensor):
            tensor = tensor.detach().cpu()
            if name in row_indexed:
                return tensor.index_select(0, rows[row_indexed[name]])
            return tensor.clone()

        state = {name: taken(name, tensor)
                 for name, tensor in network.state_dict().items()}
        if optimizer_state is not None:
            optimizer_state = {
                "name": optimizer_state["name"],
                "state": {name: {key: taken(name, tensor)
                                 for key, tensor in statistics.items()}
                          for name, statistics in optimizer_state["state"].items()}}
        return _WarmStart(state, optimizer_state)

    def _fit_network(self, sequences, device, shard, start=None):
        """Early stopping, then the optional refit; the trained network.

        ``shard`` is this process's part of the fit (:mod:`.cluster`): in a
        cluster of one, every user; under ``fit_distributed``, this rank's,
        and the network then holds the per-user parameters of its users only.
        ``start`` (a :class:`_WarmStart`) is where both phases of a warm fit
        start; None starts each from a new initialisation.
        """
        seeds = shard.cluster.broadcast_object(draw_seeds(self.random_state))
        checkpoint, record = self._open_checkpoint(sequences, start)
        if record is not None:
            seeds = record["seeds"]  # those of the fit that wrote it
        lengths = sequences.lengths
        n_train = lengths - validation_sizes(lengths, self.validation_fraction)
        if record is not None and record["phase"] == 2:
            if self.verbose:
                tqdm.write(f"{checkpoint} is of the refit: the run with "
                           f"validation is done")
            self.history_ = [dict(entry) for entry in record["first_history"]]
            self.best_epoch_ = record["first_best_epoch"]
        else:
            network, self.history_, self.best_epoch_, self.optimizer_state_ = (
                self._train(sequences, n_train, self.max_epochs, seeds, device,
                            shard, _phase(checkpoint, 1, seeds, record), start))
        self.n_iter_ = len(self.history_)
        self.refit_history_ = None
        if self.refit and self.best_epoch_ is not None:
            if self.verbose:
                tqdm.write(f"refit on all events for {self.best_epoch_} epoch(s)")
            network, self.refit_history_, _, self.optimizer_state_ = self._train(
                sequences, lengths, self.best_epoch_, seeds, device, shard,
                _phase(checkpoint, 2, seeds, record, first_history=self.history_,
                       first_best_epoch=self.best_epoch_), start)
        if checkpoint is not None:
            checkpoint.remove()
        return network

    def _open_checkpoint(self, sequences, start=None):
        """The fit's :class:`Checkpoint` and the record it resumes from.

        ``(None, None)`` without ``checkpoint_dir``; the record is None when
        there is no checkpoint yet.
        """
        if self.checkpoint_dir is None:
            return None, None
        checkpoint = Checkpoint(self.checkpoint_dir, type(self).__name__,
                                self._fingerprint(sequences, start))
        return checkpoint, checkpoint.read()

    def _train(self, sequences, n_train, max_epochs, seeds, device, shard,
               checkpoint=None, start=None):
        """Train a new network on each user's first ``n_train`` events.

        The events after them, if any, are the validation events. The same
        ``seeds`` give the same initial weights and batch orders; a warm fit
        (``start``, a :class:`_WarmStart`) starts from its weights and
        optimizer statistics instead. The network keeps the rows of
        ``shard``'s users only and validates on them, the loss averaged over
        all ranks' users.

        Returns the network, its history, its best epoch (None without
        validation) and the optimizer's final statistics.
        """
        optimizer_state = None
        if start is None:
            generator = torch.Generator().manual_seed(int(seeds[0]))
            network = self._new_network().reset_parameters(generator)
        else:
            network = self._new_network()
            network.load_state_dict(start.network_state)
            optimizer_state = start.optimizer_state
        network = shard.localize(network.to(device))
        validate = None
        if (sequences.lengths > n_train).any():
            mine, local = shard.users(n_train), shard.sequences(sequences)
            validate = shard.validation(self._validation(network, local, mine),
                                        int((local.lengths > mine).sum()))
        history, best_epoch, optimizer_state = self._run_epochs(
            network, sequences, n_train, max_epochs,
            np.random.default_rng(int(seeds[1])), device, shard, validate=validate,
            checkpoint=checkpoint, optimizer_state=optimizer_state)
        return network, history, best_epoch, optimizer_state

    def _run_epochs(self, network, sequences, n_train, max_epochs, rng, device, shard,
                    *, validate=None, checkpoint=None, optimizer_state=None,
                    continuation=False, start_loss=None):
        """Train ``network`` in place with :func:`~.loop.train`.

        Parameters
        ----------
        network : torch.nn.Module
        sequences : Sequences
        n_train : ndarray of int
            Each group's training events (its first ones).
        max_epochs : int
        rng : numpy.random.Generator
            Shuffles the batches.
        device : torch.device
        shard : WholeShard or RankShard
            This process's users (:mod:`.cluster`): the global batches of
            ``sequences`` are cut to them (``network`` holds their rows
            only) and the ranks sum their gradients.
        validate : callable or None
            The validation loss, for early stopping.
        checkpoint : object or None
            See :func:`~.loop.train`.
        optimizer_state : dict or None
            Statistics of :meth:`~.optim.Optimizer.state_dict` to start from;
            None starts from zero.
        continuation : bool
            The sequences continue the users' histories (see
            ``_training_plan``).
        start_loss : float, optional
            The validation loss before the first epoch (see
            :func:`~.loop.train`).

        Returns
        -------
        history : list of dict
        best_epoch : int or None
        optimizer_state : dict
            The optimizer's statistics after the last epoch, on the CPU.
        """
        batches, steps, n_steps = self._training_plan(
            network, sequences, n_train, device, continuation=continuation)
        batches, steps, n_steps = shard.plan(batches, steps, n_steps)
        optimizer = Optimizer(network, self.optimizer, self.learning_rate,
                              self.rho, self.epsilon)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        history, best_epoch = train(
            network, optimizer, batches, steps, max_epochs=max_epochs,
            validate=validate, n_iter_no_change=self.n_iter_no_change, rng=rng,
            n_steps=n_steps, max_loss=_divergence_loss(self.n_items_),
            verbose=self.verbose, checkpoint=checkpoint, cluster=shard.cluster,
            start_loss=start_loss)
        return history, best_epoch, optimizer.state_dict()

    # ---------------------------------------------------- incremental learning
    def _learn_events(self, continuation, previous_history):
        """``partial_fit``: grow, train on the new events, follow them.

        Runs on ``partial_fit``'s staging copy, on ``device_`` (where the
        network lives), and replaces ``network_``, ``optimizer_state_``,
        ``partial_history_`` and what ``_append_events`` sets with new
        objects: the old network's tensors are never changed.

        Two stages, each a fixed number of epochs or ``"auto"``: passes over
        the new events (``partial_epochs``), then over every stored history
        (``replay_epochs``). With an ``"auto"`` stage, the last
        ``validation_fraction`` of each user's new events
        (:func:`.batching.validation_sizes`) are held out of both stages'
        training, and an ``"auto"`` stage runs until their loss (as ``fit``
        validates: per-user mean, each continuing the user's whole history)
        has not improved for ``n_iter_no_change`` passes, at most
        ``max_epochs``; it keeps its best pass's weights, or those it
        started from when no pass beats them. Without held-out events, an
        ``"auto"`` stage runs one pass. With ``refit=True`` the held-out
        events are then learned too: one more pass over all the new events.
        """
        device = torch.device(self.device_)
        rng = self._partial_rng()
        stages = (self.partial_epochs, self.replay_epochs)
        with cpu_threads(self.n_jobs):
            network, optimizer_state = self._grown(len(previous_history.items))
            held_out = np.zeros_like(continuation.lengths)
            if any(isinstance(value, str) for value in stages):  # "auto"
                held_out = validation_sizes(continuation.lengths,
                                            self.validation_fraction)
            validate, start_loss = self._partial_validation(network, continuation,
                                                            held_out)
            # partial_fit runs in one process: a cluster of one
            epochs, best_epoch, optimizer_state, start_loss = self._partial_stage(
                network, continuation, continuation.lengths - held_out,
                self.partial_epochs, rng, device, validate, start_loss,
                optimizer_state, continuation=True)
            replayed, replay_best_epoch = [], None
            if self.replay_epochs:
                # every stored history, from its start, as fit trains them
                history = self._history
                n_train = history.lengths.copy()
                n_train[continuation.user_codes] -= held_out
                replayed, replay_best_epoch, optimizer_state, _ = self._partial_stage(
                    network, history, n_train, self.replay_epochs, rng, device,
                    validate, start_loss, optimizer_state)
            refitted = []
            if self.refit and held_out.any():
                # the held-out events are learned too: one pass over all new events
                refitted, _, optimizer_state = self._run_epochs(
                    network, continuation, continuation.lengths, 1, rng, device,
                    WholeShard(), optimizer_state=optimizer_state, continuation=True)
            self.optimizer_state_ = optimizer_state
            self.network_ = _frozen(network)
            if replayed:  # every user's weights moved: recompute every cache
                self._after_fit(self._history)
            else:
                self._append_events(continuation)
        self.partial_history_ = [*self.partial_history_, {
            "n_events": len(continuation.items), "n_users": continuation.n_groups,
            "epochs": epochs, "replay_epochs": replayed,
            "n_held_out": int(held_out.sum()), "best_epoch": best_epoch,
            "replay_best_epoch": replay_best_epoch, "refit_epochs": refitted}]

    def _partial_validation(self, network, continuation, held_out):
        """The validation of ``partial_fit``'s held-out events, and its loss now.

        ``held_out`` is the number of each continuation group's last events
        held out; they are scored continuing each user's whole stored
        history (only the users with held-out events are scored).
        ``(None, None)`` when nothing is held out.
        """
        groups = np.flatnonzero(held_out)
        if not len(groups):
            return None, None
        users = continuation.user_codes[groups]
        histories = self._history.subset(users)
        validate = self._validation(network, histories,
                                    histories.lengths - held_out[groups])
        return validate, float(validate())

    def _partial_stage(self, network, sequences, n_train, epochs, rng, device,
                       validate, start_loss, optimizer_state, continuation=False):
        """One stage of ``partial_fit``: ``epochs`` passes, or ``"auto"``.

        Returns the epochs' history, the best epoch (None for a fixed
        count; 0 when an ``"auto"`` stage kept its starting weights), the
        optimizer's statistics and the validation loss of the weights it
        leaves (None when nothing is held out), where the next stage starts.
        """
        if epochs != "auto":
            history, _, optimizer_state = self._run_epochs(
                network, sequences, n_train, epochs, rng, device, WholeShard(),
                optimizer_state=optimizer_state, continuation=continuation)
            if epochs and validate is not None:  # the next stage starts here
                start_loss = float(validate())
            return history, None, optimizer_state, start_loss
        if validate is None:  # nothing held out: one pass
            history, _, optimizer_state = self._run_epochs(
                network, sequences, n_train, 1, rng, device, WholeShard(),
                optimizer_state=optimizer_state, continuation=continuation)
            return history, None, optimizer_state, None
        history, best_epoch, optimizer_state = self._run_epochs(
            network, sequences, n_train, self.max_epochs, rng, device, WholeShard(),
            validate=validate, optimizer_state=optimizer_state,
            continuation=continuation, start_loss=start_loss)
        if best_epoch:
            start_loss = history[best_epoch - 1]["valid_loss"]
        return history, best_epoch, optimizer_state, start_loss

    def _grown(self, n_seen):
        """A copy of ``network_`` at the grown vocabularies, and its optimizer state.

        The network is built anew by ``_new_network`` (at ``n_users_`` and
        ``n_items_``). Each parameter that it declares row-indexed
        (``row_indexed``: parameter -> "user" or "item") keeps the rows of
        ``network_``, and its new rows (users or items that the old network
        has no row for) are ``_initial_rows``; every other parameter is
        copied. The optimizer's statistics grow with zero rows
        (:func:`~.optim.grown_state_dict`); they are None (statistics
        starting from zero) when the model has none (a file saved before
        they were) or they belong to the other optimizer.

        Parameters
        ----------
        n_seen : int
            Events in the histories before the new ones.

        Returns
        -------
        network : torch.nn.Module
            Trainable (``requires_grad``), on ``network_``'s device.
        optimizer_state : dict or None
        """
        old = self.network_
        network = self._new_network().to(next(old.parameters()).device)
        with torch.no_grad():
            for name, parameter in network.named_parameters():
                known = old.get_parameter(name)
                n_new = parameter.shape[0] - known.shape[0]
                if (parameter.shape[1:] != known.shape[1:] or n_new < 0
                        or (n_new and name not in network.row_indexed)):
                    raise RuntimeError(f"{name} of shape {tuple(known.shape)} cannot "
                                       f"grow to {tuple(parameter.shape)}")
                parameter[:known.shape[0]] = known
                if n_new:
                    parameter[known.shape[0]:] = self._initial_rows(name, known, n_new,
                                                                    n_seen)
        state = getattr(self, "optimizer_state_", None)
        if state is None or state["name"] != self.optimizer:
            return network, None
        return network, grown_state_dict(state, network)

    def _partial_rng(self):
        """The batch order's generator of this ``partial_fit`` call.

        Seeded with the fit's batch-order seed (:func:`.runtime.draw_seeds`
        of ``random_state``) and the call's number (``len(partial_history_)
        + 1``): with an int ``random_state``, each call's order is
        reproducible, also after save and load.
        """
        seed = draw_seeds(self.random_state)[1]
        return np.random.default_rng([seed, len(self.partial_history_) + 1])

    # -------------------------------------------------------------- scoring
    def _log_proba(self, sequences, prefixes, targets=None):
        bias = check_repeat_bias(self.repeat_bias)
        if bias and targets is not None:
            # the renormalisation needs whole rows: take them in bounded
            # blocks (each comes back here without targets)
            chosen = np.empty(len(prefixes))
            for rows, log_proba in self._full_log_proba(sequences, prefixes):
                chosen[rows] = log_proba[np.arange(len(rows)), targets[rows]]
            return chosen
        with cpu_threads(self.n_jobs):
            log_proba = self._network_log_proba(sequences, prefixes, targets)
        if not bias:
            return log_proba
        mask = seen_mask(self._history, sequences, prefixes, self.n_items_)
        return with_repeat_bias(np.asarray(log_proba, dtype=np.float64), mask, bias)

    # --------------------------------------------------------- persistence
    @classmethod
    def load(cls, path, device=None):
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            A file written by ``save`` of this class.
        device : str, optional
            Where to put the network. By default the model's ``device``
            parameter when this machine has it, else the CPU (so a model
            trained on a GPU loads on a CPU-only machine).

        Returns
        -------
        model : object
            The fitted model, an instance of this class.

        Raises
        ------
        ValueError
            If ``device`` names no device of this machine, or the file is not
            a skcrnn model file, is damaged or truncated, was written by a
            newer version of skcrnn, or holds another estimator class.
        FileNotFoundError
            If there is no file at ``path``.
        """
        if device is not None:
            resolve_device(device)  # the caller's mistake, not a damaged file
        return super().load(path, device=device)

    def _fitted_state(self):
        state = {
            "network_config": self.network_.config,
            "network_state": {name: tensor.detach().cpu() for name, tensor
                              in self.network_.state_dict().items()},
            "history": [dict(entry) for entry in self.history_],
            "refit_history": (None if self.refit_history_ is None else
                              [dict(entry) for entry in self.refit_history_]),
            "best_epoch": self.best_epoch_,
            "optimizer_state": self.optimizer_state_,
            "partial_history": copy.deepcopy(self.partial_history_),
        }
        for attribute, entry in self._fitted_tensors.items():
            state[entry] = getattr(self, attribute).detach().cpu()
        return state

    def _restore_fitted_state(self, record, device):
        target = (resolve_device(device) if device is not None
                  else usable_device(self.device))
        self.network_ = _rebuild_network(self._network_type(),
                                         record["network_config"],
                                         record["network_state"], target)
        for attribute, entry in self._fitted_tensors.items():
            setattr(self, attribute, record[entry].to(target))
        self._check_restored()
        self.device_ = str(target)
        self.history_ = [dict(entry) for entry in record["history"]]
        self.refit_history_ = (None if record["refit_history"] is None else
                               [dict(entry) for entry in record["refit_history"]])
        self.best_epoch_ = record["best_epoch"]
        self.n_iter_ = len(self.history_)
        # None and [] where the file predates partial_fit (_migrations)
        self.optimizer_state_ = record["optimizer_state"]
        if self.optimizer_state_ is not None:
            self._check_optimizer_state(self.optimizer_state_)
        self.partial_history_ = copy.deepcopy(record["partial_history"])

    def _check_optimizer_state(self, state):
        """Raise ``ValueError`` if ``state`` is not statistics of ``network_``'s."""
        Optimizer(self.network_, state["name"], self.learning_rate, self.rho,
                  self.epsilon).load_state_dict(state)

    def _check_restored(self):
        """Raise ``ValueError`` if restored tensors do not fit the vocabularies."""

    def __getstate__(self):
        state = super().__getstate__()
        if "network_" in state and state.get("device_", "cpu") != "cpu":
            state = dict(state)
            state["network_"] = _rebuild_network(
                self._network_type(), self.network_.config,
                self.network_.state_dict(), "cpu")
            for attribute in self._fitted_tensors:
                state[attribute] = getattr(self, attribute).cpu()
            # the device it came from, restored when the unpickling machine has it
            state["device_"] = str(self.device_)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)  # fills what older pickles lack
        if "network_" in state:
            target = usable_device(state.get("device_", "cpu"))
            self.network_ = self.network_.to(target)
            for attribute in self._fitted_tensors:
                setattr(self, attribute, getattr(self, attribute).to(target))
            self.device_ = str(target)


class _WarmStart:
    """Where a warm fit starts: a network's state dict and optimizer statistics.

    Both on the CPU, in the order of the new fit's vocabularies; the
    statistics are None where the fitted model has none (a file saved
    before they were kept).
    """

    def __init__(self, network_state, optimizer_state):
        self.network_state = network_state
        self.optimizer_state = optimizer_state

    def digest(self):
        """A SHA-256 of the weights and statistics (for the fit's fingerprint)."""
        digest = hashlib.sha256()
        statistics = {} if self.optimizer_state is None else {
            f"{name}/{key}": tensor
            for name, state in self.optimizer_state["state"].items()
            for key, tensor in state.items()}
        for name, tensor in sorted({**self.network_state, **statistics}.items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def _frozen(network):
    """``network`` with its parameters' gradients off (fitted)."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _phase(checkpoint, phase, seeds, record, **first):
    """The view of ``checkpoint`` that :func:`train` uses in ``phase``.

    None without a checkpoint; it resumes from ``record`` when that is of
    the same phase. ``first`` is phase 1's ``first_history`` and
    ``first_best_epoch``, recorded by phase 2.
    """
    if checkpoint is None:
        return None
    resume_from = None
    if record is not None and record["phase"] == phase:
        resume_from = record["training"]
    return checkpoint.phase(phase, seeds, resume_from=resume_from, **first)


def _divergence_loss(n_items):
    """A training loss above this means divergence: 10 times a uniform guess's, plus 10.

    An untrained network's loss is about ``log(n_items)`` (a uniform guess);
    training only lowers it, so a loss ten times higher has exploded, even
    where it is still finite (learning rates of 1e3 and more).
    """
    return 10.0 * np.log(max(n_items, 2)) + 10.0


def _rebuild_network(network_type, config, state_dict, device):
    """A frozen network of this type with these weights, on ``device``."""
    network = network_type(**config)
    network.load_state_dict({name: tensor.detach().cpu()
                             for name, tensor in state_dict.items()})
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.to(device)


def _check_directory(path, name):
    """Raise a clear error now if ``path`` cannot be (made) a writable directory.

    Raises
    ------
    ValueError
        If ``path`` exists and is not a directory.
    PermissionError
        If the directory (or its nearest existing parent) is not writable.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}={path!r} exists and is not a directory.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{name}={path!r} cannot be created: {existing!r} is "
                         f"not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}={path!r} is not writable (no write "
                              f"permission on {existing!r}).")
