"""The copy gate (``copy_history=True``) against naive loops written from its equations.

``P(i | past) = (1 - g) softmax(W h + b)_i + g w(i) / Z`` with
``w(i) = sum_{s < t, x_s = i} decay ** (t - 1 - s)``, ``Z = sum_i w(i)`` and
``g = sigmoid(v . h + a log Z + c)`` (no copy for an empty past).
"""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from skcrnn import CollaborativeGRURecommender
from skcrnn._events import Sequences
from skcrnn._rnn.copy import Copy, PastWeights, total_weight
from skcrnn._rnn.network import CollaborativeRNN
from skcrnn._rnn.tbptt import chunk_losses
from skcrnn._torch.batching import make_batches
from skcrnn._torch.output import log_proba, summed_cross_entropy

from .test_rnn import Naive, tiny_sequences

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:.*items unknown to the model")]


def naive_weights(items, k, decay, n_items):
    """``w`` before position ``k`` of ``items``, by the definition."""
    weights = np.zeros(n_items)
    for j, item in enumerate(items[:k]):
        weights[item] += decay ** (k - 1 - j)
    return weights


# ------------------------------------------------------------ decayed counts
@pytest.mark.parametrize("decay, max_length", [(1.0, 40), (0.9, 40), (0.5, 40),
                                               (0.3, 1500)])
def test_decayed_counts_match_the_definition(decay, max_length):
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, max_length, size=6)
    lengths[2] = 0
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(0, 5, size=indptr[-1])
    sequences = Sequences(np.arange(6), indptr, items)
    past = PastWeights(sequences, decay, 5)

    def naive(group, k):
        return naive_weights(items[indptr[group]:indptr[group + 1]], k, decay, 5)

    at_events = past.at(sequences.group_of_event, sequences.position_of_event, items)
    np.testing.assert_allclose(at_events, [
        naive(g, k)[items[indptr[g] + k]] for g in range(6) for k in range(lengths[g])],
        rtol=1e-12, atol=1e-300)
    groups = rng.integers(0, 6, 40)
    ks = np.array([rng.integers(0, lengths[g] + 1) for g in groups])
    queried = rng.integers(0, 5, 40)
    np.testing.assert_allclose(past.at(groups, ks, queried),
                               [naive(g, k)[i] for g, k, i in zip(groups, ks, queried)],
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(past.rows(groups, ks).toarray(),
                               [naive(g, k) for g, k in zip(groups, ks)],
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(past.final().toarray(),
                               [naive(g, lengths[g]) for g in range(6)],
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(total_weight(ks, decay),
                               [naive(g, k).sum() for g, k in zip(groups, ks)],
                               rtol=1e-12)


# ----------------------------------------------------------- mixture loss
def test_mixture_loss_and_gradients_match_autograd():
    torch.manual_seed(0)
    n, size, n_items = 37, 5, 11
    hidden = torch.randn(n, size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(n_items, size, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n_items, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(n, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, n_items, (n,))
    copied = torch.rand(n, dtype=torch.float64)
    copied[::3] = 0  # targets that are not in the past
    no_past = torch.arange(n) % 5 == 0
    gate_logits = torch.where(no_past, float("-inf"), gate)

    # blocks of 16 rows: several blocks, the last one short
    loss = summed_cross_entropy(hidden, weight, bias, targets, block_cells=16 * n_items,
                                adjust=Copy(gate_logits, copied.log()))
    got = torch.autograd.grad(loss, (hidden, weight, bias, gate), retain_graph=True)
    softmax = torch.softmax(hidden @ weight.T + bias, dim=1)[torch.arange(n), targets]
    share = torch.sigmoid(gate_logits)
    naive = -torch.log((1 - share) * softmax + share * copied).sum()
    want = torch.autograd.grad(naive, (hidden, weight, bias, gate))
    assert loss.item() == pytest.approx(naive.item(), rel=1e-12)
    for name, a, b in zip(["hidden", "weight", "bias", "gate"], got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    assert (got[3][no_past] == 0).all()

    scored = log_proba(hidden.detach(), weight.detach(), bias.detach(),
                       targets.numpy(), adjust=Copy(gate_logits.detach(), copied.log()))
    assert -scored.sum() == pytest.approx(naive.item(), rel=1e-12)


# ------------------------------------------------------- training steps
def naive_copy_training_loss(network, lengths, items_of, batch_size, chunk_size,
                             initial_state, decay, n_items):
    """``naive_training_loss`` of :mod:`test_rnn` with the copy mixture."""
    naive = Naive(network, dtype=network.item_input.dtype)
    order = sorted(np.flatnonzero(lengths), key=lambda u: (-lengths[u], u))
    total, chunk_values = 0.0, []
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        states = {u: torch.full((naive.H,), initial_state,
                                dtype=network.item_input.dtype) for u in batch}
        n_chunks = -(-max(lengths[u] for u in batch) // chunk_size)
        for c in range(n_chunks):
            loss_sum = 0.0
            for u in batch:
                R = naive.user_matrices(u)
                h = states[u].detach()
                for k in range(c * chunk_size, min((c + 1) * chunk_size, lengths[u])):
                    proba = naive.log_proba(h).exp()
                    weights = torch.as_tensor(
                        naive_weights(items_of[u], k, decay, n_items))
                    if k > 0:
                        mass = weights.sum()
                        share = torch.sigmoid(
                            network.gate_weight[:-1] @ h
                            + network.gate_weight[-1] * torch.log(mass)
                            + network.gate_bias[0])
                        proba = (1 - share) * proba + share * weights / mass
                    loss_sum = loss_sum - torch.log(proba[items_of[u][k]])
                    h = naive.step(h, items_of[u][k], R)
                states[u] = h
            chunk_values.append(loss_sum / (len(batch) * chunk_size))
            total = total + chunk_values[-1]
    return total, chunk_values


def naive_event_values(sequences, items_of, decay, n_items):
    """``log_copy`` and ``log_mass`` of every event, from the definition."""
    log_copy, log_mass = [], []
    for items in items_of:
        for k, item in enumerate(items):
            weights = naive_weights(items, k, decay, n_items)
            with np.errstate(divide="ignore"):
                log_mass.append(np.log(weights.sum()))
                log_copy.append(np.log(weights[item] / weights.sum()) if k else -np.inf)
    return {"log_copy": np.array(log_copy), "log_mass": np.array(log_mass)}


@pytest.mark.parametrize("decay", [1.0, 0.7])
def test_training_loss_and_gradients_match_naive_loop(decay):
    sequences, lengths, items_of = tiny_sequences()
    generator = torch.Generator().manual_seed(1)
    network = CollaborativeRNN(len(lengths), 6, 3, copy_history=True,
                               dtype=torch.float64).reset_parameters(generator)
    with torch.no_grad():  # a gate away from zero, so that every term counts
        network.output_bias.normal_(generator=generator)
        network.gate_weight.normal_(generator=generator)
        network.gate_bias.normal_(generator=generator)
    batch_size, chunk_size, initial_state = 3, 3, 0.1

    values = naive_event_values(sequences, items_of, decay, 6)
    recurrent_grad = torch.zeros_like(network.recurrent)
    package_chunks = []
    for batch in make_batches(sequences, batch_size, "cpu", event_values=values):
        for chunk in chunk_losses(network, batch, chunk_size, initial_state):
            chunk.loss.backward()
            package_chunks.append(chunk.loss.item())
            users, user_weights = chunk.touched["recurrent"]
            recurrent_grad.index_add_(0, users, user_weights.grad)
    package_grads = {name: p.grad.clone() for name, p in network.named_parameters()
                     if name != "recurrent"}
    package_grads["recurrent"] = recurrent_grad
    network.zero_grad()

    total, naive_chunks = naive_copy_training_loss(
        network, lengths, items_of, batch_size, chunk_size, initial_state, decay, 6)
    total.backward()
    np.testing.assert_allclose(package_chunks, [v.item() for v in naive_chunks],
                               rtol=1e-10)
    for name, parameter in network.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        np.testing.assert_allclose(package_grads[name].numpy(), parameter.grad.numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------- scoring
def revisiting_events(n_users=6, n_items=12, seed=0):
    """Users who come back to a few favourite items, timestamps without ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        favourites = rng.choice(n_items, 3, replace=False)
        for t in range(int(rng.integers(8, 30))):
            item = (favourites[rng.integers(3)] if rng.random() < 0.7
                    else rng.integers(n_items))
            rows.append((user, f"i{item}", t))
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def naive_copy_scores(model, history, scored):
    """log P of each scored row and the full distributions, from the equations."""
    naive = Naive(model.network_)
    network = model.network_
    items = pd.Index(model.classes_)
    users = pd.Index(model.users_)
    history = history.sort_values(["user", "timestamp"], kind="stable")
    scored = scored.sort_values(["user", "timestamp"], kind="stable")
    scores, rows = pd.Series(np.nan, index=scored.index), {}
    for user, user_rows in scored.groupby("user", sort=False):
        code = users.get_indexer([user])[0]
        R = naive.user_matrices(code)
        h = torch.full((naive.H,), float(model.initial_state), dtype=torch.float64)
        past = []
        if code >= 0:
            for item in history.loc[history["user"] == user, "item"]:
                h = naive.step(h, items.get_loc(item), R)
                past.append(items.get_loc(item))
        for index, item in user_rows["item"].items():
            proba = naive.log_proba(h).exp()
            if past:
                weights = torch.as_tensor(naive_weights(past, len(past),
                                                        model.copy_decay, len(items)))
                mass = weights.sum()
                share = torch.sigmoid(network.gate_weight.double()[:-1] @ h
                                      + network.gate_weight.double()[-1] * mass.log()
                                      + network.gate_bias.double()[0])
                proba = (1 - share) * proba + share * weights / mass
            rows[index] = proba.numpy()
            scores[index] = np.log(proba[items.get_loc(item)].item())
            h = naive.step(h, items.get_loc(item), R)
            past.append(items.get_loc(item))
    return scores, np.stack([rows[i] for i in scored.index])


def fitted_copy_model(train, **params):
    settings = dict(hidden_size=5, max_epochs=3, batch_size=2, chunk_size=4,
                    learning_rate=0.05, initial_state=0.05, copy_history=True,
                    copy_decay=0.8, device="cpu", random_state=0)
    return CollaborativeGRURecommender(**{**settings, **params}).fit(train)


@pytest.mark.parametrize("decay", [1.0, 0.8])
def test_scores_and_distributions_match_the_equations(decay):
    events = revisiting_events()
    last = events.groupby("user")["timestamp"].transform("max")
    train, test = events[events["timestamp"] < last - 3], events[
        events["timestamp"] >= last - 3]
    model = fitted_copy_model(train, copy_decay=decay)
    assert model.network_.gate_weight.abs().sum() > 0  # the gate has learned
    stranger = test[test["user"] == 0].assign(user=-7)
    scored = pd.concat([test, stranger.set_axis(stranger.index + 10_000)])
    expected, expected_proba = naive_copy_scores(model, train, scored)
    with pytest.warns(UserWarning, match="unknown to the model"):
        got = pd.Series(model.score_samples(scored), index=scored.index)
    np.testing.assert_allclose(got[expected.index], expected, rtol=1e-9, atol=1e-12)
    with pytest.warns(UserWarning, match="unknown to the model"):
        proba = model.predict_proba(scored)
    proba = pd.DataFrame(proba, index=scored.index).loc[expected.index].to_numpy()
    np.testing.assert_allclose(proba, expected_proba, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_update_advances_the_copy_cache_exactly():
    events = revisiting_events(seed=1)
    cut = events["timestamp"].quantile(0.6)
    model = fitted_copy_model(events[events["timestamp"] < cut])
    later = events[events["timestamp"] >= cut]
    first, second = later[later["timestamp"] < cut + 5], later[later["timestamp"] >= cut + 5]
    whole = model.score_samples(pd.concat([first, second]))[len(first):]
    model.update(first)
    np.testing.assert_allclose(model.score_samples(second), whole, rtol=1e-10)
    # the cache equals the decayed counts of the whole histories
    expected, _ = naive_copy_scores(model, events[events["timestamp"] < cut + 5],
                                    second)
    np.testing.assert_allclose(model.score_samples(second), expected, rtol=1e-9)


def test_copy_gate_lowers_the_error_of_revisiting_users():
    events = revisiting_events(n_users=30, n_items=40, seed=2)
    last = events.groupby("user")["timestamp"].transform("max")
    train, test = events[events["timestamp"] < last - 3], events[
        events["timestamp"] >= last - 3]
    params = dict(hidden_size=8, max_epochs=8, device="cpu", random_state=0,
                  learning_rate=0.02)
    plain = CollaborativeGRURecommender(**params).fit(train)
    copying = CollaborativeGRURecommender(copy_history=True, **params).fit(train)
    assert -copying.score(test) < -plain.score(test) - 0.1


def test_option_off_builds_the_papers_network():
    events = revisiting_events()
    model = CollaborativeGRURecommender(hidden_size=4, max_epochs=1, device="cpu",
                                        random_state=0).fit(events)
    assert set(model.network_.state_dict()) == {
        "item_input", "recurrent", "output_weight", "output_bias"}
    assert not hasattr(model, "history_weights_")
    copying = clone(model).set_params(copy_history=True).fit(events)
    assert {"gate_weight", "gate_bias"} <= set(copying.network_.state_dict())


def test_partial_fit_save_and_load_keep_the_cache(tmp_path):
    events = revisiting_events(seed=3)
    cut = events["timestamp"].quantile(0.5)
    old, new = events[events["timestamp"] < cut], events[events["timestamp"] >= cut]
    model = fitted_copy_model(old)
    model.save(tmp_path / "model.skcrnn")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.skcrnn")
    assert (loaded.history_weights_ != model.history_weights_).nnz == 0
    model.partial_fit(new.assign(item=new["item"].replace("i3", "new item")))
    loaded.partial_fit(new.assign(item=new["item"].replace("i3", "new item")))
    assert model.history_weights_.shape == (model.n_users_, model.n_items_)
    for name, tensor in model.network_.state_dict().items():
        torch.testing.assert_close(loaded.network_.state_dict()[name], tensor)
    np.testing.assert_array_equal(model.history_weights_.toarray(),
                                  loaded.history_weights_.toarray())


def test_copy_decay_without_copy_history_is_refused():
    model = CollaborativeGRURecommender(copy_decay=0.9, device="cpu")
    with pytest.raises(ValueError, match="copy_decay=0.9 is only used with "
                                         "copy_history=True"):
        model.fit(revisiting_events())
    assert not hasattr(model, "network_")


@pytest.mark.parametrize("decay", [0.0, 1.5, -1])
def test_copy_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="copy_decay"):
        CollaborativeGRURecommender(copy_history=True, copy_decay=decay,
                                    device="cpu").fit(revisiting_events())
