"""Count baselines: uniform, unigram, personal unigram and bigram."""

from numbers import Real

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval

from ._base import BaseRecommender
from ._sparse import (count_in_prefix, count_matrix, dense_rows, lookup,
                      prefix_count_rows)


def _grow_rows(matrix, n_rows):
    """A sparse ``matrix`` with empty rows appended up to ``n_rows``."""
    matrix = sp.csr_matrix(matrix)
    if matrix.shape[0] == n_rows:
        return matrix
    return sp.vstack([matrix, sp.csr_matrix((n_rows - matrix.shape[0],
                                             matrix.shape[1]))], format="csr")


def _prefix_coordinates(sequences, prefixes):
    """Group and length of each prefix id."""
    groups = sequences.group_of(prefixes)
    return groups, prefixes - sequences.prefix_start[groups]


class _CountRecommender(BaseRecommender):
    """A count model: ``partial_fit`` recounts every event of the histories.

    Counting is linear in the events, so recounting the histories (where
    ``partial_fit`` has just appended the new events) costs about what adding
    the new counts would, and makes ``partial_fit`` equal to a ``fit`` on
    every event seen so far (those of ``update`` included), exactly.
    """

    def _learn_events(self, continuation, previous_history):
        self._fit_sequences(self._history)


class UniformRecommender(_CountRecommender):
    """Every known item is equally likely: ``P(i) = 1 / n_items``.

    Parameters
    ----------
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        What scoring does with items the model does not know: leave them out
        (NaN in :meth:`score_samples`, with a warning) or raise ``ValueError``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_items,)
        The known items, sorted; columns of :meth:`predict_proba`.
    users_ : ndarray of shape (n_users,)
        The known users, sorted.
    n_items_, n_users_ : int
        How many of each.

    Examples
    --------
    >>> import pandas as pd
    >>> from skcrnn import UniformRecommender
    >>> events = pd.DataFrame({"user": [1, 1, 2], "item": ["a", "b", "c"],
    ...                        "timestamp": [1, 2, 1]})
    >>> UniformRecommender().fit(events).score(events)  # -log(3)
    -1.0986...
    """

    def __init__(self, *, user_col="user", item_col="item", time_col="timestamp",
                 handle_unknown="ignore"):
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    def _fit_sequences(self, sequences):
        pass

    def _log_proba(self, sequences, prefixes, targets=None):
        shape = (len(prefixes),) if targets is not None else (len(prefixes),
                                                              self.n_items_)
        return np.full(shape, -np.log(self.n_items_))


class UnigramRecommender(_CountRecommender):
    """Global item frequency with add-``alpha`` smoothing.

    ``P(i) = (c_i + alpha) / (N + alpha * n_items)``, where ``c_i`` counts item
    ``i`` among the ``N`` training events. The history plays no role.

    Parameters
    ----------
    alpha : float, default=1.0
        Pseudo-count added to every known item (``>= 0``).
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        See :class:`UniformRecommender`.

    Attributes
    ----------
    item_counts_ : ndarray of shape (n_items,)
        Training counts, in the order of ``classes_``.
    item_log_proba_ : ndarray of shape (n_items,)
        The smoothed log-probabilities.
    classes_, users_, n_items_, n_users_
        See :class:`UniformRecommender`.
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
    }
    _saved_attributes = {"item_counts_": ("n_items",),
                         "item_log_proba_": ("n_items",)}

    def __init__(self, alpha=1.0, *, user_col="user", item_col="item",
                 time_col="timestamp", handle_unknown="ignore"):
        self.alpha = alpha
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    def _fit_sequences(self, sequences):
        self.item_counts_ = np.bincount(sequences.items, minlength=self.n_items_)
        smoothed = self.item_counts_ + self.alpha
        self.item_log_proba_ = np.log(smoothed) - np.log(smoothed.sum())

    def _log_proba(self, sequences, prefixes, targets=None):
        if targets is not None:
            return self.item_log_proba_[targets]
        return np.tile(self.item_log_proba_, (len(prefixes), 1))


class PersonalUnigramRecommender(_CountRecommender):
    """The user's own item frequencies, backed off to the global unigram.

    ``P(i | history) = (c_u(i) + beta * p(i)) / (n_u + beta)``, where
    ``c_u(i)`` counts item ``i`` in the user's history (training events, then
    the user's earlier scored rows: the counts grow as the sequence goes on),
    ``n_u`` is the history's length and ``p(i) = c_i / N`` the global
    (maximum-likelihood) item frequency of the training events. A user
    unknown to the model starts from ``p``.

    Parameters
    ----------
    beta : float, default=1.0
        Strength of the Dirichlet back-off (``> 0``).
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        See :class:`UniformRecommender`.

    Attributes
    ----------
    user_item_counts_ : scipy.sparse.csr_matrix of shape (n_users, n_items)
        Training counts of each user's items.
    global_proba_ : ndarray of shape (n_items,)
        The global item frequencies ``p``.
    classes_, users_, n_items_, n_users_
        See :class:`UniformRecommender`.
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "beta": [Interval(Real, 0, None, closed="neither")],
    }

    _scoring_time_params = BaseRecommender._scoring_time_params | {"beta"}
    _saved_attributes = {"user_item_counts_": ("n_users", "n_items"),
                         "global_proba_": ("n_items",)}

    def __init__(self, beta=1.0, *, user_col="user", item_col="item",
                 time_col="timestamp", handle_unknown="ignore"):
        self.beta = beta
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    def _fit_sequences(self, sequences):
        self.user_item_counts_ = count_matrix(
            sequences.group_of_event, sequences.items,
            (self.n_users_, self.n_items_))
        counts = np.bincount(sequences.items, minlength=self.n_items_)
        self.global_proba_ = counts / counts.sum()

    def _append_events(self, continuation):
        # the appended events are part of the users' histories, which the
        # counts summarize (the global unigram, learned, stays)
        self.user_item_counts_ = _grow_rows(self.user_item_counts_, self.n_users_) + (
            count_matrix(continuation.user_codes[continuation.group_of_event],
                         continuation.items, (self.n_users_, self.n_items_)))

    def _log_proba(self, sequences, prefixes, targets=None):
        groups, lengths = _prefix_coordinates(sequences, prefixes)
        users = sequences.user_codes[groups]
        # each known user's number of fitted events
        totals = np.where(users >= 0, self._history.lengths[np.maximum(users, 0)], 0)
        denominator = np.log(totals + lengths + self.beta)
        if targets is not None:
            counts = (lookup(self.user_item_counts_, users, targets)
                      + count_in_prefix(sequences, groups, lengths, targets))
            return np.log(counts + self.beta * self.global_proba_[targets]) - denominator
        counts = (dense_rows(self.user_item_counts_, users)
                  + prefix_count_rows(sequences, groups, lengths, self.n_items_))
        return np.log(counts + self.beta * self.global_proba_) - denominator[:, None]


class BigramRecommender(_CountRecommender):
    """First-order Markov chain over items, backed off to the unigram.

    ``P(j | previous item i) = (c(i, j) + alpha * p(j)) / (c(i) + alpha)``,
    where ``c(i, j)`` counts the transitions ``i -> j`` inside the users'
    training sequences, ``c(i) = sum_j c(i, j)`` and ``p(j) = c_j / N`` is the
    global item frequency. The previous item of a scored row is the user's
    previous known item (the last training item for the first scored row);
    with no previous item (an unknown user) the probability is ``p(j)``. The
    transition counts are those of ``fit``.

    Parameters
    ----------
    alpha : float, default=1.0
        Strength of the Dirichlet back-off (``> 0``).
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        See :class:`UniformRecommender`.

    Attributes
    ----------
    transition_counts_ : scipy.sparse.csr_matrix of shape (n_items, n_items)
        ``c(i, j)``.
    global_proba_ : ndarray of shape (n_items,)
        ``p``.
    last_item_ : ndarray of shape (n_users,)
        Code of each user's last training item.
    classes_, users_, n_items_, n_users_
        See :class:`UniformRecommender`.
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="neither")],
    }

    _scoring_time_params = BaseRecommender._scoring_time_params | {"alpha"}
    _saved_attributes = {"transition_counts_": ("n_items", "n_items"),
                         "global_proba_": ("n_items",),
                         "last_item_": ("n_users",)}

    def __init__(self, alpha=1.0, *, user_col="user", item_col="item",
                 time_col="timestamp", handle_unknown="ignore"):
        self.alpha = alpha
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    def _fit_sequences(self, sequences):
        items, groups = sequences.items, sequences.group_of_event
        same_user = groups[1:] == groups[:-1]
        self.transition_counts_ = count_matrix(
            items[:-1][same_user], items[1:][same_user],
            (self.n_items_, self.n_items_))
        counts = np.bincount(items, minlength=self.n_items_)
        self.global_proba_ = counts / counts.sum()
        self.last_item_ = items[sequences.indptr[1:] - 1]
        self._set_out_counts()

    def _append_events(self, continuation):
        last_item = np.full(self.n_users_, -1, dtype=np.int64)
        last_item[:len(self.last_item_)] = self.last_item_
        last_item[continuation.user_codes] = continuation.items[
            continuation.indptr[1:] - 1]
        self.last_item_ = last_item

    def _restore_fitted_state(self, record, device):
        super()._restore_fitted_state(record, device)
        self._set_out_counts()

    def _set_out_counts(self):
        self._out_counts = np.asarray(self.transition_counts_.sum(axis=1)).ravel()

    def _previous_items(self, sequences, prefixes):
        groups, lengths = _prefix_coordinates(sequences, prefixes)
        users = sequences.user_codes[groups]
        from_history = np.where(users >= 0, self.last_item_[np.maximum(users, 0)], -1)
        index = sequences.indptr[groups] + lengths - 1
        from_sequence = sequences.items[np.maximum(index, 0)] if len(
            sequences.items) else np.full(len(prefixes), -1)
        return np.where(lengths > 0, from_sequence, from_history)

    def _log_proba(self, sequences, prefixes, targets=None):
        previous = self._previous_items(sequences, prefixes)
        has_previous = previous >= 0
        out_counts = np.where(has_previous,
                              self._out_counts[np.maximum(previous, 0)], 0.0)
        denominator = np.log(out_counts + self.alpha)
        if targets is not None:
            counts = lookup(self.transition_counts_, previous, targets)
            return np.log(counts + self.alpha * self.global_proba_[targets]) - denominator
        counts = dense_rows(self.transition_counts_, previous)
        return np.log(counts + self.alpha * self.global_proba_) - denominator[:, None]
