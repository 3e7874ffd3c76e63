"""partial_fit of the models that learn by optimization: the HMM continues EM,
matrix factorization recalculates its factors (issue 15)."""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
from hmmlearn.hmm import CategoricalHMM
from scipy.special import logsumexp
from sklearn.base import clone

from skcrnn import HMMRecommender, MatrixFactorizationRecommender
from skcrnn._hmm import _emissions_with_new_items
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import suffix_split

#: Users and items that only the later events have.
NEW_USERS = [12, 13]
NEW_ITEMS = [36, 37, 38, 39]

HMM = HMMRecommender(n_states=4, n_iter=10, random_state=0)
ALS = MatrixFactorizationRecommender(n_factors=8, random_state=0)
BPR = MatrixFactorizationRecommender(n_factors=8, algorithm="bpr",
                                     n_iterations=30, random_state=0)

parametrize = pytest.mark.parametrize("estimator", [HMM, ALS],
                                      ids=["hmm", "als"])


@pytest.fixture(scope="module")
def logs():
    """``(first, later)``: each user's first events without the new users and
    items, then its later events and the new users' whole histories."""
    events = make_sequences(n_users=14, n_items=40, n_events=1400, n_topics=4,
                            random_state=0)
    first, later = suffix_split(events, test_size=0.3, min_test=3, max_test=200)
    first = first[~first["user"].isin(NEW_USERS) & ~first["item"].isin(NEW_ITEMS)]
    later = pd.concat([later[~later["user"].isin(NEW_USERS)],
                       events[events["user"].isin(NEW_USERS)]])
    assert set(NEW_ITEMS) <= set(later["item"])
    return first, later.sample(frac=1.0, random_state=0)


def saved_values(model):
    """Copies of the attributes that ``save`` writes, and the vocabularies."""
    names = [*model._saved_attributes, "classes_", "users_", "n_iter_"]
    return {name: copy.deepcopy(getattr(model, name)) for name in names
            if hasattr(model, name)}


def assert_same_values(got, want, rtol=0.0):
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=0,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def encoded(model, frame):
    """``frame``'s items as the model's codes, each user's in time order, with
    the lengths of the users' sequences (hmmlearn's ``X, lengths``)."""
    ordered = frame.sort_values(["user", "timestamp"], kind="stable")
    codes = pd.Index(model.classes_).get_indexer(ordered["item"])
    assert (codes >= 0).all()
    return codes[:, None], ordered.groupby("user", sort=True).size().to_numpy()


# ------------------------------------------------------------------ contract
@parametrize
def test_partial_fit_learns_new_users_and_items(estimator, logs):
    first, later = logs
    model = clone(estimator).fit(first)
    old_items, old_users = model.classes_.copy(), model.users_.copy()
    model.partial_fit(later)
    np.testing.assert_array_equal(model.classes_, np.r_[old_items, NEW_ITEMS])
    np.testing.assert_array_equal(model.users_, np.r_[old_users, NEW_USERS])
    assert model.n_items_ == 40 and model.n_users_ == 14
    probe = later.groupby("user").head(2)
    assert np.isfinite(model.score_samples(probe)).all()
    proba = model.predict_proba(probe)
    assert proba.shape == (len(probe), 40)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-10)
    assert (proba[:, -len(NEW_ITEMS):] > 0).all()
    # the new items are learned, not only given a floor: the likeliest new
    # item of a new user beats the least likely known item
    new_user_rows = proba[probe["user"].isin(NEW_USERS).to_numpy()]
    assert (new_user_rows[:, -4:].max(axis=1)
            > new_user_rows[:, :-4].min(axis=1)).all()


@parametrize
def test_failing_partial_fit_leaves_the_model_as_it_was(estimator, logs,
                                                        monkeypatch):
    first, later = logs
    model = clone(estimator).fit(first)
    before, scores = saved_values(model), model.score_samples(first)
    learn = type(model)._learn_events

    def learn_then_fail(self, continuation, previous_history):
        learn(self, continuation, previous_history)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(type(model), "_learn_events", learn_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.partial_fit(later)
    assert_same_values(saved_values(model), before)
    np.testing.assert_array_equal(model.score_samples(first), scores)


@parametrize
def test_partial_fit_of_an_unfitted_model_is_fit(estimator, logs):
    first, later = logs
    fitted = clone(estimator).fit(first)
    partial = clone(estimator).partial_fit(first)
    assert_same_values(saved_values(partial), saved_values(fitted))
    # and the second call learns alike
    assert_same_values(saved_values(partial.partial_fit(later)),
                       saved_values(fitted.partial_fit(later)))


@parametrize
def test_partial_fit_after_a_save_and_load_is_the_same(estimator, logs,
                                                       tmp_path):
    first, later = logs
    model = clone(estimator).fit(first)
    model.save(tmp_path / "fitted.skcrnn")
    loaded = type(model).load(tmp_path / "fitted.skcrnn")
    model.partial_fit(later)
    loaded.partial_fit(later)
    assert_same_values(saved_values(loaded), saved_values(model), rtol=1e-12)
    # and the grown model saves and loads too
    model.save(tmp_path / "grown.skcrnn")
    again = type(model).load(tmp_path / "grown.skcrnn")
    np.testing.assert_array_equal(again.score_samples(later),
                                  model.score_samples(later))


@parametrize
def test_an_event_before_its_users_last_one_changes_nothing(estimator, logs):
    first, later = logs
    model = clone(estimator).fit(first)
    before = saved_values(model)
    user = first["user"].iloc[0]
    early = first[first["user"] == user].nsmallest(1, "timestamp")
    with pytest.raises(ValueError, match="earlier than their user's last"):
        model.partial_fit(pd.concat([later, early]))
    assert_same_values(saved_values(model), before)
    assert len(model._history.items) == len(first)
    # what partial_fit learns next is as if the call had not happened
    assert_same_values(saved_values(model.partial_fit(later)),
                       saved_values(clone(estimator).fit(first).partial_fit(later)))


# ----------------------------------------------------------------------- HMM
def test_hmm_continues_em_and_raises_the_likelihood(logs):
    """Known users and items only: the fitted parameters score every stored
    event, and continued EM scores them better."""
    first, later = logs
    later = later[~later["user"].isin(NEW_USERS) & ~later["item"].isin(NEW_ITEMS)]
    model = clone(HMM).fit(first)
    old_hmm = model.hmm_
    model.partial_fit(later)
    X, lengths = encoded(model, pd.concat([first, later]))
    assert model.hmm_ is not old_hmm
    assert 1 <= model.n_iter_ <= HMM.n_iter
    assert model.hmm_.score(X, lengths) > old_hmm.score(X, lengths) + 1.0
    assert not np.allclose(model.transmat_, old_hmm.transmat_, atol=1e-3)
    assert not np.allclose(model.emissionprob_, old_hmm.emissionprob_, atol=1e-3)


def test_hmm_runs_em_from_the_fitted_parameters_with_seeded_new_items(logs):
    """One EM iteration of partial_fit is hmmlearn's, started from the fitted
    parameters and the documented emissions of the new items."""
    first, later = logs
    fitted = clone(HMM).fit(first)
    model = copy.deepcopy(fitted).set_params(n_iter=1).partial_fit(later)
    occupancy = fitted.hmm_.predict_proba(*encoded(fitted, first)).sum(axis=0)
    smoothing = HMM.emission_smoothing
    mass = occupancy[:, None] + smoothing * 36
    start = np.hstack([fitted.emissionprob_ * mass, np.full((4, 4), smoothing)])
    start /= mass + smoothing * 4
    oracle = CategoricalHMM(n_components=4, n_features=40,
                            emissionprob_prior=1.0 + smoothing, n_iter=1,
                            init_params="", implementation="scaling")
    oracle.startprob_ = fitted.startprob_.copy()
    oracle.transmat_ = fitted.transmat_.copy()
    oracle.emissionprob_ = start
    oracle.fit(*encoded(model, pd.concat([first, later])))
    assert model.n_iter_ == 1
    np.testing.assert_allclose(model.startprob_, oracle.startprob_, rtol=1e-9)
    np.testing.assert_allclose(model.transmat_, oracle.transmat_, rtol=1e-9)
    np.testing.assert_allclose(model.emissionprob_, oracle.emissionprob_,
                               rtol=1e-9)


def test_new_item_emissions_have_the_smoothing_mass():
    emissions = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    occupancy = np.array([10.0, 2.0])
    grown = _emissions_with_new_items(emissions, occupancy, 0.5, 2)
    np.testing.assert_allclose(grown.sum(axis=1), 1.0)
    # a new item: lambda over the state's count plus lambda per item (5 now)
    np.testing.assert_allclose(grown[:, 3:], [[0.5 / 12.5] * 2, [0.5 / 4.5] * 2])
    # the known items keep their proportions
    np.testing.assert_allclose(grown[:, :3] / grown[:, :3].sum(axis=1,
                                                                 keepdims=True),
                               emissions)


def test_hmm_filters_every_users_state_over_its_whole_history(logs):
    first, later = logs
    later = later.sort_values("timestamp", kind="stable")
    followed = later.iloc[:len(later) // 2]
    followed = followed[~followed["item"].isin(NEW_ITEMS)]
    learned = later.iloc[len(later) // 2:]
    model = clone(HMM).fit(first)
    model.update(followed)
    model.partial_fit(learned)
    everything = pd.concat([first, followed, learned])
    for user in [model.users_[0], NEW_USERS[0]]:
        X, _ = encoded(model, everything[everything["user"] == user])
        # at the last event the smoothed posterior is the filtered state
        last = model.hmm_.predict_proba(X)[-1]
        code = model.users_.tolist().index(user)
        np.testing.assert_allclose(model.final_state_[code], last, atol=1e-10)
    assert model.final_state_.shape == (14, 4)


# ------------------------------------------------------------------------ MF
def als_solution(model, user_items):
    """A user's ALS factors given the item factors, from the normal equations
    of ``implicit``'s convention (confidence ``alpha * count`` on the items
    the user consumed, 1 elsewhere)."""
    item_f = model.item_factors_
    confidence = model.alpha * user_items
    seen = confidence > 0
    matrix = (item_f.T @ item_f + model.regularization * np.eye(item_f.shape[1])
              + (item_f[seen].T * (confidence[seen] - 1)) @ item_f[seen])
    return np.linalg.solve(matrix, item_f[seen].T @ confidence[seen])


def test_als_recalculates_the_factors_that_the_new_events_touch(logs):
    first, later = logs
    fitted = clone(ALS).fit(first)
    touched_user = first["user"].iloc[0]
    later = later[later["user"].isin([touched_user, *NEW_USERS])]
    model = copy.deepcopy(fitted).partial_fit(later)
    everything = pd.concat([first, later])
    codes = {user: model.users_.tolist().index(user) for user in model.users_}
    items = pd.Index(model.classes_)
    untouched_users = [codes[u] for u in fitted.users_ if u != touched_user]
    np.testing.assert_array_equal(model.user_factors_[untouched_users],
                                  fitted.user_factors_[untouched_users])
    touched_items = items.get_indexer(later["item"].unique())
    untouched_items = np.setdiff1d(np.arange(36), touched_items)
    assert len(untouched_items)
    np.testing.assert_array_equal(model.item_factors_[untouched_items],
                                  fitted.item_factors_[untouched_items])
    assert not np.allclose(model.item_factors_[touched_items[touched_items < 36]],
                           fitted.item_factors_[touched_items[touched_items < 36]])
    assert np.abs(model.item_factors_[36:]).sum(axis=1).min() > 0
    for user in [touched_user, *NEW_USERS]:
        counts = np.bincount(items.get_indexer(
            everything.loc[everything["user"] == user, "item"]), minlength=40)
        np.testing.assert_allclose(model.user_factors_[codes[user]],
                                   als_solution(model, counts), rtol=1e-6)
    # the calibration stays; counts and normalizers follow the factors
    for name in ("score_weight_", "popularity_weight_", "uniform_share_",
                 "n_calibration_events_"):
        assert getattr(model, name) == getattr(fitted, name)
    np.testing.assert_array_equal(
        model.item_counts_, np.bincount(items.get_indexer(everything["item"]),
                                        minlength=40))
    logits = (model.score_weight_ * model.user_factors_ @ model.item_factors_.T
              + model.popularity_weight_ * np.log1p(model.item_counts_))
    np.testing.assert_allclose(model._log_norm, logsumexp(logits, axis=1),
                               rtol=1e-12)
    np.testing.assert_allclose(
        model._stranger_log_norm,
        logsumexp(model.popularity_weight_ * np.log1p(model.item_counts_)))


def test_als_learns_the_factors_of_users_that_update_added(logs):
    first, later = logs
    model = clone(ALS).fit(first)
    newcomer = later[later["user"] == NEW_USERS[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its new items are left out
        model.update(newcomer)
    assert len(model.user_factors_) == model.n_users_ - 1
    stranger = model.predict_proba(newcomer.head(1))
    others = later[later["user"] == first["user"].iloc[0]]
    model.partial_fit(others)
    assert len(model.user_factors_) == model.n_users_ == len(model._log_norm)
    code = model.users_.tolist().index(NEW_USERS[0])
    assert np.abs(model.user_factors_[code]).sum() > 0
    assert not np.allclose(model.predict_proba(newcomer.head(1))[:, :36],
                           stranger, rtol=1e-3)


def test_bpr_continues_its_epochs_from_the_current_factors(logs):
    first, later = logs
    fitted = clone(BPR).fit(first)
    # with a vanishing step, more epochs leave the factors where they were
    still = copy.deepcopy(fitted).set_params(learning_rate=1e-12).partial_fit(later)
    np.testing.assert_allclose(still.user_factors_[:12], fitted.user_factors_,
                               atol=1e-6)
    np.testing.assert_allclose(still.item_factors_[:36], fitted.item_factors_,
                               atol=1e-6)
    np.testing.assert_allclose(still.user_factors_[12:, :-1], 0.0, atol=1e-6)
    np.testing.assert_array_equal(still.user_factors_[12:, -1], 1.0)
    np.testing.assert_allclose(still.item_factors_[36:], 0.0, atol=1e-6)
    # with the model's step, they move, the new users' and items' too
    moved = copy.deepcopy(fitted).partial_fit(later)
    assert not np.allclose(moved.user_factors_[:12], fitted.user_factors_,
                           atol=1e-3)
    assert np.abs(moved.user_factors_[12:, :-1]).sum(axis=1).min() > 0
    assert np.abs(moved.item_factors_[36:]).sum(axis=1).min() > 0
    assert moved.score_weight_ == fitted.score_weight_
    proba = moved.predict_proba(later.head(20))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-10)
