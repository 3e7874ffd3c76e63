"""CollaborativeGRURecommender.partial_fit: growth, learning, persistence.

partial_fit grows the network for new users and items (new items at the
add-one unigram probability of an unseen item at the initial state, new users
at the mean recurrent matrices), trains on the new events only from each
user's cached state, carries the optimizer's statistics across calls and
through save/load, and is all or nothing.
"""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import skcrnn._rnn.estimator as rnn_estimator
import skcrnn._torch.estimator as torch_estimator
from skcrnn import CollaborativeGRURecommender
from skcrnn import _persistence
from skcrnn._torch.runtime import n_threads

from .conftest import TINY_RNN as TINY, random_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VARIANTS = {"C-GRU": {}, "C-tanh": {"cell": "tanh"},
            "P-GRU": {"recurrent_weights": "shared"}}


@pytest.fixture(scope="module")
def old_events():
    return random_events(n_users=6, n_events=150, ties=False, seed=3)


def later(events, rows):
    """``rows`` (user, item) as events after every event of ``events``, in order."""
    users, items = zip(*rows)
    start = events["timestamp"].max()
    seconds = pd.to_timedelta(np.arange(1, len(rows) + 1), unit="s")
    return pd.DataFrame({"user": list(users), "item": list(items),
                         "timestamp": start + seconds})


#: Fixed counts of passes (this module's subject); "auto", the default, is
#: tested in test_partial_fit_auto.py.
FIXED = dict(partial_epochs=1, replay_epochs=0)


def fitted(events, **params):
    return CollaborativeGRURecommender(**{**TINY, **FIXED, **params}).fit(events)


def new_events(events):
    """Known and new users (999, 998), known and new items ("new1", "new2")."""
    return later(events, [(100, "i1"), (100, "new1"), (999, "new2"), (999, "i3"),
                          (101, "i2"), (999, "new1"), (998, "i0"), (100, "i4")])


def snapshot(model):
    """Copies of everything partial_fit may replace, and the objects themselves."""
    names = ["network_", "final_states_", "classes_", "users_", "optimizer_state_",
             "partial_history_", "_history", "_last_times", "n_users_", "n_items_"]
    return ({name: getattr(model, name) for name in names},
            {name: copy.deepcopy(getattr(model, name)) for name in names})


def assert_unchanged(model, snap):
    objects, copies = snap
    for name, value in objects.items():
        assert getattr(model, name) is value, name
    old_state = copies["network_"].state_dict()
    for name, tensor in model.network_.state_dict().items():
        assert torch.equal(tensor, old_state[name]), name
    assert torch.equal(model.final_states_, copies["final_states_"])
    for param, statistics in model.optimizer_state_["state"].items():
        for key, tensor in statistics.items():
            assert torch.equal(tensor, copies["optimizer_state_"]["state"][param][key])
    np.testing.assert_array_equal(model.classes_, copies["classes_"])
    np.testing.assert_array_equal(model.users_, copies["users_"])
    np.testing.assert_array_equal(model._history.items, copies["_history"].items)


def assert_same_model(got, want):
    assert got.network_.config == want.network_.config
    for name, tensor in want.network_.state_dict().items():
        assert torch.equal(got.network_.state_dict()[name], tensor), name
    assert torch.equal(got.final_states_, want.final_states_)
    assert got.optimizer_state_["name"] == want.optimizer_state_["name"]
    for param, statistics in want.optimizer_state_["state"].items():
        for key, tensor in statistics.items():
            assert torch.equal(got.optimizer_state_["state"][param][key], tensor)
    assert ([[epoch["train_loss"] for epoch in entry["epochs"]]
             for entry in got.partial_history_]
            == [[epoch["train_loss"] for epoch in entry["epochs"]]
                for entry in want.partial_history_])


# ------------------------------------------------------------------ growth
def test_new_items_start_at_the_add_one_probability_of_an_unseen_item(old_events):
    """Before any learning (partial_epochs=0), at the initial state (an unknown
    user's first prediction) each new item has 1 / (N + V), and the known items
    their old probabilities times 1 - m / (N + V)."""
    model = fitted(old_events, initial_state=0.3)
    stranger = later(old_events, [("stranger", "i0")])
    with pytest.warns(UserWarning, match="unknown to the model"):
        before = model.predict_proba(stranger)[0]
    n_seen, n_known = len(old_events), model.n_items_
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(new_events(old_events))
    assert list(model.classes_[n_known:]) == ["new1", "new2"]
    with pytest.warns(UserWarning, match="unknown to the model"):
        after = model.predict_proba(stranger)[0]
    prior = 1 / (n_seen + n_known + 2)
    np.testing.assert_allclose(after[n_known:], [prior, prior], rtol=1e-6)
    np.testing.assert_allclose(after[:n_known], before * (1 - 2 * prior), rtol=1e-6)
    assert torch.equal(model.network_.output_weight[n_known:],
                       torch.zeros(2, model.hidden_size))


@pytest.mark.parametrize("variant", VARIANTS)
def test_new_rows_are_the_mean_and_known_rows_are_kept(old_events, variant):
    model = fitted(old_events, **VARIANTS[variant])
    old = copy.deepcopy(model.network_)
    n_users, n_items = model.n_users_, model.n_items_
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(new_events(old_events))
    network = model.network_
    assert model.n_users_ == n_users + 2 and model.n_items_ == n_items + 2

    def mean(tensor):
        return tensor.mean(dim=0, dtype=torch.float64).float()
    assert torch.equal(network.item_input[:n_items], old.item_input)
    assert torch.equal(network.item_input[n_items:],
                       mean(old.item_input).expand(2, -1))
    if variant == "P-GRU":
        assert torch.equal(network.recurrent, old.recurrent)
    else:
        assert network.recurrent.shape[0] == n_users + 2
        assert torch.equal(network.recurrent[:n_users], old.recurrent)
        assert torch.equal(network.recurrent[n_users:],
                           mean(old.recurrent).expand(2, -1, -1))
    assert torch.equal(network.output_weight[:n_items], old.output_weight)
    assert torch.equal(network.output_bias[:n_items], old.output_bias)
    assert not any(p.requires_grad for p in network.parameters())


def test_users_added_by_update_get_the_mean_matrices(old_events):
    model = fitted(old_events)
    model.update(later(old_events, [(777, "i1"), (777, "i2")]))
    assert model.network_.recurrent.shape[0] == model.n_users_ - 1
    mean = model.network_.recurrent.mean(dim=0, dtype=torch.float64).float()
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(later(old_events, [(100, "i1")]))
    assert model.network_.recurrent.shape[0] == model.n_users_
    assert torch.equal(model.network_.recurrent[-1], mean)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_optimizer_statistics_grow_with_zero_rows(old_events, optimizer):
    model = fitted(old_events, optimizer=optimizer)
    old = copy.deepcopy(model.optimizer_state_)
    n_users, n_items = model.n_users_, model.n_items_
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(new_events(old_events))
    state = model.optimizer_state_["state"]
    assert model.optimizer_state_["name"] == optimizer
    for param, statistics in old["state"].items():
        rows = n_users if param == "recurrent" else n_items
        for key, tensor in statistics.items():
            grown = state[param][key]
            assert grown.shape[0] == model.network_.get_parameter(param).shape[0]
            assert torch.equal(grown[:rows], tensor), (param, key)
            assert not grown[rows:].any(), (param, key)


# ---------------------------------------------------------------- learning
def test_training_starts_from_each_users_cached_state(old_events):
    """One step (one batch, one chunk): the epoch's loss is taken before the
    step, so it is the new events' loss scored from the cached states."""
    model = fitted(old_events, batch_size=10, chunk_size=10)
    new = later(old_events, [(100, "i1"), (101, "i2"), (100, "i3"), (555, "i0"),
                             (555, "i5"), (101, "i1")])
    with pytest.warns(UserWarning, match="unknown to the model"):
        expected = -model.score_samples(new).mean()
    model.partial_fit(new)
    (entry,) = model.partial_history_
    assert (entry["n_events"], entry["n_users"]) == (6, 3)
    (epoch,) = entry["epochs"]
    np.testing.assert_allclose(epoch["train_loss"], expected, rtol=1e-5)


def test_max_train_chunks_trains_on_the_latest_new_events(old_events):
    """With one chunk of two events per user, a step trains on each user's
    last two new events, from the state advanced over the earlier ones."""
    model = fitted(old_events, batch_size=4, chunk_size=2, max_train_chunks=1)
    new = later(old_events, [(100, "i1"), (101, "i2"), (100, "i3"), (100, "i0"),
                             (101, "i5"), (100, "i1"), (101, "i6"), (100, "i2")])
    scores = pd.Series(model.score_samples(new), index=new.index)
    latest = new.groupby("user").tail(2).index
    model.partial_fit(new)
    (epoch,) = model.partial_history_[0]["epochs"]
    np.testing.assert_allclose(epoch["train_loss"], -scores[latest].mean(), rtol=1e-5)


def cycles(users, order, repeats, start):
    rows = [(user, item) for _ in range(repeats) for item in order for user in users]
    return later(start, rows)


@pytest.mark.parametrize("variant", VARIANTS)
def test_partial_fit_lowers_the_loss_of_the_new_events(variant):
    """Users who cycled a-b-c-d now cycle d-c-b-a: after partial_fit, the new
    weights give the new events (from the same cached states) a lower loss."""
    users = [1, 2, 3, 4]
    start = pd.DataFrame({"timestamp": [pd.Timestamp("2021-01-01")]})
    old = cycles(users, "abcd", 8, start)
    model = fitted(old, hidden_size=8, learning_rate=0.03, max_epochs=6,
                   chunk_size=8, partial_epochs=6, **VARIANTS[variant])
    new = cycles(users, "dcba", 4, old)
    probe = copy.deepcopy(model)
    loss_before = -probe.score(new)
    model.partial_fit(new)
    probe.network_ = model.network_  # new weights, cached states before `new`
    loss_after = -probe.score(new)
    assert loss_after < loss_before / 2, (loss_before, loss_after)
    losses = [epoch["train_loss"] for epoch in model.partial_history_[0]["epochs"]]
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_optimizer_statistics_carry_across_calls(old_events):
    model = fitted(old_events)
    fresh = copy.deepcopy(model)
    fresh.optimizer_state_ = None
    new = new_events(old_events)
    model.partial_fit(new)
    fresh.partial_fit(new)
    assert not torch.equal(model.network_.item_input, fresh.network_.item_input)


def test_other_optimizer_starts_from_fresh_statistics(old_events):
    model = fitted(old_events)
    model.set_params(optimizer="adam").partial_fit(new_events(old_events))
    assert model.optimizer_state_["name"] == "adam"
    assert set(model.optimizer_state_["state"]["item_input"]) == {
        "mean_square", "mean", "step"}


def test_final_states_advance_from_the_cached_states_with_the_new_weights(old_events):
    model = fitted(old_events)
    new = new_events(old_events)
    later_rows = later(new, [(100, "i2"), (101, "new2"), (100, "new1")])
    before = copy.deepcopy(model)
    model.partial_fit(new)
    # the same cached states, advanced over `new` by the new weights
    before.network_ = model.network_
    before.classes_, before.n_items_ = model.classes_, model.n_items_
    known = new[new["user"].isin(before.users_)]
    expected = before.score_samples(pd.concat([known, later_rows],
                                              ignore_index=True))[len(known):]
    np.testing.assert_allclose(model.score_samples(later_rows), expected, rtol=1e-12)
    untouched = np.flatnonzero(model.users_ == 102)[0]
    assert torch.equal(model.final_states_[untouched], before.final_states_[untouched])


def strangers(frame):
    """``frame`` with its users renamed to ones no model knows."""
    return frame.assign(user="stranger-" + frame["user"].astype(str))


def test_replay_trains_on_every_stored_history_from_its_start(old_events):
    """P-GRU (one set of weights, so a stranger is scored like a user from its
    start), one step per epoch: the replay epoch's loss is the mean NLL of
    every stored event, old and new, scored from the start of each history
    with the weights before the step."""
    model = fitted(old_events, recurrent_weights="shared", batch_size=10,
                   chunk_size=64, partial_epochs=0, replay_epochs=1)
    new = later(old_events, [(100, "i1"), (101, "i2"), (100, "i3")])
    everything = pd.concat([old_events, new], ignore_index=True)
    with pytest.warns(UserWarning, match="unknown to the model"):
        expected = -model.score_samples(strangers(everything)).mean()
    model.partial_fit(new)
    (entry,) = model.partial_history_
    assert entry["epochs"] == []
    (epoch,) = entry["replay_epochs"]
    np.testing.assert_allclose(epoch["train_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("variant", ["P-GRU", "copy"])
def test_replay_recomputes_every_users_state_with_the_new_weights(old_events,
                                                                   variant):
    """After a replay every user's cached state (and copy weights) is the one
    the new weights give over the whole history, also for a user without new
    events: scoring from the cache equals scoring a stranger with the same
    history from its start."""
    params = ({"recurrent_weights": "shared"} if variant == "P-GRU" else
              {"recurrent_weights": "shared", "copy_history": True, "copy_decay": 0.9})
    model = fitted(old_events, replay_epochs=1, **params)
    before = copy.deepcopy(model.network_)
    model.partial_fit(new_events(old_events))
    assert not torch.equal(model.network_.item_input[:len(before.item_input)],
                           before.item_input)
    after = later(new_events(old_events), [(102, "i2"), (100, "new1"), (102, "i0")])
    stored = pd.concat([old_events, new_events(old_events)], ignore_index=True)
    for user in (100, 102):
        rows = after[after["user"] == user]
        history = stored[stored["user"] == user]
        with pytest.warns(UserWarning, match="unknown to the model"):
            expected = model.score_samples(strangers(pd.concat([history, rows])))
        np.testing.assert_allclose(model.score_samples(rows), expected[len(history):],
                                   rtol=1e-10)


def test_replay_epochs_is_validated(old_events):
    model = fitted(old_events)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(InvalidParameterError, match="replay_epochs"):
            model.set_params(replay_epochs=bad).partial_fit(new_events(old_events))


@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_proba_sums_to_one_over_the_grown_classes(old_events, variant):
    model = fitted(old_events, **VARIANTS[variant]).partial_fit(new_events(old_events))
    probe = later(new_events(old_events), [(100, "new2"), (999, "i0"), (998, "new1")])
    proba = model.predict_proba(probe)
    assert proba.shape == (3, model.n_items_) == (3, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(proba > 0)


def test_partial_fit_on_an_unfitted_model_is_fit(old_events):
    fresh = CollaborativeGRURecommender(**TINY).partial_fit(old_events)
    fit = CollaborativeGRURecommender(**TINY).fit(old_events)
    assert_same_model(fresh, fit)
    assert fresh.partial_history_ == [] and fresh.history_[-1]["train_loss"] == \
        fit.history_[-1]["train_loss"]


def test_partial_fit_is_reproducible_and_each_call_shuffles_anew(old_events,
                                                                monkeypatch):
    states = []
    original = torch_estimator.train

    def spying(*args, rng, **kwargs):
        states.append(rng.bit_generator.state["state"]["state"])
        return original(*args, rng=rng, **kwargs)
    monkeypatch.setattr(torch_estimator, "train", spying)
    models = [fitted(old_events, batch_size=2), fitted(old_events, batch_size=2)]
    first, second = new_events(old_events), later(new_events(old_events),
                                                  [(100, "i0"), (101, "new2")])
    for model in models:
        model.partial_fit(first).partial_fit(second)
    assert_same_model(*models)
    # the two fits (each a run and its refit, with the same seed), then per
    # model its calls 1 and 2
    assert len(states) == 8
    assert states[:2] == states[2:4] and states[4:6] == states[6:]
    assert len(set(states[:6])) == 3


def test_partial_epochs_is_validated(old_events):
    model = fitted(old_events)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(InvalidParameterError, match="partial_epochs"):
            model.set_params(partial_epochs=bad).partial_fit(new_events(old_events))


# ------------------------------------------------------------ all or nothing
def test_interrupted_partial_fit_changes_nothing(old_events, monkeypatch):
    model = fitted(old_events, partial_epochs=3)
    snap = snapshot(model)
    original = rnn_estimator.chunk_losses
    seen = {"steps": 0}

    def interrupted(*args, **kwargs):
        for step in original(*args, **kwargs):
            seen["steps"] += 1
            if seen["steps"] == 3:  # after two optimizer steps
                raise KeyboardInterrupt
            yield step
    monkeypatch.setattr(rnn_estimator, "chunk_losses", interrupted)
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.set_params(n_jobs=1).partial_fit(new_events(old_events))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert seen["steps"] == 3
    assert_unchanged(model, snap)
    monkeypatch.undo()
    model.partial_fit(new_events(old_events))  # and it still works


def test_out_of_order_events_raise_and_change_nothing(old_events):
    model = fitted(old_events)
    snap = snapshot(model)
    late = new_events(old_events)
    early = late.assign(timestamp=late["timestamp"] - pd.Timedelta("1000D"))
    with pytest.raises(ValueError, match="earlier than their user's last event"):
        model.partial_fit(early)
    assert_unchanged(model, snap)


def test_thread_count_is_restored(old_events, monkeypatch):
    counts = []
    original = torch_estimator.train

    def spying(*args, **kwargs):
        counts.append(torch.get_num_threads())
        return original(*args, **kwargs)
    model = fitted(old_events, n_jobs=2)
    monkeypatch.setattr(torch_estimator, "train", spying)
    torch.set_num_threads(3)
    try:
        model.partial_fit(new_events(old_events))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)
    assert counts == [n_threads(2)]


# -------------------------------------------------------------- persistence
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("replay_epochs", [0, 1])
def test_save_load_between_calls_gives_the_same_model(old_events, tmp_path, variant,
                                                      replay_epochs):
    # batches of two users: each call's batch order matters
    model = fitted(old_events, batch_size=2, replay_epochs=replay_epochs,
                   **VARIANTS[variant])
    first, second = new_events(old_events), later(new_events(old_events),
                                                  [(100, "i0"), (997, "new3")])
    for step, events in enumerate([first, second]):
        model.save(tmp_path / f"model{step}.pt")
        loaded = CollaborativeGRURecommender.load(tmp_path / f"model{step}.pt")
        assert_same_model(loaded, model)
        model.partial_fit(events)
        loaded.partial_fit(events)
        assert_same_model(loaded, model)
        np.testing.assert_array_equal(loaded.classes_, model.classes_)
        np.testing.assert_array_equal(loaded.users_, model.users_)
    assert len(model.partial_history_) == 2


def test_file_without_optimizer_statistics_loads_and_learns(old_events, tmp_path):
    """Files saved before partial_fit existed: fresh statistics, no partial run."""
    model = fitted(old_events)
    model.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    _persistence.write(tmp_path / "old.pt", record["estimator"], {
        key: value for key, value in record.items()
        if key not in ("format", "format_version", "estimator", "checksum",
                       "skcrnn_version",  # written before 0.2.0: no version
                       "optimizer_state", "partial_history")})
    loaded = CollaborativeGRURecommender.load(tmp_path / "old.pt")
    assert loaded.optimizer_state_ is None and loaded.partial_history_ == []
    model.optimizer_state_ = None
    loaded.partial_fit(new_events(old_events))
    model.partial_fit(new_events(old_events))
    assert_same_model(loaded, model)


def test_optimizer_statistics_of_another_network_are_a_damaged_file(old_events,
                                                                   tmp_path):
    model = fitted(old_events)
    model.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    state = copy.deepcopy(record["optimizer_state"])
    state["state"]["output_bias"]["mean_square"] = torch.zeros(3)
    _persistence.write(tmp_path / "damaged.pt", record["estimator"], {
        **{key: value for key, value in record.items()
           if key not in ("format", "format_version", "estimator", "checksum")},
        "optimizer_state": state})
    with pytest.raises(ValueError, match="damaged skcrnn model file: .*mean_square"):
        CollaborativeGRURecommender.load(tmp_path / "damaged.pt")
