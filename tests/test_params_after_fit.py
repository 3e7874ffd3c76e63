"""The rule for parameters changed after ``fit`` (issue 24; docs/parameters.rst).

Every parameter of every estimator is covered, generated from
``get_params()``: a fit-time one changed after fit makes scoring, ``update``,
``partial_fit`` and ``save`` raise a ``ValueError`` naming it and its fitted
value, changing nothing, until it is set back (or the model refitted); a
scoring-time one takes effect at once, with rows that still sum to 1 and a
``save``/``load`` that keeps them.
"""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest

from skcrnn import CollaborativeGRURecommender

from .conftest import random_events
from .estimators import ALL_ESTIMATORS, ids
from .test_rnn_copy import fitted_copy_model, naive_copy_scores, revisiting_events

#: A valid value other than the estimators' own for each parameter.
OTHER_VALUES = {
    "user_col": "who", "item_col": "what", "time_col": "when",
    "handle_unknown": "error", "alpha": 7.0, "beta": 7.0,
    "n_factors": 3, "algorithm": "als", "regularization": 0.5,
    "n_iterations": 2, "learning_rate": 0.02, "calibration_fraction": 0.3,
    "uniform_share_init": 0.2, "use_gpu": False, "n_jobs": 1,
    "random_state": 5, "verbose": 0, "n_states": 2, "n_iter": 3, "tol": 0.1,
    "emission_smoothing": 0.5, "hidden_size": 3, "cell": "tanh",
    "candidate_activation": "tanh", "recurrent_weights": "shared", "rank": 1,
    "deviation_penalty": 0.25, "dropout": 0.1, "loss": "sampled",
    "n_negatives": 2, "negative_power": 0.5, "chunk_size": 3,
    "max_train_chunks": 2, "initial_state": 0.2, "copy_history": True,
    "copy_decay": 0.5, "optimizer": "adam", "rho": 0.9, "epsilon": 1e-6,
    "batch_size": 3, "max_epochs": 1, "validation_fraction": 0.2,
    "n_iter_no_change": 1, "refit": False, "warm_start": True, "partial_epochs": 2,
    "replay_epochs": 1, "repeat_bias": -1.5, "device": "cpu",
    "checkpoint_dir": "checkpoints", "n_blocks": 1, "n_heads": 2,
    "max_history": 2, "user_embedding": True, "tie_weights": False,
    "train_stride": 1,
}


#: A second valid value, where an estimator's own value is OTHER_VALUES'.
SECOND_VALUES = {
    "handle_unknown": "ignore", "algorithm": "bpr", "cell": "gru",
    "recurrent_weights": "per_user", "candidate_activation": "sigmoid",
    "optimizer": "rmsprop", "loss": "full", "device": "auto", "n_heads": 1,
    "copy_history": False, "user_embedding": False, "tie_weights": True,
    "use_gpu": True, "verbose": 1, "refit": True, "n_jobs": 2,
}


def other_value(estimator, name):
    """A valid value of ``name`` other than the estimator's own."""
    value = estimator.get_params()[name]
    for candidate in (OTHER_VALUES[name], SECOND_VALUES.get(name)):
        if candidate is not None and candidate != value:
            return candidate
    raise AssertionError(f"no other value of {name} than {value!r}")


@pytest.fixture(scope="module")
def data():
    events = random_events(n_users=5, n_items=6, n_events=90, ties=False, seed=4)
    cut = events["timestamp"].quantile(0.7)
    return events[events["timestamp"] <= cut], events[events["timestamp"] > cut]


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {ids(e) + str(i): copy.deepcopy(e).fit(train)
                for i, e in enumerate(ALL_ESTIMATORS)}


def cases():
    for index, estimator in enumerate(ALL_ESTIMATORS):
        for name in sorted(estimator.get_params()):
            kind = ("scoring" if name in type(estimator)._scoring_time_params
                    else "fit")
            yield pytest.param(index, name, kind,
                               id=f"{ids(estimator)}{index}-{name}-{kind}")


def test_every_parameter_of_every_estimator_is_covered():
    names = {name for estimator in ALL_ESTIMATORS for name in estimator.get_params()}
    assert names <= set(OTHER_VALUES), sorted(names - set(OTHER_VALUES))


def quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


@pytest.mark.parametrize("index, name, kind", list(cases()))
def test_a_parameter_changed_after_fit(fitted, data, tmp_path, index, name, kind):
    estimator = ALL_ESTIMATORS[index]
    model = copy.deepcopy(fitted[ids(estimator) + str(index)])
    _, test = data
    before = quiet(model.score_samples, test)
    value = other_value(estimator, name)
    fitted_value = model.get_params()[name]
    model.set_params(**{name: value})
    if kind == "fit":
        later = test.assign(timestamp=test["timestamp"] + pd.Timedelta("1D"))
        calls = {"score_samples": lambda: model.score_samples(test),
                 "predict_proba": lambda: model.predict_proba(test),
                 "recommend": lambda: model.recommend(test["user"].iloc[:1]),
                 "update": lambda: model.update(later),
                 "partial_fit": lambda: model.partial_fit(later),
                 "save": lambda: model.save(tmp_path / "model.skcrnn")}
        for call in calls.values():
            with pytest.raises(ValueError, match=f"{name}={fitted_value!r}"):
                quiet(call)
        assert not (tmp_path / "model.skcrnn").exists()
        model.set_params(**{name: fitted_value})
        np.testing.assert_array_equal(quiet(model.score_samples, test), before)
        return
    # scoring-time: takes effect at once, correctly
    if name in ("user_col", "item_col", "time_col"):
        test = test.rename(columns={fitted_value: value})
    if name == "handle_unknown":
        before_after = quiet(model.score_samples, test)
        np.testing.assert_array_equal(before_after, before)
        return
    proba = quiet(model.predict_proba, test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    scores = quiet(model.score_samples, test)
    targets = pd.Index(model.classes_).get_indexer(test[model.item_col])
    np.testing.assert_allclose(scores, np.log(proba[np.arange(len(test)), targets]),
                               rtol=1e-6, atol=1e-9)
    model.save(tmp_path / "model.skcrnn")
    loaded = type(model).load(tmp_path / "model.skcrnn")
    assert loaded.get_params()[name] == model.get_params()[name]
    np.testing.assert_array_equal(quiet(loaded.score_samples, test), scores)


def test_fit_time_parameter_set_back_by_assignment_is_fine(data):
    train, test = data
    model = CollaborativeGRURecommender(hidden_size=3, max_epochs=1,
                                        device="cpu").fit(train)
    model.hidden_size = 4
    with pytest.raises(ValueError, match="hidden_size=3.*Refit"):
        model.score(test)
    model.fit(train)  # a refit takes the new value
    assert model.network_.config["hidden_size"] == 4 and np.isfinite(model.score(test))


@pytest.mark.parametrize("decay", [0.3, 1.0])
def test_copy_decay_set_after_fit_is_exact(decay):
    """Item 2: rows summed to up to 5.25 (the old decay's cache, the new masses)."""
    events = revisiting_events()
    last = events.groupby("user")["timestamp"].transform("max")
    train, test = (events[events["timestamp"] < last - 3],
                   events[events["timestamp"] >= last - 3])
    model = fitted_copy_model(train, copy_decay=0.8).set_params(copy_decay=decay)
    expected, expected_proba = naive_copy_scores(model, train, test)
    np.testing.assert_allclose(model.score_samples(test), expected[test.index],
                               rtol=1e-9, atol=1e-12)
    proba = model.predict_proba(test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba, expected_proba[
        pd.Index(expected.index).get_indexer(test.index)], rtol=1e-9, atol=1e-12)


def test_the_docs_list_every_fit_time_parameter():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "parameters.rst").read_text()
    table = text[text.index(".. list-table::"):]
    for estimator in ALL_ESTIMATORS:
        cls = type(estimator)
        row = table[table.index(f"``{cls.__name__}``"):]
        row = row[:row.index("   * - ", 10)] if "   * - " in row[10:] else row
        for name in cls._fit_time_param_names():
            assert f"``{name}``" in row, (cls.__name__, name)
