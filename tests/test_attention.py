"""SelfAttentionRecommender against independent computations.

The reference forward pass here is written from the model's definition
(windows of the last ``max_history`` tokens of ``START, x_1, ..., x_n``,
pre-norm blocks, causal attention), one prediction at a time with loops
over slots and heads, from the fitted parameters; nothing of the package's
forward or window code is used.
"""

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from skcrnn import SelfAttentionRecommender
from skcrnn._attention import windows as attention_windows
from skcrnn._events import Sequences
from skcrnn._torch.batching import gather_windows, window_spans
from skcrnn.model_selection import UserSuffixSplit, suffix_split

from .conftest import random_events

TINY = dict(hidden_size=4, n_heads=2, max_history=3, train_stride=2, max_epochs=3,
            batch_size=3, dropout=0.1, tie_weights=True, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def split(one_torch_thread):
    events = random_events(n_users=6, n_items=8, n_events=160, ties=False, seed=5)
    return suffix_split(events, 0.25, 2, 50)


VARIANTS = {"tied": {}, "user_embedding": {"user_embedding": True},
            "untied": {"tie_weights": False, "train_stride": None}}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def fitted(request, split):
    train, _ = split
    return SelfAttentionRecommender(**{**TINY, **VARIANTS[request.param]}).fit(train)


def quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


# ------------------------------------------------------------ the reference
def layer_norm(x, weight, bias):
    mean = x.mean()
    variance = ((x - mean) ** 2).mean()
    return (x - mean) / math.sqrt(variance + 1e-5) * weight + bias


def naive_log_proba(network, history, user=None):
    """log P(. | history): the window's last slot, one vector at a time.

    ``history`` lists item codes; ``user`` is the user's code (None, or past
    the rows: the mean of the user vectors).
    """
    params = {name: p.detach().double() for name, p in network.named_parameters()}
    size, n_heads = network.hidden_size, network.n_heads
    head = size // n_heads
    tokens = ["start"] + list(history)
    tokens = tokens[-network.max_history:]
    inputs = []
    for slot, token in enumerate(tokens):
        vector = (params["start_embedding"][0] if token == "start"
                  else params["item_embedding"][token])
        vector = vector + params["position_embedding"][slot]
        if network.has_user_embedding:
            table = params["user_embedding"]
            # users without a row: the mean row, rounded to the parameters' type
            vector = vector + (table[user] if user is not None and user < len(table)
                               else table.mean(dim=0).float().double())
        inputs.append(vector)
    states = inputs
    for b in range(len(network.blocks)):
        p = {name.split(".", 2)[2]: value for name, value in params.items()
             if name.startswith(f"blocks.{b}.")}
        normed = [layer_norm(x, p["attention_norm_weight"], p["attention_norm_bias"])
                  for x in states]
        qkv = [p["attention_weight"] @ x + p["attention_bias"] for x in normed]
        new_states = []
        for i, x in enumerate(states):
            heads = []
            for h in range(n_heads):
                cols = slice(h * head, (h + 1) * head)
                query = qkv[i][:size][cols]
                scores = torch.stack([query @ qkv[j][size:2 * size][cols]
                                      for j in range(i + 1)]) / math.sqrt(head)
                weights = torch.softmax(scores, dim=0)
                heads.append(sum(weights[j] * qkv[j][2 * size:][cols]
                                 for j in range(i + 1)))
            x = x + p["projection_weight"] @ torch.cat(heads) + p["projection_bias"]
            inner = torch.relu(p["expand_weight"] @ layer_norm(
                x, p["feed_forward_norm_weight"], p["feed_forward_norm_bias"])
                + p["expand_bias"])
            new_states.append(x + p["contract_weight"] @ inner + p["contract_bias"])
        states = new_states
    hidden = layer_norm(states[-1], params["final_norm_weight"],
                        params["final_norm_bias"])
    output = params["item_embedding" if network.tie_weights else "output_weight"]
    logits = output @ hidden + params["output_bias"]
    return torch.log_softmax(logits, dim=0).numpy()


def histories(model, train):
    """Each user's fitted item codes, in time order."""
    ordered = train.sort_values("timestamp", kind="stable")
    codes = pd.Index(model.classes_).get_indexer(ordered["item"])
    return {user: list(codes[(ordered["user"] == user).to_numpy()])
            for user in ordered["user"].unique()}


def naive_scores(model, train, frame):
    """score_samples of ``frame`` with the reference forward, row by row."""
    past = histories(model, train)
    users = pd.Index(model.users_)
    items = pd.Index(model.classes_)
    scores = np.empty(len(frame))
    ordered = frame.sort_values("timestamp", kind="stable")
    for index, row in ordered.iterrows():
        history = past.setdefault(row["user"], [])
        code = users.get_loc(row["user"]) if row["user"] in users else None
        item = items.get_loc(row["item"])
        scores[frame.index.get_loc(index)] = naive_log_proba(
            model.network_, history, code)[item]
        history.append(item)
    return scores


# ------------------------------------------------------------------ scoring
def test_scores_match_the_reference_forward(fitted, split):
    train, test = split
    # windows of one to many tokens: short and long histories, a stranger
    stranger = test[test["user"] == test["user"].iloc[0]].assign(user=-1)
    frame = pd.concat([test, stranger], ignore_index=True)
    got = quiet(fitted.score_samples, frame)
    np.testing.assert_allclose(got, naive_scores(fitted, train, frame), rtol=1e-10)


def test_predict_proba_matches_the_reference_and_sums_to_one(fitted, split):
    train, test = split
    rows = test.sort_values("timestamp", kind="stable").groupby("user").head(2)
    proba = fitted.predict_proba(rows)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    past = histories(fitted, train)
    items = pd.Index(fitted.classes_)
    for (index, row), got in zip(rows.iterrows(), proba):
        history = past[row["user"]]
        expected = np.exp(naive_log_proba(fitted.network_, history,
                                          fitted.users_.tolist().index(row["user"])))
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        history.append(items.get_loc(row["item"]))


def test_empty_history_is_the_start_token(fitted):
    recommended = quiet(fitted.recommend, ["never seen"], k=fitted.n_items_)
    expected = naive_log_proba(fitted.network_, [], None)
    order = pd.Index(fitted.classes_).get_indexer(recommended["item"])
    np.testing.assert_allclose(recommended["score"], expected[order], rtol=1e-10)


def test_only_the_last_max_history_items_count(split):
    train, _ = split
    model = SelfAttentionRecommender(**TINY).fit(train)
    user = train["user"].iloc[0]
    last = train["timestamp"].max()
    tail = pd.DataFrame({"user": user, "item": ["i1", "i2", "i3", "i4"],
                         "timestamp": last + pd.to_timedelta(np.arange(1, 5), "s")})
    # after the 3 items i2, i3, i4 the distribution no longer depends on
    # the older history: a stranger with the same 3 items gets the same
    window = model.score_samples(tail)[3]
    stranger = quiet(model.score_samples, tail.assign(user="stranger"))[3]
    assert window == pytest.approx(stranger, rel=1e-12)
    assert model.score_samples(tail)[1] != pytest.approx(
        quiet(model.score_samples, tail.assign(user="stranger"))[1], rel=1e-6)


def test_a_later_item_does_not_change_earlier_predictions(fitted, split):
    _, test = split
    frame = test.sort_values("timestamp", kind="stable")
    user_rows = frame[frame["user"] == frame["user"].iloc[0]]
    last = user_rows.index[-1]
    changed = frame.copy()
    changed.loc[last, "item"] = "i7" if frame.loc[last, "item"] != "i7" else "i6"
    before, after = fitted.score_samples(frame), fitted.score_samples(changed)
    earlier = frame.index != last
    np.testing.assert_array_equal(after[earlier], before[earlier])
    # in the network itself: the slots before a changed token are exactly
    # equal (one window per call: rows at different places of one batch may
    # go through different BLAS kernels, which round differently)
    network = fitted.network_
    first, second = (network.hidden_states(torch.tensor([tokens]), dtype=torch.float64)[0]
                     for tokens in ([-1, 2, 5], [-1, 2, 6]))
    assert torch.equal(first[:2], second[:2])
    assert not torch.allclose(first[2], second[2])


def test_scoring_is_deterministic_and_independent_of_the_batch(fitted, split):
    _, test = split
    together = fitted.score_samples(test)
    np.testing.assert_array_equal(fitted.score_samples(test), together)
    by_user = pd.Series(np.nan, index=test.index)
    for _, rows in test.groupby("user"):
        by_user[rows.index] = fitted.score_samples(rows)
    np.testing.assert_allclose(by_user.to_numpy(), together, rtol=1e-13)


# ------------------------------------------------------------------ windows
def test_window_spans_and_gather_against_loops():
    sequences = Sequences(np.array([0, 1, 2]), np.array([0, 7, 9, 9]),
                          np.arange(10, 19))
    first, stop, lower = np.array([0, 1, 0]), np.array([7, 2, 0]), np.array([0, 1, 0])
    for stride in (None, 3, 2, 1):
        groups, begin, end, covered = window_spans(first, stop, 3, lower, stride)
        step = stride or 3
        expected = []
        for g in range(3):
            e = stop[g]
            while e > first[g]:
                expected.append((g, max(e - 3, lower[g]), e, max(e - step, first[g])))
                e -= step
        assert list(zip(groups, begin, end, covered)) == expected
    matrix = gather_windows(sequences, groups, begin, end, offset=-1, fill=-1)
    for row, (g, b, e, _) in enumerate(expected):
        items = list(sequences.items[sequences.indptr[g]:sequences.indptr[g + 1]])
        want = [items[p] if p >= 0 else -1 for p in range(b - 1, e - 1)]
        want += [-1] * (matrix.shape[1] - len(want))
        assert list(matrix[row]) == want


@pytest.mark.parametrize("stride", [None, 2, 1])
def test_training_windows_are_the_scoring_windows(stride):
    """Every trained slot sees a suffix of the window scoring reads, at least
    ``width - stride`` tokens of it, the whole window where the training
    window is full or starts at the start token; each event is trained once;
    a continuation trains on the new events only, after its history's tail."""
    history = Sequences(np.array([0, 1]), np.array([0, 6, 8]), np.arange(100, 108))
    new = Sequences(np.array([0, 1]), np.array([0, 4, 5]), np.arange(200, 205))
    full = Sequences(np.array([0, 1]), np.array([0, 10, 13]),
                     np.concatenate([history.items[:6], new.items[:4],
                                     history.items[6:], new.items[4:]]))
    width = 3
    context, tails, lower = attention_windows.with_history(
        full, new.user_codes, history.lengths, width, new)
    windows = attention_windows.TrainingWindows(context, tails, tails + new.lengths,
                                                lower, width, "cpu", stride)
    trained = []
    for row in range(len(windows)):
        user = int(windows.users[row])
        sequence = ["start"] + list(full.items[full.indptr[user]:full.indptr[user + 1]])
        for slot in range(windows.first_slot[row], windows.lengths[row]):
            target = int(windows.targets[row, slot])
            trained.append((user, target))
            inputs = [int(t) if t >= 0 else "start"
                      for t in windows.tokens[row, :slot + 1]]
            position = sequence.index(target)  # the items are distinct
            scoring = sequence[max(0, position - width):position]
            assert inputs == scoring[len(scoring) - len(inputs):]
            assert len(inputs) >= min(len(scoring), width - (stride or width) + 1)
            if slot == width - 1:
                assert inputs == scoring
    expected = [(u, int(i)) for u in range(2)
                for i in new.items[new.indptr[u]:new.indptr[u + 1]]]
    assert sorted(trained) == sorted(expected)
    assert windows.n_events.sum() == len(new.items)


def test_training_step_loss_is_the_full_windows_cross_entropy(fitted):
    """A step's last block runs only the trained slots' queries: without
    dropout its loss is the mean cross-entropy, at exactly the trained
    slots, of the states the whole windows give (and so are the gradients)."""
    network = copy.deepcopy(fitted.network_).double().requires_grad_(True)
    generator = np.random.default_rng(0)
    sequences = Sequences(np.arange(3), np.array([0, 7, 9, 14]),
                          generator.integers(0, 8, 14))
    width = network.max_history
    windows = attention_windows.TrainingWindows(
        sequences, np.zeros(3, dtype=np.int64), sequences.lengths,
        np.zeros(3, dtype=np.int64), width, "cpu", stride=2)
    batch = attention_windows.WindowBatch(np.arange(len(windows)), 0,
                                          int(windows.n_events.sum()))
    (step,) = windows.steps(network, batch, dropout=0.0)
    got = torch.autograd.grad(step.loss, network.item_embedding)[0]
    states = network.hidden_states(windows.tokens[:, :windows.lengths.max()],
                                   network.user_vectors(windows.users))
    losses = []
    for row in range(len(windows)):
        for slot in range(windows.first_slot[row], windows.lengths[row]):
            logits = (states[row, slot] @ network.output_matrix().T
                      + network.output_bias)
            losses.append(torch.logsumexp(logits, 0)
                          - logits[windows.targets[row, slot]])
    expected = torch.stack(losses).mean()
    assert step.n_events == len(losses) == int(windows.n_events.sum())
    torch.testing.assert_close(step.loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        got, torch.autograd.grad(expected, network.item_embedding)[0],
        rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------- living logs
def later(frame, rows, start=1):
    last = frame["timestamp"].max()
    return pd.DataFrame({"user": [u for u, _ in rows], "item": [i for _, i in rows],
                         "timestamp": [last + pd.Timedelta(seconds=start + k)
                                       for k in range(len(rows))]})


def test_update_then_score_equals_scoring_the_continuation(split):
    train, test = split
    model = SelfAttentionRecommender(**TINY, user_embedding=True).fit(train)
    x1 = later(train, [(100, "i1"), (100, "i2"), (100, "i3"), (100, "i4"),
                       (999, "i5"), (999, "i0")])
    x2 = later(train, [(100, "i6"), (101, "i1"), (999, "i2"), (999, "i3")], 10)
    expected = quiet(model.score_samples, pd.concat([x1, x2], ignore_index=True))[6:]
    model.update(x1)
    got = model.score_samples(x2)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got, naive_scores(
        model, pd.concat([train, x1], ignore_index=True), x2), rtol=1e-10)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_partial_fit_grows_users_and_items(split, tie_weights):
    train, _ = split
    model = SelfAttentionRecommender(**{**TINY, "tie_weights": tie_weights},
                                     user_embedding=True).fit(train)
    old_network = model.network_
    old_state = {k: v.clone() for k, v in old_network.state_dict().items()}
    n_seen = len(train)
    more = later(train, [(100, "brand-new"), (998, "i1"), (998, "i2")])
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(more)
    assert model.n_items_ == 9 and model.classes_[-1] == "brand-new"
    assert model.n_users_ == 7 and model.users_[-1] == 998
    network = model.network_
    assert network.item_embedding.shape[0] == 9 and network.user_embedding.shape[0] == 7
    assert all(torch.equal(old_state[k], v)
               for k, v in old_network.state_dict().items())
    mean_item = old_network.item_embedding.double().mean(0).float()
    assert torch.equal(network.item_embedding[-1], mean_item)
    if not tie_weights:
        assert torch.equal(network.output_weight[-1], torch.zeros(4))
    torch.testing.assert_close(network.user_embedding[-1],
                               old_network.user_embedding.double().mean(0).float())
    # an unseen item's add-one probability after an empty history
    empty = quiet(model.recommend, ["stranger"], k=9)
    new_item = empty.loc[empty["item"] == "brand-new", "score"].iloc[0]
    assert new_item == pytest.approx(math.log(1 / (n_seen + 9)), rel=1e-6)
    # it learns: another call with one epoch moves the weights
    learned = model.set_params(partial_epochs=1).partial_fit(
        later(train, [(100, "i3"), (998, "brand-new")], 5))
    assert not torch.equal(learned.network_.item_embedding, network.item_embedding)
    assert len(learned.partial_history_) == 2
    assert learned.partial_history_[-1]["n_events"] == 2


def test_partial_fit_trains_on_the_new_events_only(split, monkeypatch):
    train, _ = split
    model = SelfAttentionRecommender(**TINY, partial_epochs=1, replay_epochs=0).fit(train)
    seen = []
    original = attention_windows.TrainingWindows.steps

    def recording(self, network, batch, dropout):
        rows = batch.rows
        for row in rows:
            trained = slice(self.first_slot[row], self.lengths[row])
            seen.extend(self.targets[row, trained].tolist())
        return original(self, network, batch, dropout)

    monkeypatch.setattr(attention_windows.TrainingWindows, "steps", recording)
    more = later(train, [(100, "i1"), (101, "i2"), (100, "i3")])
    model.partial_fit(more)
    codes = pd.Index(model.classes_).get_indexer(["i1", "i2", "i3"])
    assert sorted(seen) == sorted(codes)


def test_replay_trains_on_every_stored_event_once_per_epoch(split, monkeypatch):
    """replay_epochs=2 after the pass over the new events: each replay epoch
    trains every stored event, old and new, once (as fit's epochs do)."""
    train, _ = split
    model = SelfAttentionRecommender(**TINY, partial_epochs=1, replay_epochs=2).fit(train)
    seen = []
    original = attention_windows.TrainingWindows.steps

    def recording(self, network, batch, dropout):
        for row in batch.rows:
            trained = slice(self.first_slot[row], self.lengths[row])
            seen.extend(self.targets[row, trained].tolist())
        return original(self, network, batch, dropout)

    monkeypatch.setattr(attention_windows.TrainingWindows, "steps", recording)
    more = later(train, [(100, "i1"), (101, "i2"), (100, "i3")])
    model.partial_fit(more)
    codes = pd.Index(model.classes_).get_indexer
    new = codes(more["item"]).tolist()
    stored = codes(pd.concat([train, more])["item"]).tolist()
    assert sorted(seen) == sorted(new + 2 * stored)
    (entry,) = model.partial_history_
    assert len(entry["epochs"]) == 1 and len(entry["replay_epochs"]) == 2


# -------------------------------------------------------------- persistence
def test_save_load_round_trip_and_partial_fit_after_it(split, tmp_path):
    train, test = split
    model = SelfAttentionRecommender(**TINY, user_embedding=True).fit(train)
    path = tmp_path / "attention.skcrnn"
    model.save(path)
    loaded = SelfAttentionRecommender.load(path)
    np.testing.assert_array_equal(loaded.score_samples(test), model.score_samples(test))
    for name, value in model.network_.state_dict().items():
        assert torch.equal(loaded.network_.state_dict()[name], value)
    more = later(train, [(100, "i1"), (998, "i2")])
    model.partial_fit(more)
    loaded.partial_fit(more)
    np.testing.assert_array_equal(quiet(loaded.score_samples, test),
                                  quiet(model.score_samples, test))


def test_fits_are_reproducible_and_dropout_trains(split):
    train, test = split
    one = SelfAttentionRecommender(**TINY).fit(train)
    two = SelfAttentionRecommender(**TINY).fit(train)
    np.testing.assert_array_equal(one.score_samples(test), two.score_samples(test))
    other = SelfAttentionRecommender(**{**TINY, "dropout": 0.5}).fit(train)
    assert not np.allclose(other.score_samples(test), one.score_samples(test))


class Interrupted(Exception):
    pass


def test_interrupted_fit_resumes_to_the_same_model(split, tmp_path, monkeypatch):
    train, test = split
    params = {**TINY, "max_epochs": 4, "n_iter_no_change": 10}
    reference = SelfAttentionRecommender(**params).fit(train)
    original = attention_windows.TrainingWindows.steps
    calls = {"n": 0}

    def failing(self, network, batch, dropout):
        calls["n"] += 1
        if calls["n"] == 2 * (-(-len(self) // 3)) + 2:  # in epoch 3
            raise Interrupted
        return original(self, network, batch, dropout)

    with monkeypatch.context() as patch:
        patch.setattr(attention_windows.TrainingWindows, "steps", failing)
        with pytest.raises(Interrupted):
            SelfAttentionRecommender(**params, checkpoint_dir=tmp_path).fit(train)
    resumed = SelfAttentionRecommender(**params, checkpoint_dir=tmp_path).fit(train)
    assert resumed.history_[0]["train_loss"] == reference.history_[0]["train_loss"]
    np.testing.assert_array_equal(resumed.score_samples(test),
                                  reference.score_samples(test))


def test_grid_search_with_user_suffix_split(split):
    train, _ = split
    search = GridSearchCV(SelfAttentionRecommender(**{**TINY, "max_epochs": 1}),
                          {"dropout": [0.0, 0.3]},
                          cv=UserSuffixSplit(n_splits=2, test_size=0.1, min_test=2))
    quiet(search.fit, train)
    assert set(search.best_params_) == {"dropout"}
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("params, message", [
    ({"max_history": 0}, "'max_history' parameter"),
    ({"dropout": 1.0}, "'dropout' parameter"),
    ({"dropout": -0.1}, "'dropout' parameter"),
    ({"hidden_size": 6, "n_heads": 4}, "hidden_size=6 must be a multiple of n_heads=4"),
    ({"n_blocks": 0}, "'n_blocks' parameter"),
    ({"train_stride": 0}, "'train_stride' parameter"),
    ({"max_history": 3, "train_stride": 4},
     "train_stride=4 must be at most max_history=3"),
])
def test_bad_parameters_raise_at_fit(split, params, message):
    model = SelfAttentionRecommender(**{**TINY, **params})  # __init__ accepts
    with pytest.raises(ValueError, match=message):
        model.fit(split[0])
    assert not hasattr(model, "network_")
