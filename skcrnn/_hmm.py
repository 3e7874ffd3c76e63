"""A categorical hidden Markov model shared by all users (``hmmlearn``).

``hmmlearn`` learns the parameters by EM; the next-item probabilities come
from the forward (filtering) recursion implemented here, which only looks at
the past. ``hmmlearn``'s ``predict_proba`` is the smoothed posterior, which
looks at the future, and is not used.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from ._base import BaseRecommender


class HMMRecommender(BaseRecommender):
    r"""Hidden Markov model over items, shared by all users.

    A :class:`hmmlearn.hmm.CategoricalHMM` with ``n_states`` hidden states
    (start probabilities :math:`\pi`, transitions :math:`A`, emissions
    :math:`B` over all known items) is fitted by EM on all users' training
    sequences (one sequence per user). The probability of the next item is
    the one-step prediction of the forward recursion,

    .. math::

        P(x_t = j \mid x_{<t}) = (\hat\alpha_{t-1} A)\, B_{:, j},
        \qquad
        \hat\alpha_t \propto (\hat\alpha_{t-1} A) \odot B_{:, x_t},

    with :math:`\hat\alpha` the normalized filtered state distribution and
    :math:`\pi` in place of :math:`\hat\alpha_{t-1} A` for a sequence's first
    item. The recursion of a known user continues from its state at the end
    of its training sequence (``final_state_``); a user unknown to the model
    starts from :math:`\pi`. Summed over a sequence, the log-probabilities are
    ``hmmlearn``'s ``score`` of that sequence.

    Emissions are smoothed with a Dirichlet pseudo-count: each EM update sets
    :math:`B_{k,j} \propto n_{k,j} + \lambda` (``hmmlearn``'s
    ``emissionprob_prior = 1 + emission_smoothing``), with :math:`n_{k,j}` the
    expected count of item :math:`j` in state :math:`k`, so no known item has
    probability 0. EM uses ``hmmlearn``'s ``"scaling"`` implementation (about
    ten times faster than ``"log"`` at the same result).

    *Incremental learning.* :meth:`partial_fit` continues EM from the
    current :math:`\pi`, :math:`A` and :math:`B` (``hmmlearn``'s
    ``init_params=""``) on every stored history, the new events included,
    for at most ``n_iter`` iterations with the same ``tol``; :math:`B` first
    gets a column for each new item, which each state emits with the
    probability that an EM update gives an item it never emitted: the
    pseudo-count :math:`\lambda` against the state's expected count of
    stored events, :math:`\lambda / (N_k + \lambda V)`, the known items'
    emissions scaled down so that each row still sums to 1. Then every
    user's ``final_state_`` is filtered again over its whole history.

    Parameters
    ----------
    n_states : int, default=10
        Number of hidden states.
    n_iter : int, default=20
        Most EM iterations of :meth:`fit`, and of each :meth:`partial_fit`.
    tol : float, default=1e-2
        EM stops when the total training log-likelihood (nats, summed over
        all events) gains less than ``tol``.
    emission_smoothing : float, default=0.1
        Pseudo-count :math:`\lambda` added to every item of every state's
        expected emission counts (``> 0``).
    random_state : int, RandomState instance or None, default=None
        Seeds the EM initialization (one int seed drawn in :meth:`fit`).
    verbose : int, default=0
        Let ``hmmlearn`` report each EM iteration when positive.
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        See :class:`UniformRecommender`.

    Attributes
    ----------
    hmm_ : hmmlearn.hmm.CategoricalHMM
        The fitted model; its symbols are the item codes (positions in
        ``classes_``).
    startprob_ : ndarray of shape (n_states,)
        :math:`\pi`.
    transmat_ : ndarray of shape (n_states, n_states)
        :math:`A` (a row of a state that was never left is set to :math:`\pi`,
        in ``hmm_`` too).
    emissionprob_ : ndarray of shape (n_states, n_items)
        The smoothed :math:`B`, columns in the order of ``classes_``.
    final_state_ : ndarray of shape (n_users, n_states)
        Each known user's :math:`\hat\alpha` after its last event (those
        appended by :meth:`update` and :meth:`partial_fit` included).
    n_iter_ : int
        EM iterations run by the last :meth:`fit` or :meth:`partial_fit`.
    classes_, users_, n_items_, n_users_
        See :class:`UniformRecommender`.

    Examples
    --------
    >>> from skcrnn import HMMRecommender
    >>> from skcrnn.datasets import make_sequences
    >>> from skcrnn.model_selection import suffix_split
    >>> train, test = suffix_split(make_sequences(20, 100, 2000, random_state=0))
    >>> model = HMMRecommender(n_states=4, n_iter=10, random_state=0)
    >>> model.fit(train).score(test) > -4.6  # uniform: -log(100)
    True
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "n_states": [Interval(Integral, 1, None, closed="left")],
        "n_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, None, None, closed="both")],
        "emission_smoothing": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: See BaseRecommender: these take effect at once after fit.
    _scoring_time_params = BaseRecommender._scoring_time_params | {
        "n_iter", "tol", "random_state", "verbose"}
    _saved_attributes = {
        "startprob_": ("n_states",), "transmat_": ("n_states", "n_states"),
        "emissionprob_": ("n_states", "n_items"),
        "final_state_": ("n_users", "n_states"), "n_iter_": int,
    }

    def __init__(self, n_states=10, *, n_iter=20, tol=1e-2,
                 emission_smoothing=0.1, random_state=None, verbose=0,
                 user_col="user", item_col="item", time_col="timestamp",
                 handle_unknown="ignore"):
        self.n_states = n_states
        self.n_iter = n_iter
        self.tol = tol
        self.emission_smoothing = emission_smoothing
        self.random_state = random_state
        self.verbose = verbose
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    def _fit_sequences(self, sequences):
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        model = self._new_hmm(seed)
        model.fit(sequences.items[:, None], sequences.lengths)
        self._adopt_hmm(model, sequences)

    def _learn_events(self, continuation, previous_history):
        """Continue EM on every stored history from the current parameters."""
        model = self._continued_hmm(previous_history)
        model.fit(self._history.items[:, None], self._history.lengths)
        self._adopt_hmm(model, self._history)

    def _new_hmm(self, seed, init_params="ste"):
        from hmmlearn.hmm import CategoricalHMM

        return CategoricalHMM(
            n_components=self.n_states, n_features=self.n_items_,
            emissionprob_prior=1.0 + self.emission_smoothing,
            n_iter=self.n_iter, tol=self.tol, random_state=seed,
            verbose=bool(self.verbose), init_params=init_params,
            implementation="scaling")

    def _continued_hmm(self, previous_history):
        """A ``CategoricalHMM`` whose EM starts from the fitted parameters.

        ``init_params=""`` keeps hmmlearn from drawing new ones. Items that
        are new since the fit get emission columns from
        :func:`_emissions_with_new_items`. The model gets a copy of
        ``hmm_``'s generator, which EM does not draw from.
        """
        model = self._new_hmm(_copied_random_state(self.hmm_.random_state),
                              init_params="")
        model.startprob_ = self.startprob_.copy()
        model.transmat_ = self.transmat_.copy()
        n_new = self.n_items_ - self.emissionprob_.shape[1]
        if n_new:
            occupancy = self.hmm_.predict_proba(
                previous_history.items[:, None], previous_history.lengths).sum(axis=0)
            model.emissionprob_ = _emissions_with_new_items(
                self.emissionprob_, occupancy, self.emission_smoothing, n_new)
        else:
            model.emissionprob_ = self.emissionprob_.copy()
        return model

    def _adopt_hmm(self, model, sequences):
        """Take the parameters that EM reached in ``model``, and filter every
        user's state to the end of its sequence in ``sequences``."""
        never_left = model.transmat_.sum(axis=1) == 0
        if never_left.any():
            transmat = model.transmat_.copy()
            transmat[never_left] = model.startprob_
            model.transmat_ = transmat
        self.hmm_ = model
        self.n_iter_ = int(model.monitor_.iter)
        self.startprob_ = model.startprob_
        self.transmat_ = model.transmat_
        self.emissionprob_ = model.emissionprob_
        self._set_emission_t()
        start = np.broadcast_to(self.startprob_, (sequences.n_groups, self.n_states))
        self.final_state_ = _forward(sequences, start, self.transmat_,
                                     self._emission_t)[0]

    def _set_emission_t(self):
        # rows gathered by item at every step of the recursion
        self._emission_t = np.ascontiguousarray(self.emissionprob_.T)

    def _fitted_state(self):
        return {**super()._fitted_state(),
                "hmm_random_state": _random_state_to_plain(self.hmm_.random_state)}

    def _restore_fitted_state(self, record, device):
        super()._restore_fitted_state(record, device)
        if self.startprob_.shape != (self.n_states,):
            raise ValueError(f"the file has {len(self.startprob_)} states, its "
                             f"parameters n_states={self.n_states}")
        # hmm_ is rebuilt around the saved parameters (its EM monitor is not)
        self.hmm_ = self._new_hmm(_random_state_from_plain(record["hmm_random_state"]))
        self.hmm_.startprob_ = self.startprob_
        self.hmm_.transmat_ = self.transmat_
        self.hmm_.emissionprob_ = self.emissionprob_
        self._set_emission_t()

    def _append_events(self, continuation):
        final_state = np.empty((self.n_users_, self.n_states))
        final_state[:len(self.final_state_)] = self.final_state_
        final_state[continuation.user_codes] = _forward(
            continuation, self._start(continuation.user_codes), self.transmat_,
            self._emission_t)[0]
        self.final_state_ = final_state

    def _start(self, users):
        """The predicted state before each group's first item (``-1``: a stranger)."""
        known = (users >= 0) & (users < len(self.final_state_))
        return np.where(known[:, None],
                        self.final_state_[np.where(known, users, 0)] @ self.transmat_,
                        self.startprob_)

    def _log_proba(self, sequences, prefixes, targets=None):
        start = self._start(sequences.user_codes)
        groups = sequences.group_of(prefixes)
        positions = prefixes - sequences.prefix_start[groups]
        _, predicted = _forward(sequences, start, self.transmat_,
                                self._emission_t, groups, positions, targets)
        if targets is not None:
            return np.log(predicted)
        return np.log(predicted @ self.emissionprob_)


def _random_state_to_plain(random_state):
    """The state of ``hmm_``'s generator (hmmlearn makes it a RandomState) as
    plain values, so that ``hmm_.sample`` goes on alike after loading."""
    _, key, position, has_gauss, cached = check_random_state(
        random_state).get_state()
    return {"key": key.tolist(), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _copied_random_state(random_state):
    """A new generator in the state of ``random_state`` (a seed or a
    ``RandomState``), which stays as it is."""
    return _random_state_from_plain(_random_state_to_plain(random_state))


def _emissions_with_new_items(emissionprob, occupancy, smoothing, n_new):
    r"""Emission rows grown by ``n_new`` items that no state has emitted yet.

    An EM update sets :math:`B_{k,j} = (n_{k,j} + \lambda) / (N_k + \lambda V)`,
    with :math:`N_k` the expected number of events in state :math:`k` and
    :math:`V` the items. An item that state :math:`k` never emitted gets the
    smoothing mass :math:`\lambda` alone: each new item gets
    :math:`\lambda / (N_k + \lambda V')` over the grown vocabulary
    :math:`V' = V + n_{new}`, and the known items keep their counts,
    :math:`B_{k,j} (N_k + \lambda V) / (N_k + \lambda V')`, so that each row
    sums to 1.

    Parameters
    ----------
    emissionprob : ndarray of shape (n_states, n_items)
        The fitted emissions :math:`B`.
    occupancy : ndarray of shape (n_states,)
        :math:`N_k`: the posterior state probabilities summed over the stored
        events before the new ones.
    smoothing : float
        :math:`\lambda`, ``emission_smoothing``.
    n_new : int
        Items appended to the vocabulary.

    Returns
    -------
    ndarray of shape (n_states, n_items + n_new)
    """
    n_states, n_items = emissionprob.shape
    mass = occupancy[:, None] + smoothing * n_items
    counts = np.hstack([emissionprob * mass, np.full((n_states, n_new), smoothing)])
    return counts / (mass + smoothing * n_new)


def _random_state_from_plain(plain):
    random_state = np.random.RandomState()
    random_state.set_state(("MT19937", np.asarray(plain["key"], dtype=np.uint32),
                            plain["position"], plain["has_gauss"],
                            plain["cached_gaussian"]))
    return random_state


def _forward(sequences, start, transmat, emission_t, groups=None, positions=None,
             targets=None):
    """Forward recursion over every group at once, one time step at a time.

    Parameters
    ----------
    sequences : Sequences
        The groups' items.
    start : ndarray of shape (n_groups, n_states)
        Each group's predicted state distribution before its first item.
    transmat : ndarray of shape (n_states, n_states)
    emission_t : ndarray of shape (n_items, n_states)
        The emission matrix, transposed.
    groups, positions : ndarray of int, optional
        Requested prefixes: the first ``positions[j]`` items of group
        ``groups[j]``.
    targets : ndarray of int, optional
        One item per requested prefix: return its probability instead of the
        predicted state distribution (saves an ``(n_requests, n_states)``
        array).

    Returns
    -------
    filtered : ndarray of shape (n_groups, n_states)
        Each group's normalized state distribution after its last item
        (``start`` for an empty group).
    predicted : ndarray of shape (len(groups), n_states) or (len(groups),)
        The predicted state distribution after each requested prefix (before
        the next item), or with ``targets`` the probability of each target.
    """
    lengths = sequences.lengths
    # longest groups first: the groups still running at step t are a prefix
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    first_item = sequences.indptr[:-1][order]
    n_steps = int(sorted_lengths.max(initial=0))
    n_running = np.searchsorted(-sorted_lengths, -np.arange(n_steps + 1))
    state = np.array(start, dtype=np.float64)[order]
    filtered = state.copy()
    if groups is None:
        groups = positions = np.empty(0, dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    request_rank = rank[groups]
    by_position = np.argsort(positions, kind="stable")
    bounds = np.searchsorted(positions[by_position], np.arange(n_steps + 2))
    predicted = np.empty((len(groups),) if targets is not None
                         else (len(groups), state.shape[1]))
    for t in range(n_steps + 1):
        asked = by_position[bounds[t]:bounds[t + 1]]
        if targets is None:
            predicted[asked] = state[request_rank[asked]]
        else:
            predicted[asked] = np.einsum("ij,ij->i", state[request_rank[asked]],
                                         emission_t[targets[asked]])
        if t == n_steps:
            break
        running = n_running[t]
        items = sequences.items[first_item[:running] + t]
        posterior = state[:running] * emission_t[items]
        posterior /= posterior.sum(axis=1, keepdims=True)
        ending = n_running[t + 1]  # groups whose last item is item t
        filtered[ending:running] = posterior[ending:]
        state[:running] = posterior @ transmat
    unsorted = np.empty_like(filtered)
    unsorted[order] = filtered
    return unsorted, predicted
