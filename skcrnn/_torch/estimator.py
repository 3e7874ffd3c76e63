"""The base class of every torch-backed recommender.

:class:`TorchRecommender` owns, once for all neural models, what
:class:`~skcrnn._base.BaseRecommender` leaves to a model's ``_fit_sequences``
and persistence hooks:

- the device (:func:`.runtime.resolve_device`), the seeds, and the CPU
  thread policy (``n_jobs``, restored for the caller afterwards);
- the fit path: a run with early stopping on each user's last events, then
  (``refit=True``) a new network trained on all events for the best number
  of epochs, with a checkpoint that resumes a killed fit (:mod:`.checkpoint`);
- the training loop and its optimizer (:mod:`.loop`, :mod:`.optim`);
- saving, loading (onto any device) and pickling the fitted network.

A model is a subclass that supplies its network and its batches:

``_new_network()``
    an uninitialized ``torch.nn.Module`` with ``reset_parameters(generator)``,
    a ``config`` dict that rebuilds it (``_network_type(**config)``) and
    ``row_indexed`` (see :mod:`.optim`);
``_training_plan(network, sequences, n_train, device)``
    the training batches of each user's first ``n_train`` events, the
    callable that yields a batch's :class:`~.loop.Step` s, and the number of
    steps per epoch;
``_validation(network, sequences, n_train)``
    a callable that returns the validation loss of the network's current
    weights on the events after the first ``n_train`` of each user;
``_network_log_proba(sequences, prefixes, targets)``
    scoring with the fitted ``network_`` (see ``BaseRecommender._log_proba``);
``_after_fit(sequences)``, optional
    fitted attributes computed from the trained network (listed in
    ``_fitted_tensors`` when they are tensors, so that they are saved and
    moved with the network).
"""

import os
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from tqdm.auto import tqdm

from .._base import BaseRecommender
from .batching import validation_sizes
from .checkpoint import Checkpoint, fingerprint
from .loop import train
from .optim import Optimizer
from .runtime import cpu_threads, draw_seeds, resolve_device, usable_device

#: Parameters that may differ between a fit and the fit that resumes it: they
#: do not change what training computes (a resumed run may also use another
#: device or thread count; results are then equal up to floating-point
#: rounding).
NOT_IN_FINGERPRINT = frozenset({"verbose", "device", "n_jobs", "checkpoint_dir",
                                "user_col", "item_col", "time_col",
                                "handle_unknown"})


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
        "device": [str],
        "n_jobs": [None, Integral],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "checkpoint_dir": [None, str, os.PathLike],
    }

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
        """The validation loss callable of the events after ``n_train``."""

    @abstractmethod
    def _network_log_proba(self, sequences, prefixes, targets=None):
        """``BaseRecommender._log_proba`` with the fitted ``network_``."""

    def _after_fit(self, sequences):
        """Set fitted attributes that derive from the trained ``network_``."""

    # -------------------------------------------------------------- fitting
    def _check_fit_params(self):
        resolve_device(self.device)
        if self.n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning; use None, a positive "
                             "count, or -1 for all processors.")
        if self.checkpoint_dir is not None:
            _check_directory(self.checkpoint_dir, "checkpoint_dir")

    def _fit_sequences(self, sequences):
        device = resolve_device(self.device)
        with cpu_threads(self.n_jobs):
            network = self._fit_network(sequences, device)
            for parameter in network.parameters():
                parameter.requires_grad_(False)
            self.network_ = network
            self.device_ = str(device)
            self._after_fit(sequences)

    def _fit_network(self, sequences, device):
        """Early stopping, then the optional refit; the trained network."""
        seeds = draw_seeds(self.random_state)
        checkpoint, record = self._open_checkpoint(sequences)
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
            network, self.history_, self.best_epoch_ = self._train(
                sequences, n_train, self.max_epochs, seeds, device,
                _phase(checkpoint, 1, seeds, record))
        self.n_iter_ = len(self.history_)
        self.refit_history_ = None
        if self.refit and self.best_epoch_ is not None:
            if self.verbose:
                tqdm.write(f"refit on all events for {self.best_epoch_} epoch(s)")
            network, self.refit_history_, _ = self._train(
                sequences, lengths, self.best_epoch_, seeds, device,
                _phase(checkpoint, 2, seeds, record, first_history=self.history_,
                       first_best_epoch=self.best_epoch_))
        if checkpoint is not None:
            checkpoint.remove()
        return network

    def _open_checkpoint(self, sequences):
        """The fit's :class:`Checkpoint` and the record it resumes from.

        ``(None, None)`` without ``checkpoint_dir``; the record is None when
        there is no checkpoint yet.
        """
        if self.checkpoint_dir is None:
            return None, None
        params = {name: value for name, value in self.get_params(deep=False).items()
                  if name not in NOT_IN_FINGERPRINT}
        checkpoint = Checkpoint(self.checkpoint_dir, type(self).__name__,
                                fingerprint(params, sequences, self.n_items_))
        return checkpoint, checkpoint.read()

    def _train(self, sequences, n_train, max_epochs, seeds, device, checkpoint=None):
        """Train a new network on each user's first ``n_train`` events.

        The events after them, if any, are the validation events. The same
        ``seeds`` give the same initial weights and batch orders.

        Returns the network, its history and its best epoch (None without
        validation).
        """
        generator = torch.Generator().manual_seed(int(seeds[0]))
        rng = np.random.default_rng(int(seeds[1]))
        network = self._new_network().reset_parameters(generator).to(device)
        batches, steps, n_steps = self._training_plan(network, sequences, n_train,
                                                      device)
        validate = None
        if (sequences.lengths > n_train).any():
            validate = self._validation(network, sequences, n_train)
        optimizer = Optimizer(network, self.optimizer, self.learning_rate,
                              self.rho, self.epsilon)
        history, best_epoch = train(
            network, optimizer, batches, steps, max_epochs=max_epochs,
            validate=validate, n_iter_no_change=self.n_iter_no_change, rng=rng,
            n_steps=n_steps, max_loss=_divergence_loss(self.n_items_),
            verbose=self.verbose, checkpoint=checkpoint)
        return network, history, best_epoch

    # -------------------------------------------------------------- scoring
    def _log_proba(self, sequences, prefixes, targets=None):
        with cpu_threads(self.n_jobs):
            return self._network_log_proba(sequences, prefixes, targets)

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
        super().__setstate__(state)
        if "network_" in state:
            target = usable_device(state.get("device_", "cpu"))
            self.network_ = self.network_.to(target)
            for attribute in self._fitted_tensors:
                setattr(self, attribute, getattr(self, attribute).to(target))
            self.device_ = str(target)


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
