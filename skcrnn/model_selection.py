"""The paper's protocol: filtering, suffix splits and cross-validation."""

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.validation import check_is_fitted

from ._events import check_events, time_order
from .metrics import _user_entropy

#: Entropy cut-offs (nats) of the paper's data sets.
PAPER_ENTROPY_CUTOFFS = {"brightkite": 2.5, "lastfm": 3.0}


class EventFilter(TransformerMixin, BaseEstimator):
    """Keep the items and users that pass the paper's filters.

    ``fit`` drops, in this order: items seen fewer than ``min_item_count``
    times; then users with fewer than ``min_user_events`` remaining events;
    then users whose item entropy (nats, over their remaining events) is at
    most ``min_entropy``. Items are not filtered again after users are
    dropped, as in the paper's released protocol. ``transform`` keeps the rows
    whose item and user passed.

    Parameters
    ----------
    min_item_count : int, default=10
        Least number of occurrences of a kept item.
    min_user_events : int, default=11
        Least number of remaining events of a kept user.
    min_entropy : float, default=0.0
        Kept users have an item entropy strictly above this.
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.

    Attributes
    ----------
    items_ : ndarray
        The kept items, sorted.
    users_ : ndarray
        The kept users, sorted.
    """

    _parameter_constraints = {
        "min_item_count": [Interval(Integral, 0, None, closed="left")],
        "min_user_events": [Interval(Integral, 0, None, closed="left")],
        "min_entropy": [Interval(Real, None, None, closed="neither")],
        "user_col": "no_validation",
        "item_col": "no_validation",
        "time_col": "no_validation",
    }

    def __init__(self, min_item_count=10, min_user_events=11, min_entropy=0.0, *,
                 user_col="user", item_col="item", time_col="timestamp"):
        self.min_item_count = min_item_count
        self.min_user_events = min_user_events
        self.min_entropy = min_entropy
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col

    def fit(self, X, y=None):
        """Learn which items and users pass the filters.

        Parameters
        ----------
        X : pandas.DataFrame
            Events.
        y : None
            Ignored.

        Returns
        -------
        self : EventFilter
        """
        self._validate_params()
        users, items, _ = check_events(X, self.user_col, self.item_col,
                                       self.time_col)
        item_labels, item_codes = np.unique(items, return_inverse=True)
        kept_item = np.bincount(item_codes) >= self.min_item_count
        rows = kept_item[item_codes]
        user_labels, user_codes = np.unique(users[rows], return_inverse=True)
        kept_user = np.bincount(user_codes, minlength=len(user_labels)) >= (
            self.min_user_events)
        rows_left = kept_user[user_codes]
        entropy = _user_entropy(users[rows][rows_left], items[rows][rows_left])
        self.users_ = np.asarray(entropy.index[entropy.to_numpy() > self.min_entropy])
        self.items_ = item_labels[kept_item]
        return self

    def transform(self, X):
        """Keep the rows whose item and user passed the filters.

        Parameters
        ----------
        X : pandas.DataFrame
            Events.

        Returns
        -------
        pandas.DataFrame
            A new frame with the kept rows (index and columns preserved).
        """
        check_is_fitted(self)
        users, items, _ = check_events(X, self.user_col, self.item_col,
                                       self.time_col)
        keep = (pd.Index(self.items_).get_indexer(items) >= 0) & (
            pd.Index(self.users_).get_indexer(users) >= 0)
        return X.loc[keep].copy()


def _test_sizes(n_events, test_size, min_test, max_test):
    """Per-user held-out sizes: round half to even, clipped, >= 1 training event."""
    sizes = np.clip(np.rint(test_size * n_events), min_test, max_test)
    return np.minimum(sizes.astype(np.int64), n_events - 1)


def _positions_from_end(X, user_col, item_col, time_col):
    """Per row: user group, number of the user's events, position from the end.

    Position 0 is the user's last event (by time, ties in row order).
    """
    users, items, times = check_events(X, user_col, item_col, time_col)
    groups, _ = pd.factorize(users)
    order = time_order(groups, times)
    counts = np.bincount(groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order)) - starts[groups[order]]
    return groups, items, counts[groups], counts[groups] - 1 - position


def _drop_unseen_items(train_rows, test_rows, items):
    seen = pd.Index(pd.unique(items[train_rows]))
    return test_rows[seen.get_indexer(items[test_rows]) >= 0]


_split_params = {
    "test_size": [Interval(Real, 0, 1, closed="neither")],
    "min_test": [Interval(Integral, 0, None, closed="left")],
    "max_test": [Interval(Integral, 1, None, closed="left")],
}


@validate_params({"X": [pd.DataFrame], **_split_params, "user_col": "no_validation",
                  "item_col": "no_validation", "time_col": "no_validation"},
                 prefer_skip_nested_validation=True)
def suffix_split(X, test_size=0.025, min_test=3, max_test=500, *, user_col="user",
                 item_col="item", time_col="timestamp"):
    """Hold out the last events of each user.

    The last ``round(test_size * n_u)`` events of each user (Python's
    ``round``, half to even; clipped to ``[min_test, max_test]`` and to
    ``n_u - 1`` so that every user keeps a training event) go to ``test``;
    test rows whose item never occurs in ``train`` are then dropped.

    Parameters
    ----------
    X : pandas.DataFrame
        Events.
    test_size : float, default=0.025
        Share of each user's events held out, in (0, 1).
    min_test, max_test : int, default=3, 500
        Bounds of each user's held-out block.
    user_col, item_col, time_col : str
        Column names.

    Returns
    -------
    train, test : pandas.DataFrame
        Rows of ``X`` (index and columns preserved, in ``X``'s row order).
    """
    _check_bounds(min_test, max_test)
    groups, items, n_events, from_end = _positions_from_end(
        X, user_col, item_col, time_col)
    held_out = from_end < _test_sizes(n_events, test_size, min_test, max_test)
    train_rows = np.flatnonzero(~held_out)
    test_rows = _drop_unseen_items(train_rows, np.flatnonzero(held_out), items)
    return X.iloc[train_rows].copy(), X.iloc[test_rows].copy()


def _check_bounds(min_test, max_test):
    if min_test > max_test:
        raise ValueError(f"min_test ({min_test}) must not exceed max_test ({max_test}).")


class UserSuffixSplit:
    """Cross-validation over time: train on a prefix, test on the next block.

    Each user's block has ``round(test_size * n_u)`` events (clipped to
    ``[min_test, max_test]``). Split ``i`` (``0 <= i < n_splits``) tests on the
    ``i``-th block counted back from the end of each user's sequence and
    trains on everything before that block; the cuts move back in time as
    ``i`` grows. A user without a training event in a split is left out of
    that split's test block, and so are test rows whose item does not occur in
    the split's training rows. Use as ``GridSearchCV(..., cv=UserSuffixSplit())``.

    Parameters
    ----------
    n_splits : int, default=3
        Number of splits, ``>= 1``.
    test_size : float, default=0.025
        Share of each user's events in a block.
    min_test, max_test : int, default=3, 500
        Bounds of each user's block.
    user_col, item_col, time_col : str
        Column names.
    """

    def __init__(self, n_splits=3, test_size=0.025, min_test=3, max_test=500, *,
                 user_col="user", item_col="item", time_col="timestamp"):
        self.n_splits = n_splits
        self.test_size = test_size
        self.min_test = min_test
        self.max_test = max_test
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col

    def __repr__(self):
        return (f"UserSuffixSplit(n_splits={self.n_splits}, test_size="
                f"{self.test_size}, min_test={self.min_test}, "
                f"max_test={self.max_test})")

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits.

        Returns
        -------
        int
        """
        return self.n_splits

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` positional row indices of each split.

        Parameters
        ----------
        X : pandas.DataFrame
            Events.
        y, groups : None
            Ignored (the users are read from ``X``).

        Yields
        ------
        train, test : ndarray of int
            Positions of rows of ``X``, ascending.
        """
        if not isinstance(self.n_splits, Integral) or self.n_splits < 1:
            raise ValueError(f"n_splits must be a positive integer; got "
                             f"{self.n_splits!r}.")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be in (0, 1); got {self.test_size!r}.")
        _check_bounds(self.min_test, self.max_test)
        _, items, n_events, from_end = _positions_from_end(
            X, self.user_col, self.item_col, self.time_col)
        block = np.clip(np.rint(self.test_size * n_events), self.min_test,
                        self.max_test).astype(np.int64)
        block = np.maximum(block, 1)
        for i in range(self.n_splits):
            cut = (i + 1) * block  # events at distance >= cut from the end train
            train_rows = np.flatnonzero(from_end >= cut)
            in_test = (from_end >= i * block) & (from_end < cut) & (cut < n_events)
            yield train_rows, _drop_unseen_items(train_rows, np.flatnonzero(in_test),
                                                 items)


@validate_params({"X": [pd.DataFrame],
                  "dataset": [StrOptions(set(PAPER_ENTROPY_CUTOFFS))],
                  "user_col": "no_validation", "item_col": "no_validation",
                  "time_col": "no_validation"},
                 prefer_skip_nested_validation=True)
def preprocess_like_paper(X, dataset="brightkite", *, user_col="user",
                          item_col="item", time_col="timestamp"):
    """The paper's whole protocol in one call.

    Items seen fewer than 10 times are dropped, then users with 10 or fewer
    remaining events, then users whose item entropy is at most 2.5 nats
    (Brightkite) or 3.0 nats (Last.fm); the last 2.5 % of each user's events
    (at least 3, at most 500) are held out, without items unseen in training.

    Parameters
    ----------
    X : pandas.DataFrame
        Events.
    dataset : {"brightkite", "lastfm"}, default="brightkite"
        Which data set's entropy cut-off to use.
    user_col, item_col, time_col : str
        Column names.

    Returns
    -------
    train, test : pandas.DataFrame
        See :func:`suffix_split`.
    """
    columns = dict(user_col=user_col, item_col=item_col, time_col=time_col)
    kept = EventFilter(10, 11, PAPER_ENTROPY_CUTOFFS[dataset],
                       **columns).fit_transform(X)
    if len(kept) == 0:
        raise ValueError("No event passes the paper's filters (items seen at least "
                         "10 times, users with more than 10 events and enough "
                         "item entropy).")
    return suffix_split(kept, 0.025, 3, 500, **columns)
