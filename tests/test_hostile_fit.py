"""A fit that raises leaves the recommender as it was before the call.

Bad data found late, a diverging optimizer or a KeyboardInterrupt during
``fit`` must not leave a model whose vocabularies and histories come from the
new data while its parameters come from the old fit.
"""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skcrnn import UniformRecommender

from .conftest import random_events
from .estimators import ALL_ESTIMATORS, ids


def other_events():
    """Events with other users and items than :func:`random_events`."""
    events = random_events(n_users=4, n_items=5, n_events=60, seed=1)
    return events.assign(user=events["user"] + 50, item="j" + events["item"])


def failing_fit(estimator_type, error, when):
    """A ``_fit_sequences`` that raises ``error`` before or after the real one."""
    original = estimator_type._fit_sequences

    def fit_sequences(self, sequences):
        if when == "late":
            original(self, sequences)
        raise error("the fit failed")
    return fit_sequences


@pytest.mark.parametrize("when", ["early", "late"])
@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_failed_refit_keeps_the_previous_fit(estimator, error, when, monkeypatch):
    events = random_events()
    model = clone(estimator).fit(events)
    expected = model.score_samples(events)
    classes, users = model.classes_.copy(), model.users_.copy()
    monkeypatch.setattr(type(model), "_fit_sequences",
                        failing_fit(type(model), error, when))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match="the fit failed"):
            model.fit(other_events())
    monkeypatch.undo()
    np.testing.assert_array_equal(model.classes_, classes)
    np.testing.assert_array_equal(model.users_, users)
    np.testing.assert_array_equal(model.score_samples(events), expected)


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_failed_first_fit_leaves_the_model_unfitted(error, monkeypatch):
    model = UniformRecommender()
    monkeypatch.setattr(UniformRecommender, "_fit_sequences",
                        failing_fit(UniformRecommender, error, "late"))
    with pytest.raises(error):
        model.fit(random_events())
    monkeypatch.undo()
    assert set(vars(model)) == set(model.get_params())
    with pytest.raises(NotFittedError):
        model.score_samples(random_events())


class _CrowdAware(UniformRecommender):
    """Sets ``crowd_`` only when it is fitted on more than five users."""

    def _fit_sequences(self, sequences):
        if sequences.n_groups > 5:
            self.crowd_ = True


def test_refit_drops_fitted_attributes_it_does_not_set():
    model = _CrowdAware().fit(random_events(n_users=6))
    assert model.crowd_
    model.fit(random_events(n_users=3))
    assert not hasattr(model, "crowd_")
    assert set(vars(model)) == set(vars(_CrowdAware().fit(random_events(n_users=3))))


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_refit_equals_a_fresh_fit(estimator):
    events = random_events()
    model = clone(estimator).fit(other_events()).fit(events)
    fresh = clone(estimator).fit(events)
    assert set(vars(model)) == set(vars(fresh))
    np.testing.assert_array_equal(model.score_samples(events),
                                  fresh.score_samples(events))


@pytest.mark.parametrize("error", [None, ValueError])
def test_refit_keeps_private_attributes_it_does_not_own(error, monkeypatch):
    """Attributes such as those scikit-learn's metadata routing or callbacks
    put on an estimator (a ``Pipeline`` does during its ``fit``) are no
    fitted state: a refit, failed or not, keeps them."""
    model = UniformRecommender().fit(random_events())
    model._routing_setting = "kept"
    if error is not None:
        monkeypatch.setattr(UniformRecommender, "_fit_sequences",
                            failing_fit(UniformRecommender, error, "early"))
        with pytest.raises(error):
            model.fit(other_events())
    else:
        model.fit(other_events())
    assert model._routing_setting == "kept"
