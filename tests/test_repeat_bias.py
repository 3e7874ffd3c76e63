"""repeat_bias: a scoring-time offset on the logits of the items a user has had.

Checked against a naive computation from the model's own distributions:
each row of ``predict_proba`` with the bias is the row without it, the seen
items' probabilities times ``exp(b)``, renormalised; the seen items are the
user's training events and the user's earlier rows of the scored frame.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from skcrnn import CollaborativeGRURecommender, SelfAttentionRecommender
from skcrnn.model_selection import suffix_split

from .conftest import random_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {
    "C-GRU": lambda **kw: CollaborativeGRURecommender(
        hidden_size=4, max_epochs=2, device="cpu", random_state=0, **kw),
    "C-GRU copy": lambda **kw: CollaborativeGRURecommender(
        hidden_size=4, max_epochs=2, copy_history=True, copy_decay=0.9,
        device="cpu", random_state=0, **kw),
    "self-attention": lambda **kw: SelfAttentionRecommender(
        hidden_size=4, n_heads=2, max_history=4, max_epochs=2, device="cpu",
        random_state=0, **kw),
}


@pytest.fixture(scope="module")
def split():
    events = random_events(n_users=6, n_items=40, n_events=160, ties=False, seed=2)
    train, test = suffix_split(events, 0.25, 2, 50)
    stranger = pd.DataFrame({"user": 999, "item": ["i3", "i5", "i3"],
                             "timestamp": test["timestamp"].max()
                             + pd.to_timedelta([1, 2, 3], "s")})
    return train, pd.concat([test, stranger], ignore_index=True)


def quiet(method, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the unknown user
        return method(*args)


def naive_biased(model, train, test, bias):
    """Rows of predict_proba with ``bias`` on the seen items' logits, by hand."""
    proba = quiet(model.set_params(repeat_bias=0.0).predict_proba, test)
    column = {item: j for j, item in enumerate(model.classes_)}
    order = test.sort_values("timestamp", kind="stable").index
    seen = {user: {column[i] for i in group["item"]}
            for user, group in train.groupby("user")}
    biased = np.empty_like(proba)
    for row in order:
        user, item = test.loc[row, "user"], test.loc[row, "item"]
        had = sorted(seen.setdefault(user, set()))
        weights = proba[row].copy()
        weights[had] *= np.exp(bias)
        biased[row] = weights / weights.sum()
        seen[user].add(column[item])
    return biased


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("bias", [-3.0, 1.5])
def test_rows_are_the_unbiased_rows_reweighted(split, name, bias):
    train, test = split
    model = MODELS[name]().fit(train)
    expected = naive_biased(model, train, test, bias)
    model.set_params(repeat_bias=bias)
    got = quiet(model.predict_proba, test)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    targets = pd.Index(model.classes_).get_indexer(test["item"])
    np.testing.assert_allclose(quiet(model.score_samples, test),
                               np.log(expected[np.arange(len(test)), targets]),
                               rtol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_training_does_not_depend_on_it(split, name):
    train, _ = split
    plain = MODELS[name]().fit(train)
    biased = MODELS[name](repeat_bias=-2.0).fit(train)
    for key, tensor in plain.network_.state_dict().items():
        assert torch.equal(biased.network_.state_dict()[key], tensor), key


def test_zero_is_the_model_as_trained(split):
    train, test = split
    model = MODELS["C-GRU"]().fit(train)
    before = quiet(model.score_samples, test)
    np.testing.assert_array_equal(
        quiet(model.set_params(repeat_bias=0).score_samples, test), before)


def test_recommend_follows_it(split):
    """A very negative bias leaves only items the user has not had on top."""
    train, test = split
    model = MODELS["C-GRU"](repeat_bias=-50.0).fit(train)
    user = train["user"].iloc[0]
    had = set(train.loc[train["user"] == user, "item"])
    top = model.recommend([user], k=5)
    assert not had & set(np.asarray(top).ravel().tolist())


def test_saved_and_loaded_with_the_model(split, tmp_path):
    train, test = split
    model = MODELS["C-GRU"](repeat_bias=-1.0).fit(train)
    model.save(tmp_path / "model.skcrnn")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.skcrnn")
    assert loaded.repeat_bias == -1.0
    np.testing.assert_array_equal(quiet(loaded.score_samples, test),
                                  quiet(model.score_samples, test))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "-1"])
def test_bad_values_are_refused(split, bad):
    train, test = split
    with pytest.raises(InvalidParameterError, match="repeat_bias"):
        MODELS["C-GRU"](repeat_bias=bad).fit(train)
    model = MODELS["C-GRU"]().fit(train).set_params(repeat_bias=bad)
    with pytest.raises((ValueError, TypeError), match="repeat_bias"):
        quiet(model.score_samples, test)


def naive_limit(model, train, test, toward_seen):
    """The rows as ``repeat_bias`` goes to +inf (or -inf), by hand.

    The model's row restricted to the items the user has had (or has not),
    renormalised; a row without such items stays as it is.
    """
    proba = quiet(model.set_params(repeat_bias=0.0).predict_proba, test)
    column = {item: j for j, item in enumerate(model.classes_)}
    seen = {user: {column[i] for i in group["item"]}
            for user, group in train.groupby("user")}
    limit = np.empty_like(proba)
    for row in test.sort_values("timestamp", kind="stable").index:
        user = test.loc[row, "user"]
        keep = np.zeros(proba.shape[1], dtype=bool)
        keep[sorted(seen.setdefault(user, set()))] = True
        if not toward_seen:
            keep = ~keep
        weights = np.where(keep, proba[row], 0.0) if keep.any() else proba[row]
        limit[row] = weights / weights.sum()
        seen[user].add(column[test.loc[row, "item"]])
    return limit


@pytest.mark.parametrize("bias", [1e15, -1e16, 1e30, -1e30])
def test_huge_finite_bias_is_exact(split, bias):
    """Issue 24, item 3: at 1e15 and beyond rows summed to 0.92..8 (rounding)."""
    train, test = split
    model = MODELS["C-GRU"]().fit(train)
    expected = naive_limit(model, train, test, toward_seen=bias > 0)
    got = quiet(model.set_params(repeat_bias=bias).predict_proba, test)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-300)
    targets = pd.Index(model.classes_).get_indexer(test["item"])
    chosen = expected[np.arange(len(test)), targets]
    scores = quiet(model.score_samples, test)
    kept = chosen > 0
    np.testing.assert_allclose(scores[kept], np.log(chosen[kept]), rtol=1e-9)
    # the others are pushed down by about |bias| nats: finite, far below
    assert np.isfinite(scores).all() and (scores[~kept] < -abs(bias) / 2).all()
