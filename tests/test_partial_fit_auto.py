"""``partial_fit`` that stops by itself: ``partial_epochs="auto"``, ``replay_epochs="auto"``.

One code path in the torch layer (``TorchRecommender._learn_events``) for
both neural models: with an ``"auto"`` stage, the last
``validation_fraction`` of each user's new events are held out of training,
and each ``"auto"`` stage runs passes until their loss has not improved for
``n_iter_no_change`` passes (at most ``max_epochs``), keeping the best
weights, or the starting ones when no pass beats them.
"""

import copy

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import skcrnn._torch.estimator as torch_estimator
from skcrnn import CollaborativeGRURecommender, SelfAttentionRecommender
from skcrnn._torch import loop, validation
from skcrnn._torch.batching import validation_sizes

from .conftest import TINY_RNN, random_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {
    "c-gru": lambda **params: CollaborativeGRURecommender(
        **{**TINY_RNN, "max_epochs": 6, "n_iter_no_change": 2, **params}),
    "attention": lambda **params: SelfAttentionRecommender(
        **{"hidden_size": 4, "n_heads": 2, "max_history": 3, "train_stride": 2,
           "max_epochs": 6, "n_iter_no_change": 2, "batch_size": 3, "device": "cpu",
           "random_state": 0, **params}),
}
STAGES = [("auto", 0), (1, "auto"), ("auto", "auto")]


@pytest.fixture(scope="module")
def halves():
    """Old events, then new ones (known users, a new user, a new item), later."""
    events = random_events(n_users=6, n_items=8, n_events=240, ties=False, seed=7)
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    old, new = events.iloc[:120].copy(), events.iloc[120:].copy()
    new.loc[new.index[-12:], "user"] = 999  # a new user with 12 events
    new.loc[new.index[-5], "item"] = "brand-new"
    return old, new


def stage_entries(model):
    entry = model.partial_history_[-1]
    return [(entry["epochs"], entry["best_epoch"]),
            (entry["replay_epochs"], entry["replay_best_epoch"])]


def state_of(model):
    return {name: tensor.clone() for name, tensor in model.network_.state_dict().items()}


def assert_same_network(got, want):
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("stages", STAGES, ids=str)
def test_auto_stages_stop_by_themselves_and_keep_the_best_pass(halves, kind, stages):
    old, new = halves
    model = MODELS[kind](partial_epochs=stages[0], replay_epochs=stages[1]).fit(old)
    model.partial_fit(new)
    assert len(model._history.items) == len(old) + len(new)  # all followed
    entry = model.partial_history_[-1]
    lengths = new.groupby("user").size().to_numpy()
    assert entry["n_held_out"] == validation_sizes(lengths, 0.1).sum() > 0
    for value, (epochs, best) in zip(stages, stage_entries(model)):
        if value != "auto":
            assert len(epochs) == value and best is None
            continue
        losses = [epoch["valid_loss"] for epoch in epochs]
        assert np.isfinite(losses).all() and 1 <= len(epochs) <= model.max_epochs
        assert best is not None and 0 <= best <= len(epochs)
        # it stopped because n_iter_no_change passes did not improve, or at the bound
        assert len(epochs) == model.max_epochs or len(epochs) - best == 2
        if best:
            assert losses[best - 1] == min(losses)


@pytest.mark.parametrize("kind", MODELS)
def test_the_kept_weights_are_those_of_the_best_pass(halves, kind, monkeypatch):
    """The weights after an auto stage have the best pass's validation loss
    (as recorded when validated)."""
    old, new = halves
    losses, states = [], []
    original = validation.Validation.__call__

    def recording(self):
        loss = original(self)
        losses.append(loss)
        states.append({k: v.clone() for k, v in self.network.state_dict().items()})
        return loss
    monkeypatch.setattr(validation.Validation, "__call__", recording)
    model = MODELS[kind](partial_epochs="auto", replay_epochs=0, max_epochs=4,
                         n_iter_no_change=4,
                         learning_rate=0.05, refit=False).fit(old)
    losses.clear(), states.clear()
    model.partial_fit(new)
    (epochs, best), _ = stage_entries(model)
    # the start's loss, then one per pass
    assert len(losses) == len(epochs) + 1 == 5
    assert best == int(np.argmin(losses))
    assert_same_network(state_of(model), states[best])


def test_no_pass_better_than_the_start_keeps_the_start():
    """train() with ``start_loss`` below every epoch's: the starting weights
    come back, best epoch 0, after n_iter_no_change epochs."""
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    class Batch:
        n_events = 8

    def steps(batch):
        nll = torch.nn.functional.cross_entropy(module(x), y, reduction="sum")
        yield loop.Step(nll / 8, nll, 8)
    optimizer = torch_estimator.Optimizer(module, "rmsprop", 0.1, 0.9, 1e-6)
    history, best = loop.train(module, optimizer, [Batch()], steps, max_epochs=10,
                               validate=lambda: 1.0, n_iter_no_change=3,
                               rng=np.random.default_rng(0), start_loss=0.5)
    assert best == 0 and len(history) == 3
    assert_same_network(module.state_dict(), start)
    # a start that every epoch beats changes nothing of the usual run
    history, best = loop.train(module, optimizer, [Batch()], steps, max_epochs=2,
                               validate=lambda: 1.0, n_iter_no_change=3,
                               rng=np.random.default_rng(0), start_loss=2.0)
    assert best == 1 and len(history) == 2


@pytest.mark.parametrize("kind", MODELS)
def test_held_out_events_are_not_trained(halves, kind, monkeypatch):
    """Each stage trains each user's events but the held-out suffix of the new ones."""
    old, new = halves
    calls = []
    original = torch_estimator.TorchRecommender._run_epochs

    def recording(self, network, sequences, n_train, *args, **kwargs):
        calls.append((sequences, np.array(n_train), kwargs.get("continuation")))
        return original(self, network, sequences, n_train, *args, **kwargs)
    model = MODELS[kind](partial_epochs="auto", replay_epochs=1, refit=False).fit(old)
    monkeypatch.setattr(torch_estimator.TorchRecommender, "_run_epochs", recording)
    model.partial_fit(new)
    (continuation, n_new, is_continuation), (history, n_train, replayed) = calls
    assert is_continuation and not replayed
    held = validation_sizes(continuation.lengths, model.validation_fraction)
    np.testing.assert_array_equal(n_new, continuation.lengths - held)
    expected = history.lengths.copy()
    expected[continuation.user_codes] -= held
    np.testing.assert_array_equal(n_train, expected)
    assert model.partial_history_[-1]["refit_epochs"] == []
    # refit=True: then one pass over every new event, the held-out ones included
    calls.clear()
    model.set_params(refit=True).partial_fit(new.assign(
        timestamp=new["timestamp"] + (new["timestamp"].max() - old["timestamp"].min())))
    (_, _, _), (_, _, _), (last, n_last, is_continuation) = calls
    assert is_continuation
    np.testing.assert_array_equal(n_last, last.lengths)
    assert len(model.partial_history_[-1]["refit_epochs"]) == 1


@pytest.mark.parametrize("kind", MODELS)
def test_fixed_counts_hold_nothing_out(halves, kind):
    old, new = halves
    model = MODELS[kind](partial_epochs=2, replay_epochs=1).fit(old).partial_fit(new)
    entry = model.partial_history_[-1]
    assert entry["n_held_out"] == 0 and entry["best_epoch"] is None
    assert len(entry["epochs"]) == 2 and len(entry["replay_epochs"]) == 1


@pytest.mark.parametrize("kind", MODELS)
def test_without_held_out_events_an_auto_stage_runs_one_pass(halves, kind):
    old, new = halves
    model = MODELS[kind](partial_epochs="auto", replay_epochs="auto",
                         validation_fraction=0.0).fit(old).partial_fit(new)
    entry = model.partial_history_[-1]
    assert entry["n_held_out"] == 0
    assert len(entry["epochs"]) == len(entry["replay_epochs"]) == 1


@pytest.mark.parametrize("kind", MODELS)
def test_auto_is_reproducible_and_survives_save_and_load(halves, kind, tmp_path):
    old, new = halves
    first, second = new.iloc[:60], new.iloc[60:]
    model = MODELS[kind](partial_epochs="auto", replay_epochs="auto").fit(old)
    twin = MODELS[kind](partial_epochs="auto", replay_epochs="auto").fit(old)
    model.partial_fit(first)
    twin.partial_fit(first)
    model.save(tmp_path / "model.pt")
    loaded = type(model).load(tmp_path / "model.pt")
    for each in (model, twin, loaded):
        each.partial_fit(second)
    for other in (twin, loaded):
        assert_same_network(state_of(other), state_of(model))
        assert ([[e["valid_loss"] for e in entry["epochs"] + entry["replay_epochs"]]
                 for entry in other.partial_history_]
                == [[e["valid_loss"] for e in entry["epochs"] + entry["replay_epochs"]]
                    for entry in model.partial_history_])
        np.testing.assert_array_equal(other.score_samples(new.iloc[-10:]),
                                      model.score_samples(new.iloc[-10:]))


@pytest.mark.parametrize("kind", MODELS)
def test_an_interrupted_auto_call_changes_nothing(halves, kind, monkeypatch):
    old, new = halves
    model = MODELS[kind](partial_epochs="auto", replay_epochs="auto").fit(old)
    before = copy.deepcopy(model)
    network, history = model.network_, model._history
    calls = {"n": 0}
    original = validation.Validation.__call__

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:  # after two passes
            raise KeyboardInterrupt
        return original(self)
    monkeypatch.setattr(validation.Validation, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.partial_fit(new)
    assert model.network_ is network and model._history is history
    assert_same_network(state_of(model), state_of(before))
    assert model.partial_history_ == before.partial_history_
    np.testing.assert_array_equal(model.users_, before.users_)
    monkeypatch.undo()
    model.partial_fit(new)  # and it still works
    assert len(model.partial_history_) == 1


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ["partial_epochs", "replay_epochs"])
@pytest.mark.parametrize("bad", ["Auto", "best", -1, 1.5])
def test_other_strings_are_refused(halves, kind, name, bad):
    old, new = halves
    model = MODELS[kind]().fit(old)
    with pytest.raises(InvalidParameterError, match=name):
        model.set_params(**{name: bad}).partial_fit(new)


@pytest.mark.parametrize("kind", MODELS)
def test_an_auto_stage_after_fixed_passes_compares_with_where_they_left(
        halves, kind, monkeypatch):
    """partial_epochs=2, replay_epochs="auto": the held-out loss is taken
    before the call, after the two fixed passes (the replay's baseline), and
    after each replay pass; a replay that beats no pass keeps the weights
    that the fixed passes left."""
    old, new = halves
    losses = []
    original = validation.Validation.__call__

    def recording(self):
        losses.append(original(self))
        return losses[-1]
    model = MODELS[kind](partial_epochs=2, replay_epochs="auto", refit=False).fit(old)
    monkeypatch.setattr(validation.Validation, "__call__", recording)
    model.partial_fit(new)
    (epochs, _), (replayed, best) = stage_entries(model)
    assert len(epochs) == 2 and len(losses) == 2 + len(replayed)
    replay_losses = [epoch["valid_loss"] for epoch in replayed]
    assert losses[2:] == replay_losses
    if best == 0:
        assert min(replay_losses) >= losses[1]
    else:
        assert replay_losses[best - 1] == min(replay_losses) < losses[1]
