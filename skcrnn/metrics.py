"""Metrics of next-item predictions: the paper's error and ranking views."""

from numbers import Integral

import numpy as np
import pandas as pd
from scipy.special import digamma

from ._events import check_events, mean_of_group_means


def sequence_nll(estimator, X):
    """The paper's error: mean over users of the mean negative log-likelihood.

    Parameters
    ----------
    estimator : fitted recommender or Pipeline ending in one
    X : pandas.DataFrame
        Held-out events (typically the ``test`` of :func:`~skcrnn.model_selection.suffix_split`).

    Returns
    -------
    float
        ``-estimator.score(X)`` in nats; lower is better.
    """
    return -estimator.score(X)


def recall_at_k(estimator, X, k=10):
    """How often the observed item is among the ``k`` most probable items.

    Averaged like the paper's error: the mean over users of each user's mean.
    Items tied with the observed one count as if ties were broken uniformly at
    random, so a uniform model gets exactly ``k / n_items``.

    Parameters
    ----------
    estimator : fitted recommender or Pipeline ending in one
    X : pandas.DataFrame
        Held-out events.
    k : int, default=10
        Size of the list, ``>= 1``.

    Returns
    -------
    float
        Between 0 and 1; greater is better.
    """
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    greater, ties, groups = _rank_statistics(estimator, X)
    # the observed item takes each of positions greater+1 .. greater+ties+1
    # with equal probability
    hit = np.clip((k - greater) / (ties + 1), 0.0, 1.0)
    return mean_of_group_means(hit, groups)


def mrr(estimator, X):
    """Mean reciprocal rank of the observed item.

    Averaged like the paper's error (mean over users of each user's mean);
    ties are broken uniformly at random in expectation.

    Parameters
    ----------
    estimator : fitted recommender or Pipeline ending in one
    X : pandas.DataFrame
        Held-out events.

    Returns
    -------
    float
        Between 0 and 1; greater is better.
    """
    greater, ties, groups = _rank_statistics(estimator, X)
    # E[1 / rank] for a rank uniform on greater+1 .. greater+ties+1:
    # (H(greater + ties + 1) - H(greater)) / (ties + 1), H the harmonic numbers
    reciprocal = (digamma(greater + ties + 2) - digamma(greater + 1)) / (ties + 1)
    return mean_of_group_means(reciprocal, groups)


def user_entropy(X, *, user_col="user", item_col="item", time_col="timestamp"):
    """Shannon entropy (nats) of each user's item distribution.

    Parameters
    ----------
    X : pandas.DataFrame
        Events.
    user_col, item_col, time_col : str
        Column names.

    Returns
    -------
    pandas.Series
        Indexed by user label (sorted), named ``"entropy"``.
    """
    users, items, _ = check_events(X, user_col, item_col, time_col)
    return _user_entropy(users, items).rename_axis(user_col)


def _user_entropy(users, items):
    pair_counts = pd.DataFrame({"u": users, "i": items}).value_counts(sort=False)
    pair_counts = pair_counts.reset_index(name="n")
    totals = pair_counts.groupby("u", sort=True)["n"].transform("sum")
    p = pair_counts["n"] / totals
    entropy = (-p * np.log(p)).groupby(pair_counts["u"], sort=True).sum()
    return entropy.rename("entropy")


def entropy_bins(X, n_bins=3, *, user_col="user", item_col="item",
                 time_col="timestamp"):
    """Each user's bin by the Shannon entropy of its items.

    Users are sorted by entropy and cut into ``n_bins`` bins of (nearly) equal
    size, bin 0 holding the most predictable users, as in the paper's error
    characterization.

    Parameters
    ----------
    X : pandas.DataFrame
        Events.
    n_bins : int, default=3
        Number of bins (at most the number of users).
    user_col, item_col, time_col : str
        Column names.

    Returns
    -------
    pandas.Series
        Indexed by user label, integer bins ``0 .. n_bins - 1``, named
        ``"entropy_bin"``.
    """
    if not isinstance(n_bins, Integral) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}.")
    entropy = user_entropy(X, user_col=user_col, item_col=item_col,
                           time_col=time_col)
    if n_bins > len(entropy):
        raise ValueError(f"n_bins={n_bins} is more than the {len(entropy)} users.")
    rank = entropy.rank(method="first").to_numpy() - 1
    bins = (rank * n_bins // len(entropy)).astype(np.int64)
    return pd.Series(bins, index=entropy.index, name="entropy_bin")


def _rank_statistics(estimator, X):
    """Rank statistics from a recommender or from the last step of a Pipeline."""
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        for _, transformer in steps[:-1]:
            if transformer is not None and transformer != "passthrough":
                X = transformer.transform(X)
        estimator = steps[-1][1]
    if not hasattr(estimator, "_rank_statistics"):
        raise TypeError(f"{type(estimator).__name__} is not a skcrnn recommender.")
    return estimator._rank_statistics(X)
