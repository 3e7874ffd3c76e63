"""Metrics against closed forms and naive computations."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from skcrnn import BigramRecommender, UniformRecommender
from skcrnn.metrics import entropy_bins, mrr, recall_at_k, sequence_nll, user_entropy
from skcrnn.model_selection import EventFilter


def per_user_mean(values, users):
    return pd.Series(values).groupby(np.asarray(users)).mean().mean()


def test_uniform_closed_forms(train_test):
    train, test = train_test
    model = UniformRecommender().fit(train)
    n = model.n_items_
    assert recall_at_k(model, test, k=3) == pytest.approx(3 / n)
    assert mrr(model, test) == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n)
    assert sequence_nll(model, test) == pytest.approx(math.log(n))


def naive_ranks(model, test, k):
    """Expected hit and reciprocal rank, enumerating tie positions explicitly."""
    proba = model.predict_proba(test)
    columns = pd.Index(model.classes_).get_indexer(test["item"])
    hits, reciprocal = [], []
    for row, col in zip(proba, columns):
        greater = int((row > row[col]).sum())
        positions = range(greater + 1, greater + int((row == row[col]).sum()) + 1)
        hits.append(np.mean([p <= k for p in positions]))
        reciprocal.append(np.mean([1 / p for p in positions]))
    return per_user_mean(hits, test["user"]), per_user_mean(reciprocal, test["user"])


def test_recall_and_mrr_match_naive_ranks(train_test):
    train, test = train_test
    model = BigramRecommender(alpha=0.5).fit(train)
    expected_recall, expected_mrr = naive_ranks(model, test, k=2)
    assert recall_at_k(model, test, k=2) == pytest.approx(expected_recall)
    assert mrr(model, test) == pytest.approx(expected_mrr)


def test_metrics_accept_pipelines(train_test):
    train, test = train_test
    pipe = Pipeline([("filter", EventFilter(min_item_count=1, min_user_events=1)),
                     ("model", BigramRecommender())]).fit(train)
    model = pipe.named_steps["model"]
    kept = pipe.named_steps["filter"].transform(test)
    assert recall_at_k(pipe, test, k=3) == pytest.approx(recall_at_k(model, kept, k=3))
    assert sequence_nll(pipe, test) == pytest.approx(-model.score(kept))


def test_entropy_and_bins_match_naive(events):
    entropy = user_entropy(events)
    for user, group in events.groupby("user"):
        p = group["item"].value_counts(normalize=True).to_numpy()
        assert entropy[user] == pytest.approx(-(p * np.log(p)).sum())
    bins = entropy_bins(events, n_bins=3)
    assert sorted(bins.value_counts().tolist()) == [2, 2, 2]
    ordered = entropy.sort_values(kind="stable")
    assert list(bins[ordered.index]) == sorted(bins)


def test_metric_arguments_are_checked(train_test):
    train, test = train_test
    model = UniformRecommender().fit(train)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(model, test, k=0)
    with pytest.raises(ValueError, match="n_bins"):
        entropy_bins(test, n_bins=0)
