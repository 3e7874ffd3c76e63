"""The full-distribution paths hold a bounded number of log-probabilities.

``predict``, ``predict_proba``, ``recommend``, ``recall_at_k`` and ``mrr``
compute whole next-item distributions; however long a user's rows are, no
more than about ``_CHUNK_CELLS`` of them may exist at once.
"""

import numpy as np
import pytest
from sklearn.base import clone

import skcrnn._base as base_module
from skcrnn import (BigramRecommender, PersonalUnigramRecommender,
                    UniformRecommender, UnigramRecommender)
from skcrnn.metrics import mrr, recall_at_k

from .conftest import random_events
from .estimators import ALL_ESTIMATORS, ids

COUNT_MODELS = (UniformRecommender, UnigramRecommender, PersonalUnigramRecommender,
                BigramRecommender)

#: Log-probabilities allowed at once in the bounded runs: three rows of 8 items.
SMALL_CHUNK = 24


def answers(model, events):
    """Everything the full-distribution paths return on ``events``."""
    return {
        "predict": model.predict(events),
        "predict_proba": model.predict_proba(events),
        "recall_at_k": recall_at_k(model, events, k=3),
        "mrr": mrr(model, events),
        "recommend": model.recommend(model.users_, k=4, exclude_seen=True),
    }


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_long_users_are_streamed_in_bounded_blocks(estimator, monkeypatch,
                                                   one_torch_thread):
    # two users of about 100 rows each, 8 items
    events = random_events(n_users=2, n_events=200)
    model = clone(estimator).fit(events)
    assert model.n_items_ == 8
    unbounded = answers(model, events)

    sizes = []
    log_proba = model._log_proba

    def spy(sequences, prefixes, targets=None):
        if targets is None:
            sizes.append(len(prefixes))
        return log_proba(sequences, prefixes, targets)

    monkeypatch.setattr(model, "_log_proba", spy)
    monkeypatch.setattr(base_module, "_CHUNK_CELLS", SMALL_CHUNK)
    bounded = answers(model, events)
    assert sizes and max(sizes) <= SMALL_CHUNK // model.n_items_
    # products of floats (networks, factors, HMM) may round differently with
    # fewer rows at once; counts are exact
    rtol = 0 if isinstance(model, COUNT_MODELS) else 1e-12
    np.testing.assert_array_equal(bounded["predict"], unbounded["predict"])
    np.testing.assert_allclose(bounded["predict_proba"], unbounded["predict_proba"],
                               rtol=rtol, atol=0)
    assert bounded["recall_at_k"] == unbounded["recall_at_k"]
    assert bounded["mrr"] == unbounded["mrr"]
    recommended, expected = bounded["recommend"], unbounded["recommend"]
    assert recommended.drop(columns="score").equals(expected.drop(columns="score"))
    np.testing.assert_allclose(recommended["score"], expected["score"], rtol=rtol,
                               atol=0)


def test_items_beyond_the_bound_get_one_row_per_call(monkeypatch):
    events = random_events(n_users=2, n_events=60)
    model = BigramRecommender().fit(events)
    unbounded = model.predict_proba(events)
    monkeypatch.setattr(base_module, "_CHUNK_CELLS", 3)  # fewer than the 8 items
    np.testing.assert_array_equal(model.predict_proba(events), unbounded)
