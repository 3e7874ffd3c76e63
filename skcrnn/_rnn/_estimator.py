"""The collaborative RNN recommender (Ko, Maystre & Grossglauser, ACML 2016)."""

import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from tqdm.auto import tqdm

from .. import _persistence
from .._base import BaseRecommender
from . import _native
from ._batching import validation_sizes, window
from ._checkpoint import Checkpoint, fingerprint
from ._cells import CollaborativeRNN, forward_states, log_proba_from_states
from ._training import Optimizer, make_batches, train

#: Parameters that may differ between a fit and the fit that resumes it: they
#: do not change what training computes (a resumed run may also use another
#: device; results are then equal up to floating-point rounding).
_NOT_IN_FINGERPRINT = frozenset({"verbose", "device", "checkpoint_dir", "user_col",
                                 "item_col", "time_col", "handle_unknown"})

#: Type of inference: double precision keeps a row's score independent of the
#: rows it is batched with (float32 kernels round differently per batch shape).
_INFERENCE_DTYPE = torch.float64
#: Early stopping compares the validation losses of epochs, means over
#: thousands of events: single precision is ample and twice as fast.
_VALIDATION_DTYPE = torch.float32


class CollaborativeGRURecommender(BaseRecommender):
    """Collaborative recurrent neural network (C-GRU, C-tanh or P-GRU).

    For user ``u`` reading item ``x_t`` with hidden state ``h_{t-1}`` (size
    ``H = hidden_size``), the C-GRU computes::

        z   = sigmoid(W_zh^(u) h_{t-1} + W_zi x_t)
        r   = sigmoid(W_rh^(u) h_{t-1} + W_ri x_t)
        h~  = tanh(W_h^(u) (r * h_{t-1}) + W_in x_t)   (see candidate_activation)
        h_t = (1 - z) * h_{t-1} + z * h~
        P(next item | history) = softmax(W_out h_t + b)

    The input terms (item embeddings) and the output layer are shared by all
    users; the three recurrent matrices belong to each user.
    ``cell="tanh"`` gives the C-tanh cell ``h_t = tanh(W_hh^(u) h_{t-1} +
    W_xh x_t)``, and ``recurrent_weights="shared"`` one set of recurrent
    matrices for everybody (the paper's P-GRU baseline).

    Training is truncated back-propagation through time: users are batched
    ``batch_size`` at a time (users of similar lengths together), each
    sequence is cut into chunks of ``chunk_size`` events, the state is carried
    from chunk to chunk (detached), and each chunk takes one optimizer step.
    The first event of each sequence is predicted from the initial state,
    which trains the distribution that users without history get. As in the
    authors' code, a step's loss is the summed cross-entropy of the chunk's
    events over its ``rows x chunk_size`` slots, and RMSProp divides by
    ``sqrt(mean_square + epsilon)``; the per-user matrices are updated lazily
    (only the batch's users, whose statistics alone move).

    The last ``validation_fraction`` of each user's events are held out:
    after each epoch the validation loss (mean over users of the mean negative
    log-likelihood of their held-out events, continuing from the state at the
    end of their training part) decides early stopping. With ``refit=True``
    a new network then trains on all events for the best number of epochs
    (the held-out events are each user's most recent ones, the most telling
    about what comes next); with ``refit=False`` the best epoch's weights are
    kept. Finally each user's whole fitted sequence is run through the
    network; scoring continues from that state.

    A user unknown to the model starts from the initial state with the
    **mean of the per-user recurrent matrices** (with shared weights, the
    shared matrices).

    Parameters
    ----------
    hidden_size : int, default=32
        Size ``H`` of the hidden state.
    learning_rate : float, default=0.0075
        Step size of the optimizer.
    cell : {"gru", "tanh"}, default="gru"
        The recurrent cell.
    recurrent_weights : {"per_user", "shared"}, default="per_user"
        One set of recurrent matrices per user (collaborative RNN) or one for
        everybody (P-GRU).
    candidate_activation : {"sigmoid", "tanh"}, default="sigmoid"
        Activation of the GRU's candidate state. The paper's equations print
        tanh; the authors' TensorFlow code, which produced the paper's
        figures, uses a sigmoid (the states then stay in [0, 1]). The sigmoid
        is the default because it trains more slowly and generalizes better:
        on the Foursquare check-ins under the paper's protocol its validation
        loss was 5.993 against 6.088 with tanh (docs/results_rnn.md).
        ``"tanh"`` gives the equations as printed. Ignored by ``cell="tanh"``.
    optimizer : {"rmsprop", "adam"}, default="rmsprop"
        RMSProp with TensorFlow's rule (``grad / sqrt(mean_square +
        epsilon)``, mean square starting at 0) or Adam (betas 0.9, 0.999).
    rho : float, default=0.997
        Decay of RMSProp's running average of squared gradients, in [0, 1).
    epsilon : float, default=1e-8
        RMSProp's epsilon (inside the square root) or Adam's (outside).
    chunk_size : int, default=64
        Events per chunk of truncated back-propagation.
    batch_size : int, default=20
        Users per batch.
    max_epochs : int, default=30
        Most passes over the training events.
    validation_fraction : float, default=0.1
        Share of each user's events (the last ones; at least one when the
        user has two or more) held out for early stopping, in [0, 1). ``0``
        trains on everything for ``max_epochs`` epochs.
    n_iter_no_change : int, default=3
        Stop after this many epochs without a lower validation loss.
    refit : bool, default=True
        After early stopping, train a new network (same seed) on all events,
        validation suffixes included, for ``best_epoch_`` epochs. Costs a
        second training; ``False`` keeps the best epoch's weights instead.
    max_train_chunks : int or None, default=None
        Train on at most this many chunks of each user's latest training
        events (the paper's Last.fm setting); ``None`` keeps all.
    initial_state : float, default=0.0
        Value of every coordinate of the state before a user's first event.
    device : str, default="auto"
        Torch device of training and scoring: ``"auto"`` (CUDA when
        available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    random_state : int, RandomState instance or None, default=None
        Seeds the weights and the batch order; with an int, training on the
        CPU is reproducible.
    verbose : int, default=0
        Progress bar and one line per epoch when positive.
    checkpoint_dir : str, path-like or None, default=None
        Directory (created if missing) where training keeps a checkpoint,
        ``checkpoint.pt``, rewritten atomically after every epoch: weights,
        optimizer statistics, random generator, history and best epoch. If
        ``fit`` stops before the end (an exception, a killed process),
        fitting again with the same parameters and events resumes after the
        last finished epoch (of the run with validation or of the refit); on
        the CPU with an int ``random_state`` the fitted model is then the
        same as that of an uninterrupted fit. A checkpoint of a fit with other
        events or other parameters (those that do not change training aside:
        ``verbose``, ``device``, ``checkpoint_dir``, the column names and
        ``handle_unknown``) raises ``ValueError``. A fit that completes
        deletes its checkpoint, so that the next fit starts afresh. Fits
        running at the same time need different directories.
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        What scoring does with unknown items (and users): leave them out with
        a warning (unknown users are scored with the fallback above) or raise
        ``ValueError``.

    Attributes
    ----------
    network_ : CollaborativeRNN
        The trained torch module (float32), on ``device_``.
    final_states_ : torch.Tensor of shape (n_users, hidden_size)
        Each user's state after all of the user's fitted events (float64).
    history_ : list of dict
        Per epoch of the run with validation: ``epoch``, ``train_loss`` (mean
        cross-entropy of the epoch's training events), ``valid_loss``,
        ``seconds``, ``events_per_second``.
    best_epoch_ : int or None
        The epoch of lowest validation loss (None without validation).
    n_iter_ : int
        Epochs of the run with validation.
    refit_history_ : list of dict or None
        The same for the refit on all events (``valid_loss`` NaN); None
        without refit.
    device_ : str
        Where ``network_`` lives.
    classes_ : ndarray of shape (n_items,)
        The known items, sorted; columns of :meth:`predict_proba`.
    users_ : ndarray of shape (n_users,)
        The known users, sorted.
    n_items_, n_users_ : int
        How many of each.

    Notes
    -----
    Scoring runs in double precision from the float32 weights, so that a
    row's log-probability does not depend on the other rows of the call.

    On a CPU, training runs the recurrence's step loops as compiled C++,
    built the first time a fit needs them on a machine (about 25 s, then
    cached; it needs a C++ compiler) and as torch operations in Python where
    they cannot be built, with the same results to rounding. See the
    "Training speed" page of the documentation.

    Examples
    --------
    >>> import pandas as pd
    >>> from skcrnn import CollaborativeGRURecommender
    >>> events = pd.DataFrame({"user": [1, 1, 1, 2, 2, 2],
    ...                        "item": ["a", "b", "a", "b", "c", "b"],
    ...                        "timestamp": [1, 2, 3, 1, 2, 3]})
    >>> model = CollaborativeGRURecommender(hidden_size=4, max_epochs=2,
    ...                                     device="cpu", random_state=0)
    >>> model.fit(events).recommend([1], k=2)["rank"].tolist()
    [1, 2]
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "cell": [StrOptions({"gru", "tanh"})],
        "candidate_activation": [StrOptions({"tanh", "sigmoid"})],
        "recurrent_weights": [StrOptions({"per_user", "shared"})],
        "optimizer": [StrOptions({"rmsprop", "adam"})],
        "rho": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "refit": ["boolean"],
        "max_train_chunks": [None, Interval(Integral, 1, None, closed="left")],
        "initial_state": [Interval(Real, None, None, closed="neither")],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "checkpoint_dir": [None, str, os.PathLike],
    }

    def __init__(self, hidden_size=32, learning_rate=0.0075, *, cell="gru",
                 recurrent_weights="per_user", candidate_activation="sigmoid",
                 optimizer="rmsprop", rho=0.997, epsilon=1e-8, chunk_size=64,
                 batch_size=20, max_epochs=30, validation_fraction=0.1,
                 n_iter_no_change=3, refit=True, max_train_chunks=None,
                 initial_state=0.0, device="auto", random_state=None, verbose=0,
                 checkpoint_dir=None, user_col="user", item_col="item",
                 time_col="timestamp", handle_unknown="ignore"):
        self.hidden_size = hidden_size
        self.learning_rate = learning_rate
        self.cell = cell
        self.recurrent_weights = recurrent_weights
        self.candidate_activation = candidate_activation
        self.optimizer = optimizer
        self.rho = rho
        self.epsilon = epsilon
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.refit = refit
        self.max_train_chunks = max_train_chunks
        self.initial_state = initial_state
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    # -------------------------------------------------------------- fitting
    def _check_fit_params(self):
        if not np.isfinite(self.initial_state):
            raise ValueError(
                f"initial_state must be finite; got {self.initial_state!r}.")
        resolve_device(self.device)

    def _fit_sequences(self, sequences):
        device = resolve_device(self.device)
        if device.type == "cpu" and not _native.ready():
            # built here, not inside the first epoch (whose seconds it would
            # inflate); once per machine, then loaded from torch's cache
            if self.verbose:
                tqdm.write("loading the recurrence's compiled loops (built on a "
                           "machine's first fit: about 25 s)")
            _native.load()
        seeds = check_random_state(self.random_state).randint(0, 2 ** 31 - 1, size=2)
        checkpoint, record = self._open_checkpoint(sequences)
        if record is not None:
            seeds = record["seeds"]  # those of the fit that wrote it
        lengths = sequences.lengths
        n_valid = validation_sizes(lengths, self.validation_fraction)
        if record is not None and record["phase"] == 2:
            if self.verbose:
                tqdm.write(f"{checkpoint} is of the refit: the run with "
                           f"validation is done")
            self.history_ = [dict(entry) for entry in record["first_history"]]
            self.best_epoch_ = record["first_best_epoch"]
        else:
            network, self.history_, self.best_epoch_ = self._train(
                sequences, lengths - n_valid, self.max_epochs, seeds, device,
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
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        self.network_ = network
        self.device_ = str(device)
        start = self._start_states(np.full(self.n_users_, -1))
        self.final_states_ = forward_states(network, sequences, start,
                                            sequences.prefix_start + lengths,
                                            dtype=_INFERENCE_DTYPE)
        if checkpoint is not None:
            checkpoint.remove()

    def _open_checkpoint(self, sequences):
        """The fit's :class:`Checkpoint` and the record it resumes from.

        ``(None, None)`` without ``checkpoint_dir``; the record is None when
        there is no checkpoint yet.
        """
        if self.checkpoint_dir is None:
            return None, None
        params = {name: value for name, value in self.get_params(deep=False).items()
                  if name not in _NOT_IN_FINGERPRINT}
        checkpoint = Checkpoint(self.checkpoint_dir, type(self).__name__,
                                fingerprint(params, sequences, self.n_items_))
        return checkpoint, checkpoint.read()

    def _train(self, sequences, n_train, max_epochs, seeds, device, checkpoint=None):
        """Train a new network on each user's first ``n_train`` events.

        The events after them, if any, are the validation suffixes. The same
        ``seeds`` give the same initial weights and batch orders. With a
        ``checkpoint`` (of :func:`train`), training resumes from it and
        records itself there.

        Returns the network, its history and its best epoch (None without
        validation).
        """
        generator = torch.Generator().manual_seed(int(seeds[0]))
        rng = np.random.default_rng(int(seeds[1]))
        lengths = sequences.lengths
        first = np.zeros_like(lengths)
        if self.max_train_chunks is not None:
            first = np.maximum(n_train - self.max_train_chunks * self.chunk_size, 0)
        network = CollaborativeRNN(
            self.n_users_, self.n_items_, self.hidden_size, cell=self.cell,
            shared=self.recurrent_weights == "shared",
            candidate=self.candidate_activation).reset_parameters(generator)
        network.to(device)
        batches = make_batches(window(sequences, first, n_train), self.batch_size,
                               device)
        validate = None
        if (lengths > n_train).any():
            validate = _Validation(network, window(sequences, first, lengths),
                                   n_train - first, self.initial_state)
        optimizer = Optimizer(network, self.optimizer, self.learning_rate,
                              self.rho, self.epsilon)
        history, best_epoch = train(
            network, optimizer, batches, max_epochs=max_epochs,
            chunk_size=self.chunk_size, initial_state=self.initial_state,
            validate=validate, n_iter_no_change=self.n_iter_no_change, rng=rng,
            verbose=self.verbose, checkpoint=checkpoint)
        return network, history, best_epoch

    # -------------------------------------------------------------- scoring
    def _start_states(self, user_codes):
        """Stored final states of known users, the initial state for ``-1``."""
        device = torch.device(self.device_)
        start = torch.full((len(user_codes), self.network_.hidden_size),
                           float(self.initial_state), dtype=_INFERENCE_DTYPE,
                           device=device)
        known = np.flatnonzero(user_codes >= 0)
        if len(known) and hasattr(self, "final_states_"):
            known_t = torch.as_tensor(known, device=device)
            start[known_t] = self.final_states_[
                torch.as_tensor(user_codes[known], device=device)]
        return start

    def _log_proba(self, sequences, prefixes, targets=None):
        start = self._start_states(sequences.user_codes)
        states = forward_states(self.network_, sequences, start, prefixes,
                                dtype=_INFERENCE_DTYPE)
        return log_proba_from_states(self.network_, states, targets,
                                     dtype=_INFERENCE_DTYPE)

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
        model : CollaborativeGRURecommender
            The fitted model.

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
        return {
            "network_config": self.network_.config,
            "network_state": {name: tensor.detach().cpu() for name, tensor
                              in self.network_.state_dict().items()},
            "final_states": self.final_states_.detach().cpu(),
            "history": [dict(entry) for entry in self.history_],
            "refit_history": (None if self.refit_history_ is None else
                              [dict(entry) for entry in self.refit_history_]),
            "best_epoch": self.best_epoch_,
        }

    def _restore_fitted_state(self, record, device):
        target = (resolve_device(device) if device is not None
                  else _usable_device(self.device))
        network = _rebuild_network(record["network_config"],
                                   record["network_state"], target)
        final_states = record["final_states"].to(target)
        if (final_states.shape != (self.n_users_, network.hidden_size)
                or network.item_input.shape[0] != self.n_items_):
            raise ValueError("its tensors do not match its vocabularies")
        self.network_ = network
        self.final_states_ = final_states
        self.device_ = str(target)
        self.history_ = [dict(entry) for entry in record["history"]]
        self.refit_history_ = (None if record["refit_history"] is None else
                               [dict(entry) for entry in record["refit_history"]])
        self.best_epoch_ = record["best_epoch"]
        self.n_iter_ = len(self.history_)

    def __getstate__(self):
        state = super().__getstate__()
        if "network_" in state and state.get("device_", "cpu") != "cpu":
            state = dict(state)
            state["network_"] = _rebuild_network(
                self.network_.config, self.network_.state_dict(), "cpu")
            state["final_states_"] = self.final_states_.cpu()
            # the device it came from, restored when the unpickling machine has it
            state["device_"] = str(self.device_)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "network_" in state:
            target = _usable_device(state.get("device_", "cpu"))
            self.network_ = self.network_.to(target)
            self.final_states_ = self.final_states_.to(target)
            self.device_ = str(target)


class _Validation:
    """Validation loss of the current weights, as a callable for :func:`train`.

    ``sequences`` holds each user's (possibly truncated) training part
    followed by the user's held-out events; ``n_head[g]`` is the length of
    the training part. The held-out events are scored continuing from the
    state at the end of the training part, in single precision; the loss is
    the mean over users of the mean negative log-likelihood of their
    held-out events.
    """

    def __init__(self, network, sequences, n_head, initial_state):
        self.network = network
        self.initial_state = float(initial_state)
        position = sequences.position_of_event
        group = sequences.group_of_event
        held_out = np.flatnonzero(position >= n_head[group])
        self.sequences = sequences
        self.prefixes = held_out + group[held_out]
        self.targets = sequences.items[held_out]
        self.groups = np.unique(group[held_out], return_inverse=True)[1]

    def __call__(self):
        device = self.network.item_input.device
        start = torch.full((self.sequences.n_groups, self.network.hidden_size),
                           self.initial_state, dtype=_VALIDATION_DTYPE, device=device)
        states = forward_states(self.network, self.sequences, start, self.prefixes,
                                dtype=_VALIDATION_DTYPE)
        nll = -log_proba_from_states(self.network, states, self.targets,
                                     dtype=_VALIDATION_DTYPE)
        sums = np.bincount(self.groups, weights=nll)
        counts = np.bincount(self.groups)
        return float(np.mean(sums / counts))


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


def _rebuild_network(config, state_dict, device):
    """A frozen :class:`CollaborativeRNN` with these weights, on ``device``."""
    network = CollaborativeRNN(**config)
    network.load_state_dict({name: tensor.detach().cpu()
                             for name, tensor in state_dict.items()})
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.to(device)


def _usable_device(spec):
    """``resolve_device(spec)``, or the CPU when this machine lacks it."""
    try:
        return resolve_device(spec)
    except ValueError:
        return torch.device("cpu")
