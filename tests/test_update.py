"""update() for every estimator, and partial_fit() of the count models.

The identity of issue 15: after ``fit(X0)``, ``update(X1)`` then
``score_samples(X2)`` equals ``score_samples(concat(X1, X2))`` on the rows of
``X2`` (the model that did not update scores ``X1``'s rows as the start of
the users' continuations). The count models' ``partial_fit`` equals a ``fit``
on every event seen so far, exactly.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skcrnn import (BigramRecommender, PersonalUnigramRecommender,
                    UniformRecommender, UnigramRecommender)

from .conftest import random_events
from .estimators import ALL_ESTIMATORS, ids

COUNT_MODELS = [UniformRecommender(), UnigramRecommender(alpha=0.5),
                PersonalUnigramRecommender(beta=2.0), BigramRecommender(alpha=3.0)]


@pytest.fixture(scope="module")
def slices():
    """Four consecutive slices of one log; X1 and X2 bring a new user."""
    events = random_events(n_users=6, n_items=10, n_events=300, ties=False,
                           seed=3).sort_values("timestamp", kind="stable")
    x0, x1, x2, x3 = (events.iloc[a:b] for a, b in
                      ((0, 120), (120, 180), (180, 240), (240, 300)))
    late = x1["timestamp"].max()
    x1 = pd.concat([x1, pd.DataFrame({"user": [999, 999], "item": ["i1", "i2"],
                                      "timestamp": [late, late]})],
                   ignore_index=True)
    x2 = pd.concat([x2, pd.DataFrame({"user": [999], "item": ["i3"],
                                      "timestamp": [x2["timestamp"].max()]})],
                   ignore_index=True)
    return x0, x1, x2, x3


def quiet(call, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args)


def continuation_scores(model, x1, x2):
    """``score_samples(concat(X1, X2))`` on the rows of X2."""
    both = pd.concat([x1, x2], ignore_index=True)
    return quiet(model.score_samples, both)[len(x1):]


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_update_then_score_equals_scoring_the_continuation(estimator, slices):
    x0, x1, x2, _ = slices
    reference = quiet(clone(estimator).fit, x0)
    expected = continuation_scores(reference, x1, x2)
    model = quiet(clone(estimator).fit, x0)
    quiet(model.update, x1)
    got = quiet(model.score_samples, x2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert model.n_users_ == reference.n_users_ + 1 and model.users_[-1] == 999
    proba = quiet(model.predict_proba, x2)
    both = pd.concat([x1, x2], ignore_index=True)
    np.testing.assert_allclose(proba, quiet(reference.predict_proba, both)[len(x1):],
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_update_twice_equals_update_once(estimator, slices):
    x0, x1, x2, x3 = slices
    once = quiet(clone(estimator).fit, x0)
    quiet(once.update, pd.concat([x1, x2], ignore_index=True))
    twice = quiet(clone(estimator).fit, x0)
    quiet(twice.update, x1)
    quiet(twice.update, x2)
    np.testing.assert_allclose(quiet(twice.score_samples, x3),
                               quiet(once.score_samples, x3), rtol=1e-12)
    np.testing.assert_array_equal(twice._history.items, once._history.items)
    np.testing.assert_array_equal(twice._history.indptr, once._history.indptr)


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_updated_model_saves_and_loads(estimator, slices, tmp_path):
    x0, x1, x2, _ = slices
    model = quiet(clone(estimator).fit, x0)
    quiet(model.update, x1)
    path = tmp_path / "model.skcrnn"
    model.save(path)
    loaded = type(model).load(path)
    np.testing.assert_allclose(quiet(loaded.score_samples, x2),
                               quiet(model.score_samples, x2), rtol=1e-12)
    with pytest.raises(ValueError, match="earlier than their user's last event"):
        loaded.update(x0.iloc[:3])  # the order is kept through the file


def _snapshot(model, frame):
    return (list(model.users_), list(model.classes_), model._history.items.copy(),
            quiet(model.score_samples, frame))


def _assert_unchanged(model, before, frame):
    after = _snapshot(model, frame)
    assert after[0] == before[0] and after[1] == before[1]
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[3], before[3])


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_events_earlier_than_the_history_are_refused_and_change_nothing(
        estimator, slices):
    x0, x1, x2, x3 = slices
    model = quiet(clone(estimator).fit, pd.concat([x0, x1], ignore_index=True))
    before = _snapshot(model, x3)
    late_and_early = pd.concat([x2, x0.iloc[:2]], ignore_index=True)
    for method in (model.update, model.partial_fit):
        with pytest.raises(ValueError, match=r"2 row\(s\) of X are earlier"):
            quiet(method, late_and_early)
        _assert_unchanged(model, before, x3)


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_update_before_fit_is_refused(estimator, slices):
    with pytest.raises(NotFittedError):
        clone(estimator).update(slices[0])


def test_bad_frames_are_refused_by_update_and_change_nothing(slices):
    x0, x1, _, x3 = slices
    model = UnigramRecommender().fit(x0)
    before = _snapshot(model, x3)
    cases = [(x1.drop(columns="item"), ValueError, r"missing the column\(s\) \['item'\]"),
             (x1.iloc[:0], ValueError, "no rows"),
             (x1.assign(timestamp=np.arange(len(x1), dtype=float)), TypeError,
              "numeric times, but the model was fitted with datetime times")]
    for frame, error, message in cases:
        untouched = frame.copy()
        with pytest.raises(error, match=message):
            model.update(frame)
        pd.testing.assert_frame_equal(frame, untouched)
        _assert_unchanged(model, before, x3)


def test_unknown_items_follow_handle_unknown(slices):
    x0, x1, x2, x3 = slices
    strange = pd.concat([x1, pd.DataFrame({"user": [x1["user"].iloc[0]],
                                           "item": ["never-seen"],
                                           "timestamp": [x1["timestamp"].max()]})],
                        ignore_index=True)
    model = PersonalUnigramRecommender(handle_unknown="error").fit(x0)
    before = _snapshot(model, x3)
    with pytest.raises(ValueError, match="unknown to the model.*partial_fit"):
        model.update(strange)
    _assert_unchanged(model, before, x3)
    ignoring = PersonalUnigramRecommender().fit(x0)
    with pytest.warns(UserWarning, match="1 row\\(s\\) of X have items unknown"):
        ignoring.update(strange)
    expected = PersonalUnigramRecommender().fit(x0).update(x1)
    np.testing.assert_array_equal(ignoring.score_samples(x3),
                                  expected.score_samples(x3))


def test_a_user_with_only_unknown_items_is_not_added(slices):
    x0, x1, _, _ = slices
    model = UnigramRecommender().fit(x0)
    with pytest.warns(UserWarning, match="unknown"):
        model.update(pd.DataFrame({"user": [12345], "item": ["never-seen"],
                                   "timestamp": [x1["timestamp"].max()]}))
    assert 12345 not in set(model.users_)


def test_numeric_times_and_ties_with_the_last_event_are_accepted():
    frame = pd.DataFrame({"user": [1, 1, 2], "item": ["a", "b", "a"],
                          "timestamp": [1.0, 2.0, 5.0]})
    model = BigramRecommender().fit(frame)
    model.update(pd.DataFrame({"user": [1, 2], "item": ["a", "b"],
                               "timestamp": [2.0, 7.5]}))
    assert model.last_item_.tolist() == [0, 1]
    with pytest.raises(ValueError, match="earlier"):
        model.update(pd.DataFrame({"user": [2], "item": ["a"], "timestamp": [7.0]}))


# --------------------------------------------------- count models' partial_fit
@pytest.mark.parametrize("estimator", COUNT_MODELS, ids=ids)
def test_count_partial_fit_equals_a_fit_on_every_event_seen(estimator, slices):
    x0, x1, x2, x3 = slices
    x1 = pd.concat([x1, pd.DataFrame({"user": [999], "item": ["new-item"],
                                      "timestamp": [x1["timestamp"].max()]})],
                   ignore_index=True)
    streamed = clone(estimator).partial_fit(x0).partial_fit(x1)
    quiet(streamed.update, x2)  # seen, not learned: the next partial_fit learns it
    streamed.partial_fit(x3.iloc[:30])
    everything = clone(estimator).fit(pd.concat([x0, x1, x2, x3.iloc[:30]],
                                                ignore_index=True))
    test = x3.iloc[30:]
    np.testing.assert_array_equal(streamed.score_samples(test),
                                  everything.score_samples(test))
    assert set(streamed.classes_) == set(everything.classes_)
    assert streamed.classes_[-1] == "new-item"  # appended, not re-sorted
    columns = pd.Index(streamed.classes_).get_indexer(everything.classes_)
    np.testing.assert_array_equal(streamed.predict_proba(test)[:, columns],
                                  everything.predict_proba(test))


@pytest.mark.parametrize("estimator", COUNT_MODELS, ids=ids)
def test_partial_fit_of_an_unfitted_model_is_fit(estimator, slices):
    x0 = slices[0]
    np.testing.assert_array_equal(clone(estimator).partial_fit(x0).score_samples(x0),
                                  clone(estimator).fit(x0).score_samples(x0))


def test_partial_fit_that_fails_changes_nothing(slices, monkeypatch):
    x0, x1, _, x3 = slices
    model = BigramRecommender().fit(x0)
    before = _snapshot(model, x3)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(BigramRecommender, "_learn_events", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.partial_fit(x1)
    _assert_unchanged(model, before, x3)
