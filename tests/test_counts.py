"""Count baselines against values computed by hand or by naive loops."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from skcrnn import (BigramRecommender, PersonalUnigramRecommender,
                    UniformRecommender, UnigramRecommender)

from .conftest import random_events


def frame(rows):
    """Events from (user, item, time) tuples."""
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


# user 1: a b a c ; user 2: b b  -> counts a2 b3 c1 (N = 6); transitions
# a->b, b->a, a->c, b->b
TOY_TRAIN = frame([(1, "a", 1), (1, "b", 2), (1, "a", 3), (1, "c", 4),
                   (2, "b", 1), (2, "b", 2)])
# rows in shuffled order, times make the sequences 1: c a, 2: a
TOY_TEST = frame([(1, "a", 11), (2, "a", 20), (1, "c", 10)])


def test_uniform_is_log_n_items():
    model = UniformRecommender().fit(TOY_TRAIN)
    np.testing.assert_allclose(model.score_samples(TOY_TEST), -math.log(3))
    assert model.score(TOY_TEST) == pytest.approx(-math.log(3))


def test_unigram_hand_computed():
    model = UnigramRecommender(alpha=1.0).fit(TOY_TRAIN)
    # (c + 1) / (6 + 3): a 3/9, b 4/9, c 2/9
    expected = np.log([3 / 9, 3 / 9, 2 / 9])
    np.testing.assert_allclose(model.score_samples(TOY_TEST), expected)
    user_means = [(np.log(3 / 9) + np.log(2 / 9)) / 2, np.log(3 / 9)]
    assert model.score(TOY_TEST) == pytest.approx(np.mean(user_means))


def test_unigram_alpha_zero_is_maximum_likelihood():
    model = UnigramRecommender(alpha=0.0).fit(TOY_TRAIN)
    np.testing.assert_allclose(model.predict_proba(TOY_TEST[:1])[0], [2 / 6, 3 / 6, 1 / 6])


def test_bigram_hand_computed():
    alpha = 2.0
    model = BigramRecommender(alpha=alpha).fit(TOY_TRAIN)
    p = {"a": 2 / 6, "b": 3 / 6, "c": 1 / 6}
    # user 1 continues after "c" (no outgoing transitions): c -> c is p(c);
    # then c -> a is p(a) again; user 2 continues after "b": b->a once, b->b once
    expected = [
        math.log((0 + alpha * p["a"]) / (0 + alpha)),       # row 0: 1, a after c
        math.log((1 + alpha * p["a"]) / (2 + alpha)),       # row 1: 2, a after b
        math.log((0 + alpha * p["c"]) / (0 + alpha)),       # row 2: 1, c after c
    ]
    np.testing.assert_allclose(model.score_samples(TOY_TEST), expected)
    with pytest.warns(UserWarning, match="unknown"):  # user 3: no previous item
        proba_after_a = model.predict_proba(frame([(3, "a", 99)]))
    np.testing.assert_allclose(proba_after_a[0], [p["a"], p["b"], p["c"]])


def test_bigram_transitions_do_not_cross_users():
    model = BigramRecommender(alpha=1.0).fit(TOY_TRAIN)
    # "c" (end of user 1) -> "b" (start of user 2) must not be a transition
    assert model.transition_counts_[2].sum() == 0
    assert model.transition_counts_.sum() == 4


def test_personal_unigram_hand_computed():
    beta = 3.0
    model = PersonalUnigramRecommender(beta=beta).fit(TOY_TRAIN)
    p = {"a": 2 / 6, "b": 3 / 6, "c": 1 / 6}
    expected = [
        # user 1 history a b a c, then c: counts a2 b1 c2 over 5
        math.log((2 + beta * p["a"]) / (5 + beta)),
        # user 2 history b b
        math.log((0 + beta * p["a"]) / (2 + beta)),
        # user 1 history a b a c: c once over 4
        math.log((1 + beta * p["c"]) / (4 + beta)),
    ]
    np.testing.assert_allclose(model.score_samples(TOY_TEST), expected)


def naive_bigram_scores(train, test, alpha):
    """Per-user loops over sorted sequences, straight from the definition."""
    def sequences(events):
        ordered = events.sort_values(["user", "timestamp"], kind="stable")
        return {u: list(g["item"]) for u, g in ordered.groupby("user")}

    train_seqs, counts, transitions = sequences(train), Counter(train["item"]), Counter()
    for seq in train_seqs.values():
        transitions.update(zip(seq[:-1], seq[1:]))
    out_counts = Counter()
    for (i, _), c in transitions.items():
        out_counts[i] += c
    total = sum(counts.values())
    scores = {}
    ordered = test.sort_values(["user", "timestamp"], kind="stable")
    for user, group in ordered.groupby("user"):
        previous = train_seqs[user][-1]
        for index, item in zip(group.index, group["item"]):
            p = counts[item] / total
            scores[index] = math.log((transitions[previous, item] + alpha * p)
                                     / (out_counts[previous] + alpha))
            previous = item
    return pd.Series(scores).loc[test.index].to_numpy()


def naive_personal_scores(train, test, beta):
    counts, total = Counter(train["item"]), len(train)
    history = {u: Counter(g["item"]) for u, g in train.groupby("user")}
    scores = {}
    ordered = test.sort_values(["user", "timestamp"], kind="stable")
    for user, group in ordered.groupby("user"):
        seen = Counter(history[user])
        for index, item in zip(group.index, group["item"]):
            n = sum(seen.values())
            scores[index] = math.log((seen[item] + beta * counts[item] / total)
                                     / (n + beta))
            seen[item] += 1
    return pd.Series(scores).loc[test.index].to_numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bigram_and_personal_unigram_match_naive_loops(seed):
    from skcrnn.model_selection import suffix_split
    train, test = suffix_split(random_events(n_users=9, n_items=12, n_events=400,
                                             seed=seed), 0.3, 2, 40)
    bigram = BigramRecommender(alpha=1.7).fit(train)
    np.testing.assert_allclose(bigram.score_samples(test),
                               naive_bigram_scores(train, test, 1.7), rtol=1e-12)
    personal = PersonalUnigramRecommender(beta=0.6).fit(train)
    np.testing.assert_allclose(personal.score_samples(test),
                               naive_personal_scores(train, test, 0.6), rtol=1e-12)
