"""The self-attention recommender: a small subclass of the torch layer.

The estimator turns its parameters into a :class:`.network.SelfAttentionNetwork`
and its training windows (:mod:`.windows`); fitting with early stopping and
refit, checkpoints, ``partial_fit``'s growth and optimizer statistics,
saving, loading and pickling are :class:`~skcrnn._torch.TorchRecommender`'s.
"""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from .._events import Sequences
from .._torch.estimator import TorchRecommender
from .._torch.output import log_proba, unseen_item_bias
from .._torch.validation import Validation
from .network import SelfAttentionNetwork
from .windows import TrainingWindows, query_hidden, with_history

#: Scoring runs in double precision from the float32 weights, so that a row's
#: score does not depend on the rows it is computed with.
_INFERENCE_DTYPE = torch.float64
#: Early stopping compares means over many events: single precision is ample.
_VALIDATION_DTYPE = torch.float32


class SelfAttentionRecommender(TorchRecommender):
    """Causal self-attention over each user's recent items (SASRec-like).

    The next-item distribution after a user's history ``x_1, ..., x_n`` is
    read from the window of the last ``W = max_history`` tokens of the
    sequence ``START, x_1, ..., x_n``: the last ``W`` items once ``n >= W``,
    else a learned start token followed by all ``n`` items (an empty history
    is the start token alone). Each token's input is its item embedding (or
    the start token's) plus a learned embedding of its slot in the window
    (and, with ``user_embedding``, the user's vector); ``n_blocks`` pre-norm
    transformer blocks of causal multi-head attention and a position-wise
    feed-forward layer follow, then a layer norm; the hidden state ``h`` of
    the window's last slot gives::

        P(next item | history) = softmax(W_out h + b)

    over the whole catalogue, with an output layer shared by all users whose
    weights ``W_out`` are, by default, the item embeddings themselves
    (``tie_weights``; see :mod:`skcrnn._attention.network`).
    The history is the user's fitted events, then those given to
    :meth:`update` and :meth:`partial_fit`, then the earlier rows of a scored
    frame; only its last ``max_history`` items are read.

    Training cuts each user's token sequence into windows of ``max_history``
    tokens that end every ``train_stride`` tokens, from the end backwards
    (the most recent events are predicted from full windows; a user's first
    window starts with the start token); every slot of a window predicts
    the next item at once (causal mask), and each window trains on its last
    ``train_stride`` slots, the earlier ones being their context: each event
    is trained on once per epoch, from at least ``max_history -
    train_stride + 1`` tokens of the window scoring reads (all of them near
    the start of a history). Windows of all users are shuffled into new
    batches of ``batch_size`` windows at every epoch; a step's loss is the
    mean full-softmax cross-entropy of its windows' trained events. Dropout
    applies in training only. The last ``validation_fraction`` of each user's events
    are held out for early stopping, predicted from the windows that
    scoring would use; with ``refit=True`` a new network then trains on all
    events for the best number of epochs.

    With ``user_embedding=True`` each user also has a learned vector, added
    to every input of the user's windows (the collaborative idea: per-user
    parameters on top of the shared model). The user vectors start at zero
    and are updated lazily (only the batch's users move). A user without a
    vector, unknown or added by :meth:`update`, gets the **mean of the user
    vectors**.

    Parameters
    ----------
    hidden_size : int, default=64
        Width ``H`` of the embeddings and hidden states; a multiple of
        ``n_heads``.
    n_blocks : int, default=2
        Transformer blocks.
    n_heads : int, default=1
        Attention heads per block.
    max_history : int, default=50
        The window ``W``: a prediction reads the last ``W`` items of the
        history (fewer items and the start token for shorter histories).
        At least 1.
    dropout : float, default=0.3
        Dropout rate in training, in [0, 1).
    user_embedding : bool, default=False
        Learn a vector per user, added to the inputs.
    tie_weights : bool, default=True
        Use the item embeddings as the output layer's weights (as SASRec);
        ``False`` learns a separate output matrix. Tied weights halve the
        item parameters; on MovieLens (the documented validation split) they
        lowered the error by about 0.2 nats.
    train_stride : int or None, default=None
        Tokens between the ends of consecutive training windows of a user,
        in ``[1, max_history]``: smaller strides predict each event from a
        longer context, like scoring's, at the cost of more windows
        (``max_history / train_stride`` times the forward passes). ``None``
        is ``max(1, max_history // 5)``; ``max_history`` gives windows that do
        not overlap.
    learning_rate : float, default=0.005
        Step size of the optimizer.
    optimizer : {"adam", "rmsprop"}, default="adam"
        Adam (betas 0.9, 0.999) or RMSProp with TensorFlow's rule.
    rho : float, default=0.997
        Decay of RMSProp's running average of squared gradients, in [0, 1).
    epsilon : float, default=1e-8
        RMSProp's epsilon (inside the square root) or Adam's (outside).
    batch_size : int, default=64
        Windows per training step.
    max_epochs : int, default=50
        Most passes over the training events.
    validation_fraction : float, default=0.1
        Share of each user's events (the last ones; at least one when the
        user has two or more) held out for early stopping, in [0, 1). ``0``
        trains on everything for ``max_epochs`` epochs.
    n_iter_no_change : int, default=3
        Stop after this many epochs without a lower validation loss.
    refit : bool, default=True
        After early stopping, train a new network (same seed) on all events
        for ``best_epoch_`` epochs; ``False`` keeps the best epoch's weights.
    warm_start : bool, default=False
        scikit-learn's ``warm_start``: ``fit`` on a fitted model starts from
        its network and optimizer statistics instead of a new
        initialisation, then trains on all of its events with the same
        validation split, early stopping and refit (which starts from the
        same warm weights). The vocabularies are those of the new events:
        known users and items keep their rows, new ones get the rows that
        :meth:`partial_fit` gives them, those absent are dropped. A
        fit-time parameter changed since the fit (``hidden_size`` ...) makes
        the warm ``fit`` raise ``ValueError``. An unfitted model (and a
        ``clone``) fits from scratch. Not supported by
        :func:`~skcrnn.fit_distributed`.
    partial_epochs : int or "auto", default="auto"
        Passes over the new events in each :meth:`partial_fit` call on a
        fitted model; ``0`` only grows the network for the new users and
        items. ``"auto"`` stops by itself: the last ``validation_fraction``
        of each user's new events are held out, and passes run until their
        loss has not improved for ``n_iter_no_change`` passes, at most
        ``max_epochs``, keeping the best pass's weights (or the starting
        ones). ``fit`` ignores it.
    replay_epochs : int or "auto", default="auto"
        Passes over every stored history (as ``fit`` trains them) after the
        ``partial_epochs`` passes of each :meth:`partial_fit` call on a
        fitted model: rehearsal of the old events, so that learning the new
        ones does not forget them. A pass costs an epoch of ``fit``; ``0``
        trains on the new events only; ``"auto"`` stops as for
        ``partial_epochs``. With either ``"auto"``, the held-out events are
        left out of every pass of the call, and with ``refit=True`` they are
        then learned by one more pass over all the new events. ``fit``
        ignores it.
    repeat_bias : float, default=0.0
        Added, when scoring, to the logit of every item the user has already
        had (stored events, and the scored events before the predicted one),
        the distribution normalised again: ``p'(i)`` is ``p(i) exp(b)`` for a
        seen item and ``p(i)`` for another, over their sum. A negative value
        moves probability to new items (ratings logs, where no one rates an
        item twice), a positive one to repeats. Training is unchanged, so a
        fitted model can be tuned with ``set_params(repeat_bias=...)``
        without a refit (see :doc:`/tuning`). ``0`` is the model as trained.
    device : str, default="auto"
        Torch device of training and scoring: ``"auto"`` (CUDA when
        available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    n_jobs : int or None, default=None
        CPU threads of torch during ``fit`` and scoring, with scikit-learn's
        meaning (``None`` is 1, ``-1`` all processors); torch's own setting
        is restored afterwards.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the batches and the dropout masks; with an int,
        training on the CPU is reproducible.
    verbose : int, default=0
        Progress bar and one line per epoch when positive.
    checkpoint_dir : str, path-like or None, default=None
        Directory of a checkpoint rewritten after every epoch, from which a
        fit that stopped early resumes (as
        :class:`~skcrnn.CollaborativeGRURecommender`'s).
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        What scoring does with unknown items (and users): leave them out with
        a warning (unknown users are scored from an empty history, with the
        mean user vector) or raise ``ValueError``.

    Attributes
    ----------
    network_ : SelfAttentionNetwork
        The trained torch module (float32), on ``device_``.
    history_ : list of dict
        Per epoch of the run with validation: ``epoch``, ``train_loss``,
        ``valid_loss``, ``seconds``, ``events_per_second``.
    best_epoch_ : int or None
        The epoch of lowest validation loss (None without validation).
    n_iter_ : int
        Epochs of the run with validation.
    refit_history_ : list of dict or None
        The same for the refit on all events; None without refit.
    optimizer_state_ : dict or None
        The optimizer's statistics after the last training, on the CPU
        (``partial_fit`` continues from them).
    partial_history_ : list of dict
        One entry per :meth:`partial_fit` call since ``fit``: ``n_events``,
        ``n_users`` and ``epochs``.
    device_ : str
        Where ``network_`` lives.
    classes_ : ndarray of shape (n_items,)
        The known items, sorted; columns of :meth:`predict_proba`.
    users_ : ndarray of shape (n_users,)
        The known users, sorted (then those added by :meth:`update` and
        :meth:`partial_fit`).
    n_items_, n_users_ : int
        How many of each.

    Notes
    -----
    There is no per-user cache: scoring reads the last ``max_history``
    items of the stored history, so :meth:`update` only appends the events.

    **Incremental learning.** On a fitted model, :meth:`partial_fit` grows
    the network (a copy: the old one is never changed): a new item's input
    embedding is the mean of the known items', its output weights are zero
    and its output bias gives it, after an empty history (an unknown user),
    the add-one (Laplace) probability of an item never seen, ``1 / (N +
    V)`` (``N`` events seen before the call, ``V`` items after it); a new
    user, or one added by :meth:`update`, gets the mean user vector. Then
    ``partial_epochs`` passes train on the new events only, each predicted
    from its window of the user's history (the earlier events are context,
    not trained on), with the optimizer continuing from
    ``optimizer_state_``; no checkpoint. Then
    ``replay_epochs`` passes train on every stored history, old and new
    events, as ``fit`` does. With ``"auto"`` (the defaults) each stage runs
    until the loss of the held-out last events of the call stops improving.

    Scoring runs in double precision from the float32 weights, without
    dropout: a row's log-probability does not depend on the other rows of
    the call, and :meth:`predict_proba` rows sum to 1.

    Examples
    --------
    >>> import pandas as pd
    >>> from skcrnn import SelfAttentionRecommender
    >>> events = pd.DataFrame({"user": [1, 1, 1, 2, 2, 2],
    ...                        "item": ["a", "b", "a", "b", "c", "b"],
    ...                        "timestamp": [1, 2, 3, 1, 2, 3]})
    >>> model = SelfAttentionRecommender(hidden_size=8, max_epochs=2,
    ...                                  device="cpu", random_state=0)
    >>> model.fit(events).recommend([1], k=2)["rank"].tolist()
    [1, 2]
    """

    _parameter_constraints = {
        **TorchRecommender._parameter_constraints,
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "max_history": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "user_embedding": ["boolean"],
        "tie_weights": ["boolean"],
        "train_stride": [None, Interval(Integral, 1, None, closed="left")],
    }

    #: See BaseRecommender: these take effect at once after fit.
    _scoring_time_params = TorchRecommender._scoring_time_params | {
        "dropout", "train_stride"}

    def __init__(self, hidden_size=64, n_blocks=2, n_heads=1, max_history=50,
                 dropout=0.3, user_embedding=False, learning_rate=0.005, *,
                 tie_weights=True, train_stride=None,
                 optimizer="adam", rho=0.997, epsilon=1e-8, batch_size=64,
                 max_epochs=50, validation_fraction=0.1, n_iter_no_change=3,
                 refit=True, warm_start=False, partial_epochs="auto",
                 replay_epochs="auto",
                 repeat_bias=0.0, device="auto", n_jobs=None,
                 random_state=None, verbose=0, checkpoint_dir=None, user_col="user",
                 item_col="item", time_col="timestamp", handle_unknown="ignore"):
        self.hidden_size = hidden_size
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.max_history = max_history
        self.dropout = dropout
        self.user_embedding = user_embedding
        self.tie_weights = tie_weights
        self.train_stride = train_stride
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.rho = rho
        self.epsilon = epsilon
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.refit = refit
        self.warm_start = warm_start
        self.partial_epochs = partial_epochs
        self.replay_epochs = replay_epochs
        self.repeat_bias = repeat_bias
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    # ------------------------------------------------------------ the network
    def _check_fit_params(self):
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of "
                f"n_heads={self.n_heads}: each head attends with "
                f"hidden_size / n_heads dimensions.")
        if self.train_stride is not None and self.train_stride > self.max_history:
            raise ValueError(
                f"train_stride={self.train_stride} must be at most "
                f"max_history={self.max_history}: windows further apart than "
                f"their width would leave events out of training.")
        super()._check_fit_params()

    def _new_network(self):
        return SelfAttentionNetwork(
            self.n_users_, self.n_items_, self.hidden_size, self.n_blocks,
            self.n_heads, self.max_history, user_embedding=self.user_embedding,
            tie_weights=self.tie_weights)

    @classmethod
    def _network_type(cls):
        return SelfAttentionNetwork

    def _context(self, sequences, history_lengths):
        """:func:`.windows.with_history` of the stored histories."""
        return with_history(self._history, sequences.user_codes, history_lengths,
                            self.max_history, sequences)

    def _training_plan(self, network, sequences, n_train, device, continuation=False):
        previous = np.zeros(sequences.n_groups, dtype=np.int64)
        if continuation:  # _history holds the new events already
            previous = self._history.lengths[sequences.user_codes] - sequences.lengths
        context, tails, lower = self._context(sequences, previous)
        stride = self.train_stride
        if stride is None:
            stride = max(1, self.max_history // 5)
        windows = TrainingWindows(context, tails, tails + n_train, lower,
                                  self.max_history, device, stride)
        batch_size, dropout = self.batch_size, float(self.dropout)

        def batches(rng):
            return windows.draw(rng, batch_size)

        def steps(batch):
            return windows.steps(network, batch, dropout)
        return batches, steps, -(-len(windows) // batch_size)

    def _validation(self, network, sequences, n_train):
        return _Validation(network, sequences, n_train)

    def _initial_rows(self, name, known, n_new, n_seen):
        """New items: the output bias of an unseen item's prior; other rows: the mean.

        A new item's input embedding (and user vector) is the mean of the
        known ones; untied, its output weights are zero. Its output bias is
        :func:`~skcrnn._torch.output.unseen_item_bias` after an empty history
        (an unknown user's start token), less, with tied weights, the part of
        its logit there that its embedding gives.
        """
        if name == "output_weight":
            return known.new_zeros((n_new,) + tuple(known.shape[1:]))
        if name == "output_bias":
            hidden, logits = self._empty_history_logits()
            bias = unseen_item_bias(logits, n_new, n_seen)
            if self.network_.tie_weights:
                embedding = self.network_.item_embedding
                mean = super()._initial_rows("item_embedding", embedding, 1, n_seen)
                bias -= float(hidden @ mean[0].to(hidden.dtype))
            return known.new_full((n_new,), bias)
        return super()._initial_rows(name, known, n_new, n_seen)

    def _empty_history_logits(self):
        """``network_``'s hidden state and logits after an empty history (double)."""
        network = self.network_
        empty = self._context(_no_events(-1), np.zeros(1, dtype=np.int64))[0]
        hidden = query_hidden(network, empty, np.zeros(1, dtype=np.int64),
                              np.zeros(1, dtype=np.int64), _INFERENCE_DTYPE)[0]
        return hidden, (network.output_matrix().to(_INFERENCE_DTYPE) @ hidden
                        + network.output_bias.to(_INFERENCE_DTYPE))

    def _check_restored(self):
        config = self.network_.config
        expected = {"n_items": self.n_items_, "hidden_size": self.hidden_size,
                    "n_blocks": self.n_blocks, "n_heads": self.n_heads,
                    "max_history": self.max_history,
                    "user_embedding": bool(self.user_embedding),
                    "tie_weights": bool(self.tie_weights)}
        odd = {key: config[key] for key, value in expected.items()
               if config[key] != value}
        if odd or config["n_users"] > self.n_users_:
            raise ValueError(f"its network ({config}) does not match its "
                             f"parameters and vocabularies")

    # -------------------------------------------------------------- scoring
    def _network_log_proba(self, sequences, prefixes, targets=None):
        users = sequences.user_codes
        history_lengths = self._history.lengths[np.maximum(users, 0)]
        context, tails, _ = self._context(sequences, history_lengths)
        groups = sequences.group_of(prefixes)
        queries = tails[groups] + prefixes - sequences.prefix_start[groups]
        hidden = query_hidden(self.network_, context, groups, queries,
                              _INFERENCE_DTYPE)
        network = self.network_
        return log_proba(hidden, network.output_matrix(), network.output_bias, targets,
                         dtype=_INFERENCE_DTYPE)


class _Validation(Validation):
    """Validation of the attention network (:class:`~skcrnn._torch.validation.Validation`).

    The held-out events are predicted from the windows that scoring reads
    (the user's earlier events, held-out ones included), without dropout,
    in single precision.
    """

    def __init__(self, network, sequences, n_train):
        super().__init__(sequences, n_train)
        self.network = network

    def log_proba(self):
        held_out = self.held_out
        hidden = query_hidden(self.network, self.sequences, held_out.groups,
                              held_out.positions, _VALIDATION_DTYPE)
        return log_proba(hidden, self.network.output_matrix(), self.network.output_bias,
                         held_out.targets, dtype=_VALIDATION_DTYPE)


def _no_events(user_code):
    """One group of user ``user_code`` without items."""
    return Sequences(np.array([user_code], dtype=np.int64), np.zeros(2, dtype=np.int64),
                     np.zeros(0, dtype=np.int64))
