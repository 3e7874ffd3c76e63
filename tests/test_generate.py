"""Tests of make_sequences: the frame, and the process it samples from."""

import time

import numpy as np
import pandas as pd
import pytest

from skcrnn.datasets import make_sequences


def user_topics(events, params, user):
    return params["topic"][(events["user"] == user).to_numpy()]


def transition_counts(topics, n_topics):
    counts = np.zeros((n_topics, n_topics))
    np.add.at(counts, (topics[:-1], topics[1:]), 1)
    return counts


def row_normalized(counts):
    return counts / counts.sum(axis=1, keepdims=True)


def test_frame_layout():
    events = make_sequences(n_users=30, n_items=200, n_events=5000, random_state=0)
    assert list(events.columns) == ["user", "item", "timestamp"]
    assert events["user"].dtype == np.int64
    assert events["item"].dtype == np.int64
    assert events["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert len(events) == 5000
    assert events.index.equals(pd.RangeIndex(5000))
    assert events["user"].is_monotonic_increasing
    assert sorted(events["user"].unique()) == list(range(30))
    assert events["item"].between(0, 199).all()
    assert events["timestamp"].min() >= pd.Timestamp("2020-01-01")
    # Times strictly increase within each user.
    gaps = events.groupby("user")["timestamp"].diff().dropna()
    assert (gaps > pd.Timedelta(0)).all()


def test_lengths():
    events = make_sequences(n_users=50, n_items=100, n_events=7001, min_length=40,
                            random_state=1)
    lengths = events["user"].value_counts()
    assert lengths.sum() == 7001
    assert lengths.min() >= 40
    assert lengths.max() > 2 * lengths.min()  # lengths vary across users
    exact = make_sequences(n_users=10, n_items=20, n_events=200, min_length=20,
                           random_state=2)
    assert (exact["user"].value_counts() == 20).all()


def test_determinism_and_random_state_types():
    kwargs = dict(n_users=20, n_items=60, n_events=1000)
    first = make_sequences(**kwargs, random_state=3)
    pd.testing.assert_frame_equal(first, make_sequences(**kwargs, random_state=3))
    pd.testing.assert_frame_equal(
        first, make_sequences(**kwargs, random_state=np.random.RandomState(3)))
    assert not first.equals(make_sequences(**kwargs, random_state=4))
    pd.testing.assert_frame_equal(
        make_sequences(**kwargs, random_state=np.random.default_rng(5)),
        make_sequences(**kwargs, random_state=np.random.default_rng(5)))


def test_rename_columns():
    events = make_sequences(n_users=2, n_items=10, n_events=50, random_state=0,
                            user_col="u", item_col="i", time_col="t")
    assert list(events.columns) == ["u", "i", "t"]
    with pytest.raises(ValueError, match="must differ"):
        make_sequences(user_col="a", item_col="a")


def test_ground_truth_is_consistent():
    events, params = make_sequences(n_users=8, n_items=53, n_events=800,
                                    n_topics=5, random_state=0, return_params=True)
    assert params["topic"].shape == (800,)
    topic_of_item = params["topic_of_item"]
    assert np.array_equal(topic_of_item[events["item"].to_numpy()], params["topic"])
    assert sorted(np.bincount(topic_of_item).tolist()) == [10, 10, 11, 11, 11]
    for k in range(5):
        assert params["item_probability"][topic_of_item == k].sum() == pytest.approx(1)
    transitions = params["user_transition"]
    assert transitions.shape == (8, 5, 5)
    np.testing.assert_allclose(transitions.sum(axis=2), 1.0)
    permutation = params["user_permutation"]
    expected = 0.2 * params["shared_transition"][None] + 0.8 * np.eye(5)[permutation]
    np.testing.assert_allclose(transitions, expected)
    assert np.array_equal(params["lengths"], events["user"].value_counts().sort_index())


def test_deterministic_personal_dynamics_follow_the_permutation():
    events, params = make_sequences(
        n_users=6, n_items=80, n_events=600, n_topics=8, user_heterogeneity=1.0,
        memory=0.0, noise=0.0, random_state=0, return_params=True)
    for user in range(6):
        topics = user_topics(events, params, user)
        permutation = params["user_permutation"][user]
        assert np.array_equal(topics[1:], permutation[topics[:-1]])


def test_empirical_transitions_match_the_users_matrix():
    noise, n_topics = 0.1, 5
    events, params = make_sequences(
        n_users=2, n_items=50, n_events=24000, n_topics=n_topics, min_length=11000,
        user_heterogeneity=0.6, memory=0.0, noise=noise, random_state=0,
        return_params=True)
    for user in range(2):
        estimated = row_normalized(
            transition_counts(user_topics(events, params, user), n_topics))
        expected = (1 - noise) * params["user_transition"][user] + noise / n_topics
        np.testing.assert_allclose(estimated, expected, atol=0.035)


def test_memory_carries_the_state():
    # With h=1 and no noise, P(z_t = pi(z_{t-1})) is the state's weight on
    # z_{t-1}: s_t[z_{t-1}], with s_t = m s_{t-1} + (1 - m) e_{z_{t-1}}.
    memory, n_topics = 0.6, 6
    events, params = make_sequences(
        n_users=1, n_items=60, n_events=10000, n_topics=n_topics,
        user_heterogeneity=1.0, memory=memory, noise=0.0, random_state=0,
        return_params=True)
    topics = params["topic"]
    permutation = params["user_permutation"][0]
    state = np.eye(n_topics)[topics[0]]
    predicted = []
    for previous in topics[:-1]:
        state = memory * state + (1 - memory) * np.eye(n_topics)[previous]
        predicted.append(state[previous])
    followed = topics[1:] == permutation[topics[:-1]]
    assert 1 - memory < np.mean(predicted) < 0.9
    assert followed.mean() == pytest.approx(np.mean(predicted), abs=0.015)


def test_users_differ_when_heterogeneity_is_high():
    def row_distances(heterogeneity):
        """Mean total-variation distance between the two users' rows:
        estimated from their sequences, and the truth."""
        events, params = make_sequences(
            n_users=2, n_items=60, n_events=12000, n_topics=6, min_length=5500,
            user_heterogeneity=heterogeneity, memory=0.0, noise=0.05,
            random_state=0, return_params=True)
        first, second = (row_normalized(transition_counts(
            user_topics(events, params, user), 6)) for user in range(2))
        truth = 0.95 * params["user_transition"]  # the noise is shared
        return (0.5 * np.abs(first - second).sum(axis=1).mean(),
                0.5 * np.abs(truth[0] - truth[1]).sum(axis=1).mean())

    estimated, truth = row_distances(0.9)
    assert truth > 0.4
    assert estimated == pytest.approx(truth, abs=0.04)
    estimated, truth = row_distances(0.0)
    assert truth == 0
    assert estimated < 0.06  # sampling noise only


def test_personal_bigram_beats_global_bigram():
    # The users' own dynamics are what a collaborative model can learn and a
    # shared one cannot: per-user topic bigrams predict held-out steps better
    # than one bigram of everybody.
    n_topics = 10
    events, params = make_sequences(
        n_users=40, n_items=100, n_events=16000, n_topics=n_topics,
        memory=0.2, random_state=0, return_params=True)
    per_user = [user_topics(events, params, u) for u in range(40)]
    splits = [int(0.8 * len(t)) for t in per_user]
    global_counts = sum(transition_counts(t[:s], n_topics)
                        for t, s in zip(per_user, splits))
    personal_ll, global_ll = [], []
    for topics, split in zip(per_user, splits):
        personal = row_normalized(transition_counts(topics[:split], n_topics) + 1)
        shared = row_normalized(global_counts + 1)
        previous, following = topics[split - 1:-1], topics[split:]
        personal_ll.append(np.log(personal[previous, following]).mean())
        global_ll.append(np.log(shared[previous, following]).mean())
    assert np.mean(personal_ll) > np.mean(global_ll) + 0.3


def test_shared_concentration_sharpens_the_shared_dynamics():
    # A small Dirichlet parameter concentrates each row of A on a few
    # successors: lower row entropy, and a global topic bigram that beats the
    # topic unigram by far more on held-out steps than with near-uniform rows.
    def shared(concentration):
        n_topics = 8
        events, params = make_sequences(
            n_users=40, n_items=80, n_events=16000, n_topics=n_topics,
            user_heterogeneity=0.3, memory=0.0, noise=0.02,
            shared_concentration=concentration, random_state=0,
            return_params=True)
        per_user = [user_topics(events, params, u) for u in range(40)]
        splits = [int(0.8 * len(t)) for t in per_user]
        counts = sum(transition_counts(t[:s], n_topics)
                     for t, s in zip(per_user, splits))
        bigram = row_normalized(counts + 1)
        unigram = (counts.sum(axis=0) + 1) / (counts.sum() + n_topics)
        gain = np.mean([np.mean(np.log(bigram[t[s - 1:-1], t[s:]])
                                - np.log(unigram[t[s:]]))
                        for t, s in zip(per_user, splits)])
        rows = params["shared_transition"]
        entropy = -np.sum(rows * np.log(np.where(rows > 0, rows, 1)), axis=1).mean()
        return gain, entropy

    sharp_gain, sharp_entropy = shared(0.1)
    flat_gain, flat_entropy = shared(10.0)
    assert sharp_entropy < 1.0 < np.log(8) - 0.1 < flat_entropy
    assert sharp_gain > 0.45
    assert flat_gain < 0.1


def test_tiny_shared_concentration_gives_valid_rows():
    # numpy's Dirichlet returns NaN rows when every gamma draw underflows.
    events, params = make_sequences(n_users=5, n_items=200, n_events=500,
                                    n_topics=100, shared_concentration=1e-4,
                                    random_state=0, return_params=True)
    rows = params["shared_transition"]
    assert np.isfinite(rows).all()
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    assert (rows.max(axis=1) > 0.99).mean() > 0.9
    assert len(events) == 500


def test_many_events_is_fast():
    start = time.perf_counter()
    events = make_sequences(n_users=1000, n_items=20000, n_events=300_000,
                            random_state=0)
    elapsed = time.perf_counter() - start
    assert len(events) == 300_000
    # Well under a second on a quiet machine; a loop over users or events
    # would take minutes.
    assert elapsed < 15


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_users=0), "n_users must be at least 1"),
    (dict(n_users=2.5), "n_users must be an integer"),
    (dict(n_items=0), "n_items must be at least 1"),
    (dict(n_events=100, n_users=10, min_length=20), "n_events=100 is too small"),
    (dict(min_length=0), "min_length must be at least 1"),
    (dict(n_items=5, n_topics=6), "n_topics=6 exceeds n_items=5"),
    (dict(n_topics=0), "n_topics must be at least 1"),
    (dict(user_heterogeneity=1.5), r"user_heterogeneity must be in \[0.0, 1.0\]"),
    (dict(noise=-0.1), "noise must be in"),
    (dict(memory=1.0), "memory must be below 1"),
    (dict(memory=float("nan")), "memory must be a number"),
    (dict(popularity_exponent=-1), "popularity_exponent must be in"),
    (dict(shared_concentration=0), "shared_concentration must be positive"),
    (dict(shared_concentration=-0.5), "shared_concentration must be in"),
    (dict(random_state="seed"), "cannot be used to seed"),
])
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sequences(**kwargs)


def test_small_item_counts_and_one_topic():
    events = make_sequences(n_users=3, n_items=1, n_events=30, min_length=10,
                            random_state=0)
    assert (events["item"] == 0).all()
    events = make_sequences(n_users=3, n_items=7, n_events=30, n_topics=1,
                            min_length=10, random_state=0)
    assert events["item"].between(0, 6).all()


def test_popularity_exponent_skews_items():
    def top_share(exponent):
        events = make_sequences(n_users=20, n_items=100, n_events=20000,
                                n_topics=1, popularity_exponent=exponent,
                                random_state=0)
        return events["item"].value_counts(normalize=True).iloc[0]

    # Zipf(1) over 100 items: the top item has 1 / H_100 ~ 0.193 of the mass.
    assert top_share(1.0) == pytest.approx(0.193, abs=0.015)
    assert top_share(0.0) < 0.02
