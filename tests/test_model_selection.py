"""The paper's protocol against a plain-Python implementation, and CV."""

import math
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skcrnn import BigramRecommender
from skcrnn.model_selection import (EventFilter, UserSuffixSplit,
                                    preprocess_like_paper, suffix_split)

from .conftest import SHARED_DATA, random_events


def naive_protocol(events, min_count, min_events, min_entropy, test_size, lo, hi):
    """The protocol written from its description, one user at a time."""
    item_counts = Counter(events["item"])
    sequences = defaultdict(list)
    for index, user, item, time in zip(events.index, events["user"], events["item"],
                                       events["timestamp"]):
        if item_counts[item] >= min_count:
            sequences[user].append((time, len(sequences[user]), index, item))
    train, test = [], []
    for user, seq in sequences.items():
        seq.sort()  # by time, then row order: a stable sort
        if len(seq) < min_events:
            continue
        counts = Counter(item for *_, item in seq)
        p = np.array(list(counts.values())) / len(seq)
        if -(p * np.log(p)).sum() <= min_entropy:
            continue
        cut = min(hi, max(lo, round(test_size * len(seq))))
        cut = min(cut, len(seq) - 1)
        train += [index for _, _, index, _ in seq[:-cut]]
        test += [index for _, _, index, _ in seq[-cut:]]
    train_items = set(events.loc[train, "item"])
    test = [i for i in test if events.loc[i, "item"] in train_items]
    return sorted(train), sorted(test)


@pytest.mark.parametrize("seed", range(4))
def test_filter_and_split_match_naive_protocol(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    events = pd.DataFrame({
        "user": rng.integers(0, 60, n) * rng.integers(1, 3, n),
        "item": rng.zipf(1.6, n) % 80,
        "timestamp": rng.integers(0, 300, n),  # many ties
    })
    naive_train, naive_test = naive_protocol(events, 10, 11, 2.0, 0.1, 3, 7)
    kept = EventFilter(10, 11, 2.0).fit_transform(events)
    train, test = suffix_split(kept, test_size=0.1, min_test=3, max_test=7)
    assert sorted(train.index) == naive_train
    assert sorted(test.index) == naive_test
    assert len(test) > 0 and len(train) > len(test)


def test_round_half_to_even():
    # half to even: 2.5 -> 2, 3.5 -> 4, 0.5 -> 0, 1.5 -> 2
    for n_events, expected in [(100, 2), (140, 4), (20, 0), (60, 2)]:
        events = pd.DataFrame({"user": 0, "item": np.arange(n_events) % 5,
                               "timestamp": np.arange(n_events)})
        _, test = suffix_split(events, 0.025, min_test=0, max_test=500)
        assert len(test) == expected


def test_split_keeps_row_order_and_columns(events):
    events = events.assign(extra=np.arange(len(events)))
    train, test = suffix_split(events, 0.2, 2, 10)
    assert list(train.columns) == list(events.columns)
    assert train.index.is_monotonic_increasing and test.index.is_monotonic_increasing
    assert not set(train.index) & set(test.index)


def test_filter_entropy_is_strict_and_items_not_refiltered():
    # user 0: one item only (entropy 0) -> dropped at min_entropy=0
    events = pd.DataFrame({"user": [0] * 12 + [1] * 12,
                           "item": ["x"] * 12 + ["x", "y"] * 6,
                           "timestamp": list(range(24))})
    fitted = EventFilter(min_item_count=1, min_user_events=11, min_entropy=0.0).fit(events)
    assert list(fitted.users_) == [1]
    assert list(fitted.items_) == ["x", "y"]
    out = fitted.transform(events)
    assert set(out["user"]) == {1} and len(out) == 12


@pytest.mark.skipif(not (SHARED_DATA / "foursquare-checkins").exists(),
                    reason="../shared/data is not next to this checkout")
def test_paper_protocol_on_real_foursquare_log():
    events = pd.read_csv(SHARED_DATA / "foursquare-checkins" / "checkins.tsv.gz",
                         sep="\t", header=None, dtype={4: str},
                         names=["user", "timestamp", "lat", "lon", "item"])
    events["timestamp"] = pd.to_datetime(events["timestamp"])
    before = events.copy()
    train, test = preprocess_like_paper(events, "brightkite")
    pd.testing.assert_frame_equal(events, before)
    assert (train["user"].nunique(), train["item"].nunique(), len(train), len(test)) == (
        1738, 4263, 78969, 5324)
    from skcrnn import UniformRecommender, UnigramRecommender
    assert round(UniformRecommender().fit(train).score(test), 3) == -8.358
    assert round(UnigramRecommender(alpha=1).fit(train).score(test), 3) == -7.672


def test_user_suffix_split_blocks_move_back_in_time():
    events = pd.DataFrame({"user": np.repeat([0, 1], 40),
                           "item": np.tile(np.arange(4), 20),
                           "timestamp": np.tile(np.arange(40), 2)})
    splits = list(UserSuffixSplit(n_splits=3, test_size=0.1).split(events))
    assert len(splits) == UserSuffixSplit(n_splits=3).get_n_splits() == 3
    for i, (train, test) in enumerate(splits):
        times = events["timestamp"].to_numpy()
        assert sorted(set(times[test])) == list(range(36 - 4 * i, 40 - 4 * i))
        assert sorted(set(times[train])) == list(range(0, 36 - 4 * i))


def test_user_suffix_split_skips_users_without_training_events():
    events = pd.DataFrame({"user": [0] * 6 + [1] * 40, "item": 0,
                           "timestamp": list(range(6)) + list(range(40))})
    for train, test in UserSuffixSplit(n_splits=2, test_size=0.1).split(events):
        users_test = set(events["user"].to_numpy()[test])
        users_train = set(events["user"].to_numpy()[train])
        assert users_test <= users_train
    # second split: user 0 (6 events, blocks of 3) has nothing left to train on
    _, test = list(UserSuffixSplit(n_splits=2, test_size=0.1).split(events))[1]
    assert set(events["user"].to_numpy()[test]) == {1}


def markov_events(deterministic, n_users=30, length=60, n_items=15, seed=0):
    """Users walking a fixed cycle over items (or drawing items at random)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        item = rng.integers(n_items)
        for t in range(length):
            rows.append((user, f"i{item}", t))
            item = (item + 1) % n_items if deterministic else rng.integers(n_items)
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


@pytest.mark.parametrize("deterministic, best_alpha", [(True, 0.01), (False, 1000.0)])
def test_grid_search_chooses_the_right_alpha(deterministic, best_alpha):
    search = GridSearchCV(
        Pipeline([("filter", EventFilter(min_item_count=5, min_user_events=11)),
                  ("model", BigramRecommender())]),
        {"model__alpha": [0.01, 1000.0]},
        cv=UserSuffixSplit(n_splits=2, test_size=0.1))
    search.fit(markov_events(deterministic))
    assert search.best_params_ == {"model__alpha": best_alpha}
    scores = search.cv_results_["mean_test_score"]
    assert abs(scores[0] - scores[1]) > 0.1


def test_parameters_are_validated_in_fit_and_split(events):
    with pytest.raises(ValueError, match="min_item_count"):
        EventFilter(min_item_count=-1).fit(events)
    with pytest.raises(ValueError, match="test_size"):
        suffix_split(events, test_size=1.5)
    with pytest.raises(ValueError, match="min_test"):
        suffix_split(events, min_test=5, max_test=2)
    with pytest.raises(ValueError, match="dataset"):
        preprocess_like_paper(events, "movielens")
    with pytest.raises(ValueError, match="test_size"):
        next(UserSuffixSplit(test_size=0).split(events))
