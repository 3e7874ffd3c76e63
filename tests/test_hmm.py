"""HMMRecommender: the forward recursion against hmmlearn's own likelihood."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from skcrnn import HMMRecommender, UnigramRecommender
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import suffix_split


@pytest.fixture(scope="module")
def split():
    events = make_sequences(n_users=12, n_items=60, n_events=1500, n_topics=4,
                            random_state=0)
    return suffix_split(events, test_size=0.1, min_test=3, max_test=50)


@pytest.fixture(scope="module")
def model(split):
    return HMMRecommender(n_states=4, n_iter=15, random_state=0).fit(split[0])


def codes(model, items):
    """Item labels as the symbols of ``model.hmm_``."""
    return pd.Index(model.classes_).get_indexer(items)[:, None]


def sequence_of(frame, user):
    return frame[frame["user"] == user].sort_values("timestamp", kind="stable")


def test_hmmlearn_sees_every_item_and_no_item_has_probability_zero(model):
    assert model.hmm_.n_features == model.n_items_
    assert model.emissionprob_.shape == (4, model.n_items_)
    assert (model.emissionprob_ > 0).all()
    np.testing.assert_allclose(model.emissionprob_.sum(axis=1), 1.0)
    np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0)


def test_forward_log_probabilities_sum_to_hmmlearns_score(model, split):
    """From scratch (a stranger starts from pi), sum_t log P(x_t | x_<t) is
    hmmlearn's score of the sequence, on the very fitted hmmlearn object."""
    train, _ = split
    for user in train["user"].unique()[:4]:
        rows = sequence_of(train, user)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = model.score_samples(rows.assign(user=-1)).sum()
        assert mine == pytest.approx(model.hmm_.score(codes(model, rows["item"])),
                                     abs=1e-6)


def test_suffix_continues_from_the_training_state(model, split):
    train, test = split
    for user in test["user"].unique():
        before, after = sequence_of(train, user), sequence_of(test, user)
        whole = codes(model, pd.concat([before, after])["item"])
        prefix = codes(model, before["item"])
        expected = model.hmm_.score(whole) - model.hmm_.score(prefix)
        assert model.score_samples(after).sum() == pytest.approx(expected, abs=1e-6)


def test_final_state_is_the_filtered_state_after_training(model, split):
    """At a sequence's last event nothing is left in the future, so hmmlearn's
    smoothed posterior there is the filtered state the model keeps."""
    train, _ = split
    user = train["user"].unique()[1]
    symbols = codes(model, sequence_of(train, user)["item"])
    _, posteriors = model.hmm_.score_samples(symbols)
    np.testing.assert_allclose(
        model.final_state_[model.users_.tolist().index(user)], posteriors[-1],
        atol=1e-10)


def test_a_row_does_not_see_later_rows(model, split):
    _, test = split
    rows = sequence_of(test, test["user"].iloc[0])
    changed = rows.copy()
    changed.loc[changed.index[-1], "item"] = model.classes_[0]
    np.testing.assert_array_equal(model.score_samples(rows)[:-1],
                                  model.score_samples(changed)[:-1])


def test_beats_the_global_unigram_on_topic_dynamics():
    # topics follow one shared Markov chain: what a 6-state HMM can learn
    events = make_sequences(n_users=30, n_items=60, n_events=6000, n_topics=6,
                            user_heterogeneity=0.0, memory=0.0, noise=0.0,
                            random_state=1)
    train, test = suffix_split(events, test_size=0.1, min_test=3, max_test=50)
    hmm = HMMRecommender(n_states=6, n_iter=20, random_state=0).fit(train)
    unigram = UnigramRecommender().fit(train)
    assert hmm.score(test) > unigram.score(test) + 0.2


def test_each_fit_starts_a_fresh_reproducible_model(split):
    train, test = split
    model = HMMRecommender(n_states=3, n_iter=5, random_state=7)
    first = model.fit(train).hmm_
    scores = model.score_samples(test)
    second = model.fit(train).hmm_
    assert second is not first
    np.testing.assert_array_equal(model.score_samples(test), scores)
    other = clone(model).set_params(random_state=8).fit(train)
    assert not np.allclose(other.score_samples(test), scores)


@pytest.mark.parametrize("params", [{"n_states": 0}, {"emission_smoothing": 0.0},
                                    {"n_iter": 0}])
def test_invalid_parameters(params, split):
    with pytest.raises(ValueError):
        HMMRecommender(**params).fit(split[0])
