"""The collaborative RNN recommender (Ko, Maystre & Grossglauser, ACML 2016).

The estimator turns its parameters into a :class:`.network.CollaborativeRNN`
and its training batches (:mod:`.tbptt`); the copy gate (``copy_history``)
is :mod:`.copy`'s; everything else of fitting, scoring, saving and loading
is :class:`~skcrnn._torch.TorchRecommender`'s.
"""

import os
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._torch.batching import make_batches, window
from .._torch.estimator import TorchRecommender
from .._torch.output import UnigramProposal, log_proba, unseen_item_bias
from .._torch.validation import Validation
from .copy import copy_gate, mixture
from .network import CollaborativeRNN
from .recurrence import forward_states
from .tbptt import BPTT, chunk_losses, n_chunks
from .weights import BASIS_RANK, best_low_rank, mean_low_rank

#: Type of inference: double precision keeps a row's score independent of the
#: rows it is batched with (float32 kernels round differently per batch shape).
_INFERENCE_DTYPE = torch.float64
#: Early stopping compares the validation losses of epochs, means over
#: thousands of events: single precision is ample and twice as fast.
_VALIDATION_DTYPE = torch.float32


class CollaborativeGRURecommender(TorchRecommender):
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
    shared matrices). :meth:`partial_fit` continues learning from new
    events (see "Incremental learning" below).

    Parameters
    ----------
    hidden_size : int, default=32
        Size ``H`` of the hidden state.
    learning_rate : float, default=0.0075
        Step size of the optimizer.
    cell : {"gru", "tanh"}, default="gru"
        The recurrent cell.
    recurrent_weights : {"per_user", "shared", "low_rank", "basis"}, default="per_user"
        One set of recurrent matrices per user (collaborative RNN), one for
        everybody (P-GRU), shared matrices plus a low-rank term per user
        (see ``rank`` and "Low-rank per-user weights" below), or shared
        matrices plus each user's combination of ``rank`` shared directions,
        a user being ``rank`` numbers (see "Compact per-user weights" below).
    rank : int or None, default=None
        With ``recurrent_weights="low_rank"``, the rank ``r`` of each user's
        term, in ``[1, hidden_size]``; None means ``min(4, hidden_size)``.
        With ``"basis"``, the number ``K`` of shared directions (each user's
        coefficients), in ``[1, k * hidden_size ** 2]`` (``k = 3`` for the
        GRU, 1 for tanh): the users' deviations from the shared matrices,
        stacked, have rank ``K``; None means 16. Only with ``"low_rank"`` or
        ``"basis"``.
    deviation_penalty : float, default=0.0
        Shrinks each user's recurrent matrices toward matrices shared by all
        users (see "Regularised collaborative weights" below), ``>= 0`` and
        finite. ``0`` is the unpenalised model. Only with
        ``recurrent_weights="per_user"``, ``"low_rank"`` or ``"basis"``.
    dropout : float, default=0.0
        Dropout rate in ``[0, 1)`` on the item input terms and on the states
        that feed the output layer, in training only (scoring uses every
        weight, exactly and deterministically). ``0`` is no dropout.
    loss : {"full", "sampled"}, default="full"
        The training loss: the cross-entropy of the full softmax over the
        catalogue, or a sampled softmax against ``n_negatives`` negatives
        per step (see "Sampled softmax" below). Scoring always uses the full
        softmax, exactly.
    n_negatives : int or None, default=None
        With ``loss="sampled"``, the negatives each training step draws
        (with replacement), fewer than the items; None means 128, or one
        fewer than the items of a smaller catalogue (one item: no negative
        to draw, the full softmax, whose loss is then zero). Only with
        ``"sampled"``.
    negative_power : float, default=0.75
        With ``loss="sampled"``, the power ``alpha`` in [0, 1] of the
        proposal ``Q(j) ~ count_j ** alpha`` over the items (0: uniform, 1:
        the unigram; 0.75 as word2vec). Only with ``"sampled"``. Higher
        powers are refused: they give the rare items a probability that
        underflows, and their sampled loss is no longer defined.
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
        items and follows the events, without learning from them.
        ``"auto"`` stops by itself: the last ``validation_fraction`` of each
        user's new events are held out, and passes run until their loss (the
        per-user mean, as ``fit`` validates) has not improved for
        ``n_iter_no_change`` passes, at most ``max_epochs``; the best pass's
        weights are kept (those the call started from if no pass beats
        them). ``fit`` ignores it.
    replay_epochs : int or "auto", default="auto"
        Passes over every stored history (each from its start, as ``fit``
        trains, within ``max_train_chunks``) after the ``partial_epochs``
        passes of each :meth:`partial_fit` call on a fitted model: rehearsal
        of the old events, so that learning the new ones does not forget
        them. Every user's cached state is then recomputed with the new
        weights. A pass costs an epoch of ``fit`` on all the events; ``0``
        trains on the new events only; ``"auto"`` runs passes until the
        held-out new events' loss stops improving, as for
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
    max_train_chunks : int or None, default=None
        Train on at most this many chunks of each user's latest training
        events (the paper's Last.fm setting; in :meth:`partial_fit`, of the
        new events); ``None`` keeps all.
    initial_state : float in [-1, 1], default=0.0
        Value of every coordinate of the state before a user's first event,
        within the range of the states the cells produce.
    copy_history : bool, default=False
        Mix the softmax with the user's own past items through a learned,
        state-dependent gate (see "Copying from the history" below). Off,
        the model is the paper's.
    copy_decay : float, default=1.0
        With ``copy_history``, how fast a past event's weight decays with
        each later event, in ``(0, 1]``: ``1`` copies in proportion to
        counts, smaller values favour recent items. Only with
        ``copy_history=True``.
    device : str, default="auto"
        Torch device of training and scoring: ``"auto"`` (CUDA when
        available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    n_jobs : int or None, default=None
        CPU threads of torch during ``fit`` and scoring, with scikit-learn's
        meaning: ``None`` is 1 (unless a :func:`joblib.parallel_config`
        context says otherwise), ``-1`` all processors. One thread is the
        default because a step's kernels are tiny: on a busy machine several
        threads wait for each other at every kernel, and joblib workers
        (``GridSearchCV(n_jobs=...)``) would oversubscribe the cores. Large
        catalogues on an idle machine gain from more. torch's own setting is
        restored afterwards.
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
    optimizer_state_ : dict or None
        The optimizer's statistics after the last training (the last run of
        ``fit``, then each :meth:`partial_fit`), on the CPU: ``{"name":
        optimizer, "state": {parameter: {statistic: tensor}}}``. Saved with
        the model; ``partial_fit`` continues from them. None for a model
        loaded from a file saved before they were kept.
    partial_history_ : list of dict
        One entry per :meth:`partial_fit` call since ``fit``: ``n_events``
        (the new events), ``n_users`` (the users who had some) and
        ``epochs`` (per epoch, as in ``history_``, ``valid_loss`` NaN).
    history_weights_ : scipy.sparse.csr_matrix of shape (n_users, n_items)
        With ``copy_history``: the decayed counts ``w(i)`` of each user's
        items at the end of the user's history (the copy component's cache,
        advanced by :meth:`update` and :meth:`partial_fit`).
    history_weights_decay_ : float
        With ``copy_history``: the ``copy_decay`` of ``history_weights_``.
        ``copy_decay`` is a scoring-time parameter: set to another value
        after fit, the cache is recomputed from the histories when next read.
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
    **Incremental learning.** On a fitted model, :meth:`partial_fit` grows
    the vocabularies, then learns from the new events only:

    - *Growth.* The network is copied at the grown sizes (the old one is
      never changed). A new item's input row is the mean of the known
      items' rows, its output weights are zero and its output bias is set
      so that at the initial state, where a user without history starts,
      each new item has the add-one (Laplace) unigram probability of an item
      never seen, ``1 / (N + V)``, with ``N`` the events in the histories
      before the call and ``V`` the items after it (the known items'
      probabilities there are scaled by ``1 - m / (N + V)`` for ``m`` new
      items; everywhere they keep their odds).
      A new user, and a user added by :meth:`update` (who has no matrices
      yet), gets the mean of the known users' recurrent matrices: the
      fallback it was scored with so far. The optimizer's statistics of
      new rows start at zero.
    - *Learning.* ``partial_epochs`` passes of the same truncated BPTT (chunks,
      loss, optimizer with lazy rows) over the new events, each user's
      chunks starting from its cached state, where its history left off
      (the initial state for a new user), the optimizer continuing from
      ``optimizer_state_`` (from zero statistics when there are none, as
      after loading an older file, or when they are of the other
      ``optimizer``). Fixed counts of passes (``partial_epochs=N``) have
      no validation or early stopping; there is no checkpoint, and it
      trains on ``device_``. The batch order is drawn from a
      generator seeded by ``random_state`` and the call's number, so that
      with an int ``random_state`` on the CPU the same calls give the same
      model, with or without a save and load between them. Then
      ``replay_epochs`` passes over every stored history, old and new
      events, as ``fit`` trains them (from each user's initial state).
      With ``"auto"`` (the defaults) each of the two stages runs until the
      loss of the held-out last events of the call stops improving (see
      the parameters); ``partial_history_[-1]`` records every pass and the
      best one.
    - *States.* Each user with new events has its cached state advanced
      over them with the new weights, from its previous cached state, not
      recomputed over its whole history: a call costs what its new events
      do however long the histories grow, and the state continues the one
      that training started from. Other users keep theirs; ``fit`` on all
      events recomputes everything, and so does a call with
      ``replay_epochs > 0``.

    **Low-rank per-user weights.** With ``recurrent_weights="low_rank"``
    each user's recurrent matrix is, per gate block (the GRU's update,
    reset and candidate matrices, each ``H x H``; the tanh cell's one)::

        W^(u) = W + U_u V_u^T,    U_u, V_u of shape H x rank

    with ``W`` shared by all users. A user costs ``2 k H r`` numbers instead
    of the per-user model's ``k H^2`` (``k = 3`` for the GRU, 1 for tanh),
    and a training step reads and updates only its batch's users' ``U, V``
    (with their optimizer statistics). With ``rank = hidden_size`` the
    family is that of ``"per_user"``. Training starts with ``U_u = 0`` and
    ``V_u`` drawn like the other weights: every user starts at the shared
    matrices, and the network is then that of ``"shared"`` with the same
    seed. An unknown user is scored with the mean of the known users'
    matrices, ``W + mean_u U_u V_u^T``; a user added by :meth:`partial_fit`
    (also one first added by :meth:`update`) starts from the best rank-``r``
    approximation of that mean (truncated SVD per block: ``U`` the
    singular vectors times the values, ``V`` the orthonormal ones), which is
    the mean itself when ``rank = hidden_size``.

    **Compact per-user weights.** With ``recurrent_weights="basis"`` each
    user's recurrent matrices (all gate blocks at once, ``H x k H``) are::

        W^(u) = W + sum_{j=1..K} c_uj A_j,    K = rank

    with ``W`` and the directions ``A_j`` shared by all users and the
    coefficients ``c_u`` (``K`` numbers) the user's own: a user costs ``K``
    numbers instead of ``k H^2`` (``"per_user"``) or ``2 k H r``
    (``"low_rank"``), so that a million users fit where the per-user
    matrices of a few tens of thousands do. A training step composes its
    batch's matrices with one product of the batch's coefficients and the
    directions, reads and updates only its users' coefficients (with their
    optimizer statistics), and updates ``W`` and the directions every step.
    Training starts with ``c_u = 0`` and the directions drawn from
    ``N(0, 1 / (H K))``: every user starts at the shared matrices (the
    network is that of ``"shared"`` with the same seed), the coefficients
    receive gradients from the first step, and a step moves a user's
    matrices by about as much whatever ``K``. The map from coefficients to
    matrices is linear, so the mean of the known users' matrices, which an
    unknown user is scored with, is that of the mean coefficients, and a
    user added by :meth:`partial_fit` (also one first added by
    :meth:`update`) starts at the mean coefficients: exactly the fallback
    it was scored with. ``deviation_penalty`` penalises ``||sum_j c_uj
    A_j||^2``. On the Foursquare check-ins (paper's protocol) ``K = 16``
    scores 6.085 nats against the dense C-GRU's 5.924 and P-GRU's 6.143
    (see the "Scaling out" page of the documentation).

    **Regularised collaborative weights.** With ``deviation_penalty =
    lambda > 0``, each user's recurrent matrices are written as shared
    matrices plus the user's deviation, ``W^(u) = W + D_u`` (a dense ``D_u``
    with ``recurrent_weights="per_user"``, ``D_u = U_u V_u^T`` per block with
    ``"low_rank"``, ``D_u = sum_j c_uj A_j`` with ``"basis"``), and training
    minimises::

        sum over training events of -log P(item | history)
            + lambda * sum_u ||D_u||^2        (squared Frobenius norm, all gates)

    per pass over the events: each step adds the penalty of its users, each
    user's spread over its chunks in proportion to their events, and
    divides it by the step's ``rows x chunk_size`` slots like the
    cross-entropy. It is a Gaussian prior, of variance ``1 / (2 lambda)``,
    on the deviations: users with few events stay close to the shared
    dynamics, users with many can leave them. ``lambda = 0`` is the
    collaborative model: ``"per_user"`` then keeps the paper's
    parameterisation (one free set per user, initialised independently),
    so that the default model and its figures are exactly the paper's; with
    ``lambda > 0`` the dense deviations start at zero (every user at the
    shared matrices). As ``lambda`` grows the deviations vanish and the
    model becomes P-GRU (``recurrent_weights="shared"``). The deviations are
    read and updated lazily, like per-user matrices; the shared matrices
    every step. An unknown user gets the mean matrices, ``W + mean_u D_u``.

    **Sampled softmax.** With ``loss="sampled"`` each training step draws
    ``S = n_negatives`` items, with replacement, from ``Q(j) ~ c_j **
    negative_power`` (``c_j``: item ``j``'s events among those ``fit``
    trains on; in :meth:`partial_fit`, among every event of the histories),
    shared by the step's events, and an event with target ``y`` and state
    ``h`` costs::

        -log [ exp(o'_y) / (exp(o'_y) + sum_{s: j_s != y} exp(o'_{j_s})) ],
        o'_j = w_j . h + b_j - log(S Q(j))

    where ``w_j, b_j`` are item ``j``'s output weights and bias: a softmax
    over the target and the negatives, each logit corrected by the log of
    its expected count among the draws (the ``log Q`` correction), a
    negative equal to the target (an accidental hit) left out. A step
    costs ``O(events x S x H)`` instead of ``O(events x V x H)``, and reads
    and updates (lazily, statistics included) only the input rows of its
    items and the output rows of its targets and negatives. The draws come
    from a generator seeded per batch from ``random_state``, so that an int
    makes training reproducible (and checkpoints resume it exactly).
    ``history_``'s ``train_loss`` is then the sampled loss; validation,
    early stopping and all scoring use the full softmax. The copy gate
    (``copy_history``), whose mixture needs the full softmax's probability
    of the target, cannot be trained this way.

    **Copying from the history.** Users revisit: check-ins return to the
    same places, listeners to the same songs. With ``copy_history=True``
    the next-item distribution is::

        P(i | past) = (1 - g) softmax(W_out h_t + b)_i + g w(i) / Z
        g = sigmoid(v . h_t + a log Z + c)

    where ``w(i) = sum_{s < t, x_s = i} copy_decay ** (t - 1 - s)`` weighs
    the user's past events (training history, updates and the earlier rows
    of a scored continuation), ``Z = sum_i w(i)``, and ``v``, ``a``, ``c``
    are learned with the rest on the same likelihood. A user with no past
    gets the softmax alone. Rows of :meth:`predict_proba` still sum to 1,
    and :meth:`score_samples` is exact. The gate starts at ``g = 1/2``.

    Scoring runs in double precision from the float32 weights, so that a
    row's log-probability does not depend on the other rows of the call.

    Training back-propagates through each chunk with the cell's
    hand-written derivative (:mod:`skcrnn._rnn.cells`); setting the
    environment variable ``SKCRNN_BPTT=autograd`` before ``fit`` trains with
    autograd through the same step instead (the reference it is tested
    against: the same numbers, about three times slower). See the "Training
    speed" page of the documentation.

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
        **TorchRecommender._parameter_constraints,
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "cell": [StrOptions({"gru", "tanh"})],
        "candidate_activation": [StrOptions({"tanh", "sigmoid"})],
        "recurrent_weights": [StrOptions({"per_user", "shared", "low_rank", "basis"})],
        "rank": [None, Interval(Integral, 1, None, closed="left")],
        "deviation_penalty": [Interval(Real, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "loss": [StrOptions({"full", "sampled"})],
        "n_negatives": [None, Interval(Integral, 1, None, closed="left")],
        "negative_power": [Interval(Real, 0, 1, closed="both")],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "max_train_chunks": [None, Interval(Integral, 1, None, closed="left")],
        "initial_state": [Interval(Real, -1, 1, closed="both")],
        "copy_history": ["boolean"],
        "copy_decay": [Interval(Real, 0, 1, closed="right")],
    }

    #: See BaseRecommender: these take effect at once after fit.
    _scoring_time_params = TorchRecommender._scoring_time_params | {
        "dropout", "loss", "n_negatives", "negative_power",
        "chunk_size", "max_train_chunks", "copy_decay"}

    _fitted_tensors = {"final_states_": "final_states"}

    def __init__(self, hidden_size=32, learning_rate=0.0075, *, cell="gru",
                 recurrent_weights="per_user", rank=None, deviation_penalty=0.0,
                 dropout=0.0, loss="full", n_negatives=None, negative_power=0.75,
                 candidate_activation="sigmoid",
                 optimizer="rmsprop", rho=0.997, epsilon=1e-8, chunk_size=64,
                 batch_size=20, max_epochs=30, validation_fraction=0.1,
                 n_iter_no_change=3, refit=True, warm_start=False,
                 partial_epochs="auto", replay_epochs="auto",
                 repeat_bias=0.0,
                 max_train_chunks=None, initial_state=0.0, copy_history=False,
                 copy_decay=1.0, device="auto",
                 n_jobs=None, random_state=None, verbose=0,
                 checkpoint_dir=None, user_col="user", item_col="item",
                 time_col="timestamp", handle_unknown="ignore"):
        self.hidden_size = hidden_size
        self.learning_rate = learning_rate
        self.cell = cell
        self.recurrent_weights = recurrent_weights
        self.rank = rank
        self.deviation_penalty = deviation_penalty
        self.dropout = dropout
        self.loss = loss
        self.n_negatives = n_negatives
        self.negative_power = negative_power
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
        self.warm_start = warm_start
        self.partial_epochs = partial_epochs
        self.replay_epochs = replay_epochs
        self.repeat_bias = repeat_bias
        self.max_train_chunks = max_train_chunks
        self.initial_state = initial_state
        self.copy_history = copy_history
        self.copy_decay = copy_decay
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
        if not np.isfinite(self.initial_state):
            raise ValueError(
                f"initial_state must be finite; got {self.initial_state!r}.")
        if self.copy_decay != 1.0 and not self.copy_history:
            raise ValueError(
                f"copy_decay={self.copy_decay!r} is only used with "
                f"copy_history=True; set copy_history=True or leave copy_decay "
                f"at 1.0.")
        if self.rank is not None and self.recurrent_weights not in ("low_rank",
                                                                    "basis"):
            raise ValueError(
                f"rank={self.rank!r} is only used with recurrent_weights="
                f"'low_rank' or 'basis', not {self.recurrent_weights!r}; set "
                f"one of them or leave rank at None.")
        if (self.rank is not None and self.recurrent_weights == "low_rank"
                and self.rank > self.hidden_size):
            raise ValueError(
                f"rank={self.rank!r} is larger than hidden_size="
                f"{self.hidden_size!r}: a rank-r term of an H x H matrix has "
                f"r <= H (rank = hidden_size already expresses every matrix).")
        if self.rank is not None and self.recurrent_weights == "basis":
            most = (3 if self.cell == "gru" else 1) * self.hidden_size ** 2
            if self.rank > most:
                raise ValueError(
                    f"rank={self.rank!r} directions are more than the {most} "
                    f"elements of a user's recurrent matrices (cell={self.cell!r}, "
                    f"hidden_size={self.hidden_size!r}): {most} directions already "
                    f"express every matrix.")
        if self.deviation_penalty > 0 and self.recurrent_weights == "shared":
            raise ValueError(
                f"deviation_penalty={self.deviation_penalty!r} penalises each "
                f"user's deviation from the shared recurrent matrices, but "
                f"recurrent_weights='shared' has no per-user deviation; use "
                f"'per_user', 'low_rank' or 'basis', or leave deviation_penalty "
                f"at 0.")
        if self.loss == "full":
            for name, default in (("n_negatives", None), ("negative_power", 0.75)):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} is only used with "
                        f"loss='sampled'; set loss='sampled' or leave {name} at "
                        f"{default!r}.")
        elif self.copy_history:
            raise ValueError(
                "loss='sampled' cannot train the copy gate (copy_history=True), "
                "whose mixture needs the full softmax's probability of each "
                "target; use loss='full' with copy_history=True.")
        bptt = os.environ.get("SKCRNN_BPTT", "manual")
        if bptt not in BPTT:
            raise ValueError(f"The environment variable SKCRNN_BPTT is {bptt!r}; "
                             f"use one of {sorted(BPTT)}.")
        super()._check_fit_params()

    def _recurrent_kind(self):
        """The network's parameterisation of :mod:`.weights` and its rank.

        ``"per_user"`` with a penalty is the shared matrices plus a dense
        deviation (``"deviation"``); without, the paper's parameterisation.
        """
        if self.recurrent_weights == "low_rank":
            rank = self.rank if self.rank is not None else min(4, self.hidden_size)
            return "low_rank", rank
        if self.recurrent_weights == "basis":
            return "basis", self.rank if self.rank is not None else BASIS_RANK
        if self.recurrent_weights == "per_user" and self.deviation_penalty > 0:
            return "deviation", None
        return self.recurrent_weights, None

    def _new_network(self):
        kind, rank = self._recurrent_kind()
        return CollaborativeRNN(
            self.n_users_, self.n_items_, self.hidden_size, cell=self.cell,
            shared=kind == "shared", candidate=self.candidate_activation,
            copy_history=self.copy_history, recurrent_kind=kind, rank=rank)

    @classmethod
    def _network_type(cls):
        return CollaborativeRNN

    def _first_trained(self, n_train):
        """Each user's first training event: the latest ``max_train_chunks`` chunks."""
        if self.max_train_chunks is None:
            return np.zeros_like(n_train)
        return np.maximum(n_train - self.max_train_chunks * self.chunk_size, 0)

    def _training_plan(self, network, sequences, n_train, device, continuation=False):
        first = self._first_trained(n_train)
        start = float(self.initial_state)
        if continuation:
            start = self._continuation_starts(network, sequences, first)
        event_values = self._copy_gate().event_past(sequences, first, n_train,
                                                    continuation, dtype=np.float32)
        trained = window(sequences, first, n_train)
        batches = make_batches(trained, self.batch_size, device,
                               event_values=event_values)
        bptt = os.environ.get("SKCRNN_BPTT", "manual")
        options = {"bptt": bptt, "deviation_penalty": float(self.deviation_penalty),
                   "dropout": float(self.dropout)}
        n_steps = n_chunks(batches, self.chunk_size)
        if self._sampled():
            options["proposal"] = self._proposal(
                self._history.items if continuation else trained.items, device)
        elif not self.dropout > 0:
            def steps(batch):
                return chunk_losses(network, batch, self.chunk_size, start, **options)
            return batches, steps, n_steps

        def noisy_steps(noisy):
            generator = torch.Generator(device=noisy.batch.items.device)
            generator.manual_seed(noisy.seed)
            return chunk_losses(network, noisy.batch, self.chunk_size, start,
                                generator=generator, **options)
        return _NoisyBatches(batches), noisy_steps, n_steps

    def _n_negatives(self):
        """``n_negatives``, or its default for the catalogue (see the parameter)."""
        if self.n_negatives is not None:
            return self.n_negatives
        return min(128, self.n_items_ - 1)

    def _sampled(self):
        """Whether training uses the sampled softmax.

        Not for a catalogue of one item with the default ``n_negatives``:
        there is no negative to draw, and the full softmax over one item
        (whose loss is zero) is what any loss would be.
        """
        return self.loss == "sampled" and self._n_negatives() > 0

    def _proposal(self, items, device):
        """The :class:`~skcrnn._torch.output.UnigramProposal` of the items' counts.

        Raises
        ------
        ValueError
            If there are not more items than ``n_negatives``.
        """
        n_negatives = self._n_negatives()
        if not 1 <= n_negatives < self.n_items_:
            raise ValueError(
                f"loss='sampled' draws n_negatives={n_negatives} negatives, which "
                f"must be fewer than the {self.n_items_} items; lower n_negatives "
                f"(the full softmax, loss='full', is then cheaper anyway).")
        counts = np.bincount(items, minlength=self.n_items_)
        return UnigramProposal(counts, self.negative_power, n_negatives, device)

    def _fit_sequences(self, sequences):
        if self._sampled():  # before any training: a clear error
            self._proposal(sequences.items, "cpu")
        super()._fit_sequences(sequences)

    def _continuation_starts(self, network, sequences, first):
        """Each continuing user's state before its first trained event, by user code.

        The user's cached state (the initial state for a user without one)
        advanced by ``network`` over the events before ``first`` (those that
        ``max_train_chunks`` leaves out); rows of users not in ``sequences``
        are zero. In the network's type, for :func:`.tbptt.chunk_losses`.
        """
        states = forward_states(network, sequences,
                                self._cached_states(sequences.user_codes),
                                sequences.prefix_start + first,
                                dtype=_INFERENCE_DTYPE)
        by_user = states.new_zeros((self.n_users_, network.hidden_size))
        by_user[torch.as_tensor(sequences.user_codes, device=states.device)] = states
        return by_user.to(network.item_input.dtype)

    def _validation(self, network, sequences, n_train):
        first = self._first_trained(n_train)
        past = self._copy_gate().event_past(sequences, first, sequences.lengths)
        return _Validation(network, window(sequences, first, sequences.lengths),
                           n_train - first, self.initial_state, past)

    def _after_fit(self, sequences):
        start = self._start_states(np.full(self.n_users_, -1))
        self.final_states_ = forward_states(
            self.network_, sequences, start, sequences.prefix_start + sequences.lengths,
            dtype=_INFERENCE_DTYPE)
        self._copy_gate().after_fit(sequences)

    def _initial_rows(self, name, known, n_new, n_seen):
        """New items: zero output weights and the bias of an unseen item's prior.

        The bias is :func:`~skcrnn._torch.output.unseen_item_bias` at the
        initial state (where a user without history starts); other rows
        (item inputs, users' recurrent matrices or deviations) are the mean
        of the known ones, except low-rank factors: the best rank-``r``
        approximation of the mean deviation (:func:`.weights.best_low_rank`).
        """
        if name in ("low_rank_left", "low_rank_right"):
            network = self.network_
            mean = mean_low_rank(network.low_rank_left, network.low_rank_right,
                                 torch.float64)
            factors = best_low_rank(mean, network.unit.n_blocks, network.rank)
            rows = factors[0 if name == "low_rank_left" else 1].to(known.dtype)
            return rows.expand((n_new,) + tuple(known.shape[1:]))
        if name == "output_weight":
            return known.new_zeros((n_new,) + tuple(known.shape[1:]))
        if name == "output_bias":
            bias = unseen_item_bias(self._initial_logits(), n_new, n_seen)
            return known.new_full((n_new,), bias)
        return super()._initial_rows(name, known, n_new, n_seen)

    def _initial_logits(self):
        """``network_``'s logits at the initial state, in double precision."""
        weight = self.network_.output_weight.to(_INFERENCE_DTYPE)
        bias = self.network_.output_bias.to(_INFERENCE_DTYPE)
        return bias + weight.sum(dim=1) * float(self.initial_state)

    def _append_events(self, continuation):
        codes = continuation.user_codes
        start = self._cached_states(codes)
        advanced = forward_states(self.network_, continuation, start,
                                  continuation.prefix_start + continuation.lengths,
                                  dtype=_INFERENCE_DTYPE)
        final_states = start.new_empty((self.n_users_, self.network_.hidden_size))
        final_states[:len(self.final_states_)] = self.final_states_
        final_states[torch.as_tensor(codes, device=final_states.device)] = advanced
        self.final_states_ = final_states
        self._copy_gate().append(continuation)

    def _check_restored(self):
        if (self.final_states_.shape != (self.n_users_, self.network_.hidden_size)
                or self.network_.item_input.shape[0] != self.n_items_):
            raise ValueError("its tensors do not match its vocabularies")
        if self.network_.copy_history != bool(self.copy_history):
            raise ValueError("its network does not match copy_history")
        if (self.network_.recurrent_kind, self.network_.rank) != self._recurrent_kind():
            raise ValueError("its network does not match recurrent_weights, rank "
                             "and deviation_penalty")

    def _fitted_state(self):
        return {**super()._fitted_state(), **self._copy_gate().fitted_state()}

    def _restore_fitted_state(self, record, device):
        self._copy_gate().restore(record)
        super()._restore_fitted_state(record, device)

    # ------------------------------------------------------ the copy gate
    def _copy_gate(self):
        """The copy gate's part of the model (:func:`.copy.copy_gate`).

        Every use of ``copy_history`` goes through it: a no-op without.
        """
        return copy_gate(self)

    # -------------------------------------------------------------- scoring
    def _cached_states(self, user_codes):
        """Cached final states, the initial state for users without one (new ones)."""
        cached = user_codes < len(self.final_states_)
        return self._start_states(np.where(cached, user_codes, -1))

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

    def _network_log_proba(self, sequences, prefixes, targets=None):
        start = self._start_states(sequences.user_codes)
        states = forward_states(self.network_, sequences, start, prefixes,
                                dtype=_INFERENCE_DTYPE)
        past = self._copy_gate().prefix_past(sequences, prefixes, targets)
        return log_proba(states, self.network_.output_weight,
                         self.network_.output_bias, targets, dtype=_INFERENCE_DTYPE,
                         adjust=mixture(self.network_, states, past))


class _NoisyBatches:
    """Each epoch's batches with their noise seeds, for :func:`~skcrnn._torch.loop.train`.

    Called with the loop's generator at the start of each epoch, it draws
    the batches' order, then one seed per batch for its generator (dropout
    masks): with an int ``random_state`` training is reproducible, and a
    checkpoint, which records the loop's generator after each epoch,
    resumes the same draws. (Without noise the plan is a plain list: the
    loop draws the order alone, as it always has.)
    """

    def __init__(self, batches):
        self.batches = batches

    def __call__(self, rng):
        order = rng.permutation(len(self.batches))
        seeds = rng.integers(0, 2 ** 63 - 1, size=len(order))
        return [_NoisyBatch(self.batches[i], int(seed)) for i, seed in zip(order, seeds)]


class _NoisyBatch(NamedTuple):
    """A training batch and the seed of its noise."""

    batch: object
    seed: int

    @property
    def n_events(self):
        return self.batch.n_events

    @property
    def lengths(self):
        return self.batch.lengths

    def restricted(self, local_code):
        """This rank's part (:meth:`~skcrnn._torch.batching.Batch.restricted`), same seed."""
        return _NoisyBatch(self.batch.restricted(local_code), self.seed)


class _Validation(Validation):
    """Validation of the recurrent network (:class:`~skcrnn._torch.validation.Validation`).

    ``sequences`` holds each user's (possibly truncated) training part
    followed by the user's held-out events; ``n_head[g]`` is the length of
    the training part. The held-out events are scored continuing from the
    state at the end of the training part, in single precision; with the
    copy gate, ``past`` holds each event's ``log_copy`` and ``log_mass``
    (:meth:`.copy.HistoryCopy.event_past`).
    """

    def __init__(self, network, sequences, n_head, initial_state, past=None):
        super().__init__(sequences, n_head)
        self.network = network
        self.initial_state = float(initial_state)
        self.past = None if past is None else {
            name: values[self.held_out.index] for name, values in past.items()}

    def log_proba(self):
        network = self.network
        start = torch.full((self.sequences.n_groups, network.hidden_size),
                           self.initial_state, dtype=_VALIDATION_DTYPE,
                           device=network.item_input.device)
        states = forward_states(network, self.sequences, start, self.held_out.prefixes,
                                dtype=_VALIDATION_DTYPE)
        return log_proba(states, network.output_weight, network.output_bias,
                         self.held_out.targets, dtype=_VALIDATION_DTYPE,
                         adjust=mixture(network, states, self.past))
