"""The public contract (docs/api.rst), checked for every estimator of the package."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from .conftest import random_events
from .estimators import ALL_ESTIMATORS, SEQUENTIAL, ids

parametrize = pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)


def fitted(estimator, train):
    return clone(estimator).fit(train)


@parametrize
def test_clone_keeps_params_and_drops_fit(estimator, train_test):
    model = fitted(estimator, train_test[0])
    twin = clone(model)
    assert twin.get_params() == model.get_params()
    assert not hasattr(twin, "classes_")


@parametrize
def test_init_only_stores_params(estimator):
    params = estimator.get_params()
    twin = type(estimator)(**params)
    assert twin.get_params() == params
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(twin))


@parametrize
def test_not_fitted_error(estimator, events):
    model = clone(estimator)
    for call in (lambda: model.score_samples(events), lambda: model.score(events),
                 lambda: model.predict_proba(events), lambda: model.predict(events),
                 lambda: model.recommend([100])):
        with pytest.raises(NotFittedError):
            call()


@parametrize
def test_pickle_round_trip(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score_samples(test),
                                  model.score_samples(test))


@parametrize
def test_predict_proba_rows_sum_to_one(estimator, train_test):
    train, test = train_test
    proba = fitted(estimator, train).predict_proba(test)
    assert proba.shape == (len(test), train["item"].nunique())
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-10)


@parametrize
def test_score_samples_is_predict_proba_at_observed_item(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    proba = model.predict_proba(test)
    columns = pd.Index(model.classes_).get_indexer(test["item"])
    np.testing.assert_allclose(np.exp(model.score_samples(test)),
                               proba[np.arange(len(test)), columns], rtol=1e-10)


@parametrize
def test_predict_is_argmax_of_predict_proba(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    proba = model.predict_proba(test)
    np.testing.assert_array_equal(model.predict(test),
                                  model.classes_[proba.argmax(axis=1)])


@parametrize
def test_score_is_mean_over_users_of_user_means(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    per_row = pd.Series(model.score_samples(test), index=test.index)
    expected = per_row.groupby(test["user"]).mean().mean()
    assert model.score(test) == pytest.approx(expected, rel=1e-12)


@parametrize
def test_invariant_to_row_order(estimator):
    # without ties: tied events keep their row order, so shuffling reorders them
    from skcrnn.model_selection import suffix_split
    train, test = suffix_split(random_events(ties=False, seed=2), 0.2, 2, 50)
    model = fitted(estimator, train)
    shuffled_model = fitted(estimator, train.sample(frac=1.0, random_state=3))
    shuffled_test = test.sample(frac=1.0, random_state=4)
    reference = pd.Series(model.score_samples(test), index=test.index)
    got = pd.Series(shuffled_model.score_samples(shuffled_test),
                    index=shuffled_test.index)
    np.testing.assert_allclose(got.loc[test.index].to_numpy(), reference.to_numpy(),
                               rtol=1e-10)
    assert shuffled_model.score(shuffled_test) == pytest.approx(model.score(test))


@parametrize
def test_history_is_fit_events_then_earlier_rows(estimator, train_test):
    """Scoring a row alone after its user's earlier rows equals scoring it in X."""
    train, test = train_test
    model = fitted(estimator, train)
    full = pd.Series(model.score_samples(test), index=test.index)
    ordered = test.sort_values(["user", "timestamp"], kind="stable")
    for _, user_rows in ordered.groupby("user"):
        for stop in range(1, len(user_rows) + 1):
            prefix = user_rows.iloc[:stop]
            last = model.score_samples(prefix)[-1]
            assert last == pytest.approx(full[prefix.index[-1]], rel=1e-10)


@parametrize
def test_sequential_models_use_the_history(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    user = test["user"].iloc[0]
    row = test[test["user"] == user].iloc[:1]
    as_stranger = row.assign(user=-12345)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stranger = model.score_samples(as_stranger)[0]
    same = stranger == pytest.approx(model.score_samples(row)[0], rel=1e-12)
    assert same != isinstance(model, SEQUENTIAL)


@parametrize
def test_unknown_items_are_nan_with_one_warning(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    odd = test.copy()
    odd.loc[odd.index[:2], "item"] = ["never-seen-1", "never-seen-2"]
    with pytest.warns(UserWarning, match="2 row") as record:
        scores = model.score_samples(odd)
    assert len([w for w in record if "unknown" in str(w.message)]) == 1
    assert np.isnan(scores[:2]).all() and np.isfinite(scores[2:]).all()
    with pytest.warns(UserWarning):
        score = model.score(odd)
    kept = pd.Series(scores, index=odd.index).dropna()
    assert score == pytest.approx(kept.groupby(odd.loc[kept.index, "user"]).mean().mean())
    strict = clone(model).set_params(handle_unknown="error").fit(train)
    with pytest.raises(ValueError, match="unknown to the model"):
        strict.score_samples(odd)


@parametrize
def test_unknown_users_scored_from_empty_history(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    strangers = test.assign(user=test["user"] + 10_000)
    with pytest.warns(UserWarning, match="unknown to the model"):
        scores = model.score_samples(strangers)
    assert np.isfinite(scores).all()
    strict = clone(model).set_params(handle_unknown="error").fit(train)
    with pytest.raises(ValueError, match="user"):
        strict.score_samples(strangers)


@parametrize
def test_recommend_matches_distribution_after_history(estimator, train_test):
    train, test = train_test
    model = fitted(estimator, train)
    users = list(test["user"].unique()[:3])
    recs = model.recommend(users, k=4)
    assert list(recs.columns) == ["user", "item", "score", "rank"]
    assert list(recs["user"]) == [u for u in users for _ in range(4)]
    for user in users:
        # the distribution before a user's first new row is the one after fit
        probe = test[test["user"] == user].iloc[:1]
        proba = model.predict_proba(probe)[0]
        best = np.argsort(-proba, kind="stable")[:4]
        mine = recs[recs["user"] == user]
        assert list(mine["item"]) == list(model.classes_[best])
        np.testing.assert_allclose(mine["score"], np.log(proba[best]), rtol=1e-10)
        assert list(mine["rank"]) == [1, 2, 3, 4]


@parametrize
def test_recommend_exclude_seen(estimator, train_test):
    train, _ = train_test
    model = fitted(estimator, train)
    user = train["user"].iloc[0]
    seen = set(train.loc[train["user"] == user, "item"])
    recs = model.recommend(user, k=model.n_items_, exclude_seen=True)
    assert set(recs["item"]) == set(model.classes_) - seen
    assert list(recs["rank"]) == list(range(1, len(recs) + 1))


@parametrize
def test_callers_frame_is_not_modified(estimator, train_test):
    train, test = train_test
    before_train, before_test = train.copy(), test.copy()
    model = fitted(estimator, train)
    model.score_samples(test), model.score(test), model.predict_proba(test)
    model.predict(test), model.recommend(test["user"].unique(), k=3)
    pd.testing.assert_frame_equal(train, before_train)
    pd.testing.assert_frame_equal(test, before_test)


@parametrize
def test_renamed_columns(estimator, train_test):
    train, test = train_test
    names = {"user": "who", "item": "what", "timestamp": "when"}
    model = fitted(estimator, train)
    renamed = clone(estimator).set_params(user_col="who", item_col="what",
                                          time_col="when")
    renamed.fit(train.rename(columns=names))
    np.testing.assert_array_equal(renamed.score_samples(test.rename(columns=names)),
                                  model.score_samples(test))
    recs = renamed.recommend(test["user"].iloc[0], k=2)
    assert list(recs.columns) == ["who", "what", "score", "rank"]


@parametrize
def test_numeric_times_and_integer_labels(estimator):
    events = random_events(str_items=False, seed=5)
    events["timestamp"] = events["timestamp"].astype("int64") / 1e9
    model = fitted(estimator, events)
    assert model.classes_.dtype.kind == "i"
    assert np.isfinite(model.score_samples(events)).all()
