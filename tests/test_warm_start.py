"""``warm_start`` of the torch models (issue 26, part 1 and 3).

With ``warm_start=True``, ``fit`` on a fitted model starts from its network
and optimizer statistics (vocabularies carried by label: known rows kept,
new users and items grown as ``partial_fit`` grows them, absent ones
dropped), then trains as any fit does. Written once in the torch layer:
every test runs on both models.
"""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from skcrnn import CollaborativeGRURecommender, SelfAttentionRecommender
from skcrnn._migrations import MIGRATIONS
from skcrnn._torch.checkpoint import FILENAME
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import UserSuffixSplit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {
    "cgru": (CollaborativeGRURecommender,
             dict(hidden_size=4, chunk_size=8, batch_size=4, max_epochs=3,
                  device="cpu", random_state=0)),
    "attention": (SelfAttentionRecommender,
                  dict(hidden_size=8, n_blocks=1, max_history=6, batch_size=16,
                       max_epochs=3, device="cpu", random_state=0)),
}


def make(kind, **params):
    cls, defaults = MODELS[kind]
    return cls(**{**defaults, **params})


@pytest.fixture(params=sorted(MODELS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def events():
    return make_sequences(n_users=8, n_items=15, n_events=480, random_state=0)


@pytest.fixture(scope="module")
def halves(events):
    """The first half of the period (fewer users and items), and everything."""
    cut = events["timestamp"].quantile(0.5)
    first = events[events["timestamp"] <= cut]
    # a user and an item that only the second half has
    first = first[(first["user"] != first["user"].max())
                  & (first["item"] != first["item"].max())]
    assert first["user"].nunique() < events["user"].nunique()
    assert first["item"].nunique() < events["item"].nunique()
    return first, events


def weights(model):
    return {name: tensor.detach().clone()
            for name, tensor in model.network_.state_dict().items()}


def assert_same_weights(a, b, **tolerance):
    assert a.keys() == b.keys()
    for name in a:
        if tolerance:
            torch.testing.assert_close(a[name], b[name], **tolerance)
        else:
            assert torch.equal(a[name], b[name]), name


def assert_same_fit(a, b):
    assert_same_weights(weights(a), weights(b))
    assert a.history_ == b.history_ or _no_seconds(a.history_) == _no_seconds(
        b.history_)
    assert a.best_epoch_ == b.best_epoch_


def _no_seconds(history):
    return [{key: value for key, value in entry.items()
             if key not in ("seconds", "events_per_second")} for entry in history]


def row_of(model, name, label, kind="item"):
    labels = model.classes_ if kind == "item" else model.users_
    code = pd.Index(labels).get_indexer([label])[0]
    return model.network_.get_parameter(name)[code]


# ---------------------------------------------------------------- cold fits
def test_warm_start_is_false_by_default_and_scoring_time(kind):
    model = make(kind)
    assert model.get_params()["warm_start"] is False
    assert "warm_start" in type(model)._scoring_time_params


def test_unfitted_warm_start_is_a_cold_fit_bit_for_bit(kind, events):
    cold = make(kind).fit(events)
    warm = make(kind, warm_start=True).fit(events)
    assert_same_fit(warm, cold)
    np.testing.assert_array_equal(warm.score_samples(events), cold.score_samples(events))


def test_warm_start_false_refits_from_scratch(kind, halves):
    first, events = halves
    model = make(kind).fit(first).fit(events)
    assert_same_fit(model, make(kind).fit(events))


def test_clone_is_unfitted_and_fits_cold(kind, halves):
    first, events = halves
    model = make(kind, warm_start=True).fit(first)
    cloned = clone(model)
    assert cloned.warm_start is True and not hasattr(cloned, "network_")
    assert_same_fit(cloned.fit(events), make(kind).fit(events))


# ------------------------------------------------------ where a warm fit starts
def test_warm_fit_starts_from_the_fitted_weights(kind, halves):
    """A learning rate of ~0: the warm fit's weights are its starting weights.

    Known items and users keep their rows (by label); the new ones get the
    rows that partial_fit gives them (partial_epochs=0 grows without
    learning); the network has the vocabularies of X.
    """
    first, events = halves
    model = make(kind, warm_start=True, refit=False).fit(first)
    grown = make(kind, refit=False, partial_epochs=0, replay_epochs=0).fit(first).partial_fit(
        events[events["timestamp"] > first["timestamp"].max()])
    model.set_params(learning_rate=1e-12, max_epochs=1)
    model.fit(events)
    cold = make(kind).fit(events)
    np.testing.assert_array_equal(model.classes_, cold.classes_)
    np.testing.assert_array_equal(model.users_, cold.users_)
    assert model.network_.config == cold.network_.config
    row_indexed = model.network_.row_indexed
    for name, parameter in model.network_.named_parameters():
        if name not in row_indexed:
            torch.testing.assert_close(parameter, grown.network_.get_parameter(name),
                                       rtol=1e-6, atol=1e-8)
            continue
        labels = model.classes_ if row_indexed[name] == "item" else model.users_
        for label in labels:
            torch.testing.assert_close(
                row_of(model, name, label, row_indexed[name]),
                row_of(grown, name, label, row_indexed[name]), rtol=1e-6, atol=1e-8)
    assert np.isfinite(model.score(events))


def test_users_and_items_absent_from_x_are_dropped(kind, halves):
    first, events = halves
    model = make(kind, warm_start=True).fit(events)
    model.fit(first)
    cold = make(kind).fit(first)
    np.testing.assert_array_equal(model.classes_, cold.classes_)
    np.testing.assert_array_equal(model.users_, cold.users_)
    assert model.network_.config == cold.network_.config
    later = events[events["timestamp"] > first["timestamp"].max()]
    later = later[later["user"].isin(first["user"]) & later["item"].isin(first["item"])]
    proba = model.predict_proba(later)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(
        model.score_samples(later),
        np.log(proba[np.arange(len(later)),
                     pd.Index(model.classes_).get_indexer(later["item"])]),
        rtol=1e-6, atol=1e-9)


def test_warm_fit_on_the_same_events_continues(kind, events):
    """Its first epoch's validation loss is about the previous best, and its
    training loss well below a cold fit's first epoch's (which starts from a
    new initialisation)."""
    params = dict(refit=False, max_epochs=4, learning_rate=0.002)
    if kind == "attention":
        params.update(learning_rate=0.001, dropout=0.0)
    model = make(kind, warm_start=True, **params).fit(events)
    best = model.history_[model.best_epoch_ - 1]["valid_loss"]
    cold_first = model.history_[0]
    model.fit(events)
    warm_first = model.history_[0]
    assert abs(warm_first["valid_loss"] - best) < 0.03
    assert warm_first["train_loss"] < cold_first["train_loss"] - 0.05


def test_optimizer_statistics_are_carried(kind, events):
    """Adam counts steps (per row): a warm epoch's counts go on from the
    fitted ones."""
    params = dict(optimizer="adam", refit=False, validation_fraction=0.0)
    model = make(kind, warm_start=True, max_epochs=2, **params).fit(events)
    before = model.optimizer_state_["state"]
    one_epoch = make(kind, max_epochs=1, **params).fit(events).optimizer_state_["state"]
    model.set_params(max_epochs=1).fit(events)
    after = model.optimizer_state_["state"]
    assert after.keys() == before.keys()
    for name in after:  # the same vocabularies: rows in the same order
        assert torch.equal(after[name]["step"],
                           before[name]["step"] + one_epoch[name]["step"]), name


def test_statistics_of_another_optimizer_start_from_zero(kind, events):
    params = dict(refit=False, validation_fraction=0.0, max_epochs=1)
    model = make(kind, warm_start=True, optimizer="rmsprop", **params).fit(events)
    model.set_params(optimizer="adam").fit(events)
    cold = make(kind, optimizer="adam", **params).fit(events)
    for name, state in model.optimizer_state_["state"].items():
        assert torch.equal(state["step"], cold.optimizer_state_["state"][name]["step"])


def test_refit_phase_starts_from_the_warm_weights(kind, events):
    """With refit, both phases start warm: a 1-epoch refit at a learning rate
    of ~0 keeps the fitted weights."""
    model = make(kind, warm_start=True).fit(events)
    before = weights(model)
    model.set_params(learning_rate=1e-12, max_epochs=1).fit(events)
    assert model.refit_history_ is not None
    assert_same_weights(weights(model), before, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- refusals
def test_a_changed_fit_time_parameter_refuses_a_warm_fit(kind, halves):
    first, events = halves
    model = make(kind, warm_start=True).fit(first)
    before = weights(model)
    fitted = model.hidden_size
    model.set_params(hidden_size=fitted * 2)
    with pytest.raises(ValueError, match=rf"warm_start=True.*hidden_size="
                       rf"{fitted * 2}.*hidden_size={fitted}.*warm_start=False"):
        model.fit(events)
    assert_same_weights(weights(model), before)
    np.testing.assert_array_equal(model.users_, np.unique(first["user"]))
    model.set_params(warm_start=False).fit(events)  # a cold fit takes it
    assert model.network_.config["hidden_size"] == fitted * 2


def test_a_failing_warm_fit_leaves_the_model_as_it_was(kind, halves):
    first, events = halves
    model = make(kind, warm_start=True).fit(first)
    before, scores = weights(model), model.score_samples(first)
    attributes = sorted(vars(model))
    optimizer_state = model.optimizer_state_
    model.set_params(learning_rate=1e9, optimizer="rmsprop", epsilon=1e-30)
    with pytest.raises(ValueError, match="diverged"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(events)
    assert sorted(vars(model)) == attributes
    assert model.optimizer_state_ is optimizer_state
    assert_same_weights(weights(model), before)
    np.testing.assert_array_equal(model.users_, np.unique(first["user"]))
    np.testing.assert_array_equal(model.score_samples(first), scores)


# ------------------------------------------------- model selection, persistence
def test_grid_search_fits_clones_from_scratch(kind, events):
    model = make(kind, warm_start=True, max_epochs=1)
    search = GridSearchCV(model, {"learning_rate": [0.01, 0.02]},
                          cv=UserSuffixSplit(n_splits=2, test_size=0.1))
    search.fit(events)
    best = search.best_estimator_
    expected = make(kind, warm_start=True, max_epochs=1,
                    learning_rate=search.best_params_["learning_rate"]).fit(events)
    assert_same_fit(best, expected)


@pytest.mark.parametrize("how", ["save", "pickle"])
def test_saved_and_pickled_models_warm_start_alike(kind, halves, tmp_path, how):
    first, events = halves
    model = make(kind, warm_start=True).fit(first)
    if how == "save":
        model.save(tmp_path / "model.skcrnn")
        restored = type(model).load(tmp_path / "model.skcrnn")
    else:
        restored = pickle.loads(pickle.dumps(model))
    assert restored.warm_start is True
    assert_same_fit(restored.fit(events), model.fit(events))


def test_files_and_pickles_of_before_warm_start_get_false():
    fills = [change for version, changes in MIGRATIONS for change in changes
             if getattr(change, "name", None) == "warm_start"]
    assert len(fills) == 1 and fills[0].fill is False


# -------------------------------------------------------------- checkpoints
def test_a_warm_fit_resumes_only_its_own_checkpoint(kind, halves, tmp_path,
                                                    monkeypatch):
    """The fingerprint holds the starting point: a cold fit (or a warm fit
    from another model) refuses a warm fit's checkpoint, and the warm fit
    resumes it to the model of an uninterrupted warm fit."""
    first, events = halves
    previous = make(kind, warm_start=True, refit=False).fit(first)
    expected = pickle.loads(pickle.dumps(previous)).fit(events)

    import skcrnn._torch.loop as loop
    original = loop._train_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model = pickle.loads(pickle.dumps(previous)).set_params(checkpoint_dir=tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            model.fit(events)
    assert (tmp_path / FILENAME).exists()
    written = (tmp_path / FILENAME).read_bytes()
    cold = make(kind, refit=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="Cannot resume.*warm_start"):
        cold.fit(events)
    other = make(kind, warm_start=True, refit=False, random_state=1).fit(first)
    with pytest.raises(ValueError, match="Cannot resume.*warm_start"):
        other.set_params(random_state=0, checkpoint_dir=tmp_path).fit(events)
    assert (tmp_path / FILENAME).read_bytes() == written
    model.fit(events)
    assert not (tmp_path / FILENAME).exists()
    assert_same_weights(weights(model), weights(expected))
    assert _no_seconds(model.history_) == _no_seconds(expected.history_)
