"""MatrixFactorizationRecommender: calibration, static tastes, unknown users."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

from skcrnn import MatrixFactorizationRecommender, UnigramRecommender
from skcrnn._events import Sequences
from skcrnn._mf import calibration_split
from skcrnn.model_selection import suffix_split


def taste_events(n_users=60, n_items=200, n_per_user=60, concentration=0.05,
                 seed=0):
    """Each user draws its items from its own Dirichlet(concentration) taste."""
    rng = np.random.default_rng(seed)
    tastes = rng.dirichlet(np.full(n_items, concentration), size=n_users)
    items = np.concatenate([rng.choice(n_items, n_per_user, p=p) for p in tastes])
    return pd.DataFrame({"user": np.repeat(np.arange(n_users), n_per_user),
                         "item": items,
                         "timestamp": np.tile(np.arange(n_per_user), n_users)})


@pytest.fixture(scope="module")
def split():
    return suffix_split(taste_events(), test_size=0.2, min_test=2, max_test=50)


@pytest.fixture(scope="module")
def model(split):
    return MatrixFactorizationRecommender(n_factors=16, random_state=0).fit(split[0])


def test_beats_the_global_unigram_on_static_tastes(model, split):
    train, test = split
    unigram = UnigramRecommender().fit(train).score(test)
    assert model.score(test) > unigram + 1.0


def test_calibration_split_holds_out_each_users_tail():
    lengths = np.array([1, 2, 10, 25])
    sequences = Sequences(np.arange(4), np.r_[0, np.cumsum(lengths)],
                          np.arange(lengths.sum()))
    tail = calibration_split(sequences, 0.1)
    # round(0.1 n) clipped to [1, n - 1]: 0, 1, 1, 2 (round(2.5) = 2)
    expected = [np.arange(n) >= n - k for n, k in zip(lengths, [0, 1, 1, 2])]
    np.testing.assert_array_equal(tail, np.concatenate(expected))


def test_calibration_uses_a_training_tail_and_factors_fitted_without_it(
        split, monkeypatch):
    """The scalars are fitted on the last events of each training sequence,
    with factors fitted on the other training events, and never on test rows."""
    train, test = split
    seen = {"factorized": [], "calibrated": []}
    factorize = MatrixFactorizationRecommender._factorize
    calibrate = MatrixFactorizationRecommender._calibrate

    def spy_factorize(self, user_items, seed):
        seen["factorized"].append(user_items.toarray())
        return factorize(self, user_items, seed)

    def spy_calibrate(self, user_f, item_f, popularity, users, items):
        seen["calibrated"].append((users.copy(), items.copy()))
        return calibrate(self, user_f, item_f, popularity, users, items)

    monkeypatch.setattr(MatrixFactorizationRecommender, "_factorize", spy_factorize)
    monkeypatch.setattr(MatrixFactorizationRecommender, "_calibrate", spy_calibrate)
    model = MatrixFactorizationRecommender(n_factors=8, calibration_fraction=0.2,
                                           random_state=0).fit(train)

    ordered = train.sort_values(["user", "timestamp"], kind="stable")
    size = ordered.groupby("user")["item"].transform("size")
    position = ordered.groupby("user").cumcount()
    is_tail = position >= size - np.clip(np.round(0.2 * size), 1, size - 1)
    tail = ordered[is_tail]
    users, items = seen["calibrated"][0]
    np.testing.assert_array_equal(model.users_[users], tail["user"])
    np.testing.assert_array_equal(model.classes_[items], tail["item"])
    assert model.n_calibration_events_ == len(tail)

    def counts(frame):
        table = np.zeros((model.n_users_, model.n_items_))
        np.add.at(table, (np.searchsorted(model.users_, frame["user"]),
                          np.searchsorted(model.classes_, frame["item"])), 1)
        return table

    head_counts, all_counts = seen["factorized"]
    np.testing.assert_array_equal(head_counts, counts(ordered[~is_tail]))
    np.testing.assert_array_equal(all_counts, counts(train))
    assert not test.index.isin(tail.index).any()


def test_calibrated_scalars_maximize_the_tail_likelihood(split, monkeypatch):
    """The scalars maximize the tail likelihood under the weak prior on a and
    b; calibration_log_likelihood_ is the likelihood alone."""
    from skcrnn import _mf
    captured = {}
    likelihood = _mf._TailLikelihood

    def spy(*args):
        captured["objective"] = likelihood(*args)
        return captured["objective"]

    monkeypatch.setattr(_mf, "_TailLikelihood", spy)
    model = MatrixFactorizationRecommender(n_factors=8, random_state=0).fit(split[0])
    objective = captured["objective"]
    a, b, w = model.score_weight_, model.popularity_weight_, model.uniform_share_
    assert objective(a, b, w)[0] == pytest.approx(model.calibration_log_likelihood_)
    theta = objective.standardized(a, b, w)
    best, gradient = objective.penalized(theta)
    np.testing.assert_allclose(gradient, 0.0, atol=1e-4)
    for step in np.vstack([np.eye(3), -np.eye(3)]) * [0.1, 0.1, 0.5 * w]:
        assert objective.penalized(theta + step)[0] < best
    # the prior is weak: the likelihood alone is nearly as high
    assert best == pytest.approx(model.calibration_log_likelihood_, abs=1e-3)


def tiny_tail(seed, n_users=6, n_items=8, n_tail=10, n_factors=4):
    """Factors and a tail of 10 events that the factors know nothing about."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_users, n_factors)),
            rng.normal(size=(n_items, n_factors)),
            np.log1p(rng.integers(5, 15, n_items)).astype(float),
            np.sort(rng.integers(0, n_users, n_tail)), rng.integers(0, n_items, n_tail))


@pytest.mark.parametrize("seed", range(20))
def test_calibration_of_a_tiny_tail_ends_at_a_maximum(seed):
    """On 10 held-out events the likelihood alone may grow without end as a
    or b do. The calibration used to stop where the softmax saturates and
    every slope underflows (e.g. a = -844, w = 0.99999, where a known user
    scored exactly like a stranger), or where the slope in logit w vanished
    (w near 0 or 1). Now a and b stay within what the prior allows, and the
    result is a maximum: every small step from it loses."""
    from skcrnn import _mf
    user_f, item_f, popularity, tail_users, tail_items = tiny_tail(seed)
    model = MatrixFactorizationRecommender()
    model.n_items_ = len(item_f)
    model._calibrate(user_f, item_f, popularity, tail_users, tail_items)
    objective = _mf._TailLikelihood(user_f, item_f, popularity, tail_users, tail_items)
    theta = objective.standardized(model.score_weight_, model.popularity_weight_,
                                   model.uniform_share_)
    # better than a = b = 0 (uniform, whatever w), so |(a, b)| is bounded
    bound = _mf._WEIGHT_PRIOR_SD * np.sqrt(2 * len(tail_items) * np.log(len(item_f)))
    assert np.hypot(*theta[:2]) <= bound
    found = objective.penalized(theta)[0]
    assert found >= objective.penalized([0.0, 0.0, 0.5])[0]
    for step in np.vstack([np.eye(3), -np.eye(3)]) * [0.05, 0.05, 0.01]:
        if 0 < theta[2] + step[2] < 1:
            assert objective.penalized(theta + step)[0] < found - 1e-7


def test_static_known_user_and_popularity_for_strangers(model, split):
    _, test = split
    rows = test[test["user"] == test["user"].iloc[0]]
    proba = model.predict_proba(rows)
    np.testing.assert_allclose(proba, np.broadcast_to(proba[0], proba.shape))
    # a stranger: s_ui = 0, so (1 - w) softmax(b log(1 + c)) + w / n_items
    logits = model.popularity_weight_ * np.log1p(model.item_counts_)
    w = model.uniform_share_
    expected = (1 - w) * np.exp(logits - logsumexp(logits)) + w / model.n_items_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stranger = model.predict_proba(rows.assign(user=-1))
    np.testing.assert_allclose(stranger, np.broadcast_to(expected, stranger.shape),
                               rtol=1e-10)
    assert not np.allclose(proba[0], expected)


def test_known_user_distribution_from_factors(model, split):
    """The closed form of the docstring, from the stored factors and scalars."""
    _, test = split
    user = test["user"].iloc[0]
    code = list(model.users_).index(user)
    logits = (model.score_weight_ * model.item_factors_ @ model.user_factors_[code]
              + model.popularity_weight_ * np.log1p(model.item_counts_))
    w = model.uniform_share_
    expected = (1 - w) * np.exp(logits - logsumexp(logits)) + w / model.n_items_
    got = model.predict_proba(test[test["user"] == user].iloc[:1])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_reproducible_with_random_state(split):
    train, test = split
    first = MatrixFactorizationRecommender(n_factors=8, random_state=3).fit(train)
    again = MatrixFactorizationRecommender(n_factors=8, random_state=3).fit(train)
    np.testing.assert_array_equal(first.score_samples(test),
                                  again.score_samples(test))


def test_bpr_beats_the_global_unigram(split):
    train, test = split
    model = MatrixFactorizationRecommender(n_factors=16, algorithm="bpr",
                                           n_iterations=50, learning_rate=0.05,
                                           random_state=0).fit(train)
    assert model.score(test) > UnigramRecommender().fit(train).score(test) + 0.5


@pytest.mark.parametrize("params", [{"calibration_fraction": 1.0},
                                    {"algorithm": "svd"}, {"n_factors": 0},
                                    {"n_jobs": 0}, {"uniform_share_init": 0.0}])
def test_invalid_parameters(params, split):
    with pytest.raises(ValueError):
        MatrixFactorizationRecommender(**params).fit(split[0])


def test_gpu_request_without_cuda_is_a_clear_error(split):
    import implicit.gpu
    if implicit.gpu.HAS_CUDA:
        pytest.skip("this implicit has CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        MatrixFactorizationRecommender(use_gpu=True).fit(split[0])


def test_scores_without_spread_keep_the_calibration_finite():
    # one item: every score is the same, the tail likelihood is flat in a
    events = pd.DataFrame({"user": [0] * 21, "item": ["a"] * 21,
                           "timestamp": range(21)})
    model = MatrixFactorizationRecommender(n_factors=4, n_iterations=3,
                                           random_state=0).fit(events)
    assert abs(model.score_weight_) < 1e3
    test = events.tail(3)
    np.testing.assert_allclose(np.exp(model.score_samples(test)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(model.predict_proba(test), 1.0, rtol=1e-12)


def test_calibration_work_grows_with_events_not_users_times_items(monkeypatch):
    """One evaluation of the tail likelihood computes a normalizer over all
    items for each user it holds: users x items cells, ~20-60 times per fit.
    Beyond a budget that grows with the events, the calibration uses the tails
    of a random sample of users."""
    from skcrnn import _mf
    monkeypatch.setattr(_mf, "_CALIBRATION_MIN_CELLS", 0, raising=False)
    monkeypatch.setattr(_mf, "_CALIBRATION_CELLS_PER_EVENT", 4, raising=False)
    captured = []
    likelihood = _mf._TailLikelihood

    def spy(*args):
        captured.append(likelihood(*args))
        return captured[-1]

    monkeypatch.setattr(_mf, "_TailLikelihood", spy)
    # 300 users x 400 items = 120,000 cells, for 1,800 events
    events = taste_events(n_users=300, n_items=400, n_per_user=6)
    model = MatrixFactorizationRecommender(n_factors=8, random_state=0).fit(events)
    objective, = captured
    assert len(objective.users) * model.n_items_ <= 4 * len(events)
    assert len(objective.users) >= 4 * len(events) // model.n_items_
    assert model.n_calibration_events_ == len(objective.items)


def test_sampled_calibration_scores_like_the_full_one(monkeypatch):
    from skcrnn import _mf
    train, test = suffix_split(taste_events(n_users=200, n_items=100, n_per_user=40,
                                            seed=1), 0.2, 2, 50)
    full = MatrixFactorizationRecommender(n_factors=8, random_state=0).fit(train)
    monkeypatch.setattr(_mf, "_CALIBRATION_MIN_CELLS", 0, raising=False)
    # about a quarter of the users' tails
    monkeypatch.setattr(_mf, "_CALIBRATION_CELLS_PER_EVENT",
                        full.n_users_ * full.n_items_ / len(train) / 4, raising=False)
    sampled = MatrixFactorizationRecommender(n_factors=8, random_state=0).fit(train)
    assert sampled.n_calibration_events_ < full.n_calibration_events_ / 3
    assert sampled.score(test) == pytest.approx(full.score(test), abs=0.02)
