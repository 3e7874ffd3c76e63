"""Properties that hold for every estimator on any event frame (hypothesis)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from .estimators import ALL_ESTIMATORS, ids

PROPERTY_SETTINGS = settings(max_examples=15, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def event_frames(draw, min_events=2, max_events=30):
    """Frames with distinct times (so that row order never matters)."""
    n = draw(st.integers(min_events, max_events))
    users = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    items = draw(st.lists(st.sampled_from("abcdef"), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 10 ** 6), min_size=n, max_size=n,
                          unique=True))
    return pd.DataFrame({"user": users, "item": items, "timestamp": times})


def split_by_time(frame):
    """Train on the first 70% of events (by time), score the rest."""
    cut = np.quantile(frame["timestamp"], 0.7)
    return frame[frame["timestamp"] <= cut], frame[frame["timestamp"] > cut]


def fitted_and_test(estimator, frame):
    train, test = split_by_time(frame)
    model = clone(estimator).fit(train)
    known = test[test["item"].isin(model.classes_)]
    return model, train, known


def quietly(call, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown users are expected here
        return call(*args)


parametrize = pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)


@parametrize
@PROPERTY_SETTINGS
@given(frame=event_frames())
def test_predict_proba_is_a_distribution_matching_score_samples(estimator, frame):
    model, _, test = fitted_and_test(estimator, frame)
    if test.empty:
        return
    proba = quietly(model.predict_proba, test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    columns = pd.Index(model.classes_).get_indexer(test["item"])
    observed = proba[np.arange(len(test)), columns]
    np.testing.assert_allclose(np.exp(quietly(model.score_samples, test)), observed,
                               rtol=1e-7)


@parametrize
@PROPERTY_SETTINGS
@given(frame=event_frames(), seed=st.integers(0, 2 ** 16))
def test_score_is_invariant_to_row_order(estimator, frame, seed):
    model, train, test = fitted_and_test(estimator, frame)
    if test.empty:
        return
    other = clone(estimator).fit(train.sample(frac=1.0, random_state=seed))
    shuffled = test.sample(frac=1.0, random_state=seed + 1)
    assert quietly(other.score, shuffled) == pytest.approx(
        quietly(model.score, test), rel=1e-9, abs=1e-12)


DETERMINISTIC = [e for e in ALL_ESTIMATORS if "random_state" not in e.get_params()]


@pytest.mark.parametrize("estimator", DETERMINISTIC, ids=ids)
@PROPERTY_SETTINGS
@given(frame=event_frames(), seed=st.integers(0, 2 ** 16))
def test_score_is_invariant_to_relabelling(estimator, frame, seed):
    """Any bijection of user and item labels gives the same score.

    Only for estimators without random initialization: a seeded model draws
    its initial weights in the order of the (sorted) labels, so relabelling
    changes its draw; that it is invariant in distribution is not testable
    exactly.
    """
    model, train, test = fitted_and_test(estimator, frame)
    if test.empty:
        return
    rng = np.random.default_rng(seed)
    user_map = dict(zip(range(4), rng.permutation(["w", "x", "y", "z"])))
    item_map = dict(zip("abcdef", rng.permutation(list("pqrstu"))))

    def relabel(events):
        return events.assign(user=events["user"].map(user_map),
                             item=events["item"].map(item_map))

    other = clone(estimator).fit(relabel(train))
    assert quietly(other.score, relabel(test)) == pytest.approx(
        quietly(model.score, test), rel=1e-9, abs=1e-12)


@parametrize
@PROPERTY_SETTINGS
@given(frame=event_frames(min_events=4))
def test_scoring_a_suffix_is_the_difference_of_prefix_scores(estimator, frame):
    """Chain rule: scores of a prefix do not depend on the rows after it, so
    sum(prefix + suffix) - sum(prefix) is the suffix's score after the prefix."""
    model, _, test = fitted_and_test(estimator, frame)
    if len(test) < 2:
        return
    cut = np.median(test["timestamp"])
    prefix = test[test["timestamp"] <= cut]
    whole = quietly(model.score_samples, test)
    alone = quietly(model.score_samples, prefix)
    in_whole = pd.Series(whole, index=test.index)
    np.testing.assert_allclose(in_whole.loc[prefix.index].to_numpy(), alone, rtol=1e-7)
    suffix_part = whole.sum() - alone.sum()
    assert suffix_part == pytest.approx(
        in_whole.drop(prefix.index).sum(), rel=1e-7, abs=1e-9)
