"""Low-rank per-user recurrent weights: W^(u) = W + U_u V_u^T per gate block.

Checked against the dense per-user model (rank = H expresses it exactly,
through an SVD of each user's deviation), against the naive per-user loop of
``tests/test_rnn.py`` (training loss and gradients, scores), and for growth
under ``partial_fit``, lazy rows, save/load and its errors.
"""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._events import Sequences
from skcrnn._rnn.network import CollaborativeRNN
from skcrnn._rnn.recurrence import forward_states
from skcrnn._rnn.tbptt import chunk_losses
from skcrnn._torch.batching import make_batches
from skcrnn._torch.optim import Optimizer
from skcrnn._torch.output import log_proba

from . import test_rnn
from .conftest import TINY_RNN as TINY, random_events
from .test_rnn import naive_scores, naive_training_loss, tiny_sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELLS = {"gru": dict(cell="gru"), "gru-sigmoid": dict(cell="gru", candidate="sigmoid"),
         "tanh": dict(cell="tanh")}


def composed(network, dtype=torch.float64):
    """Every user's matrices ``R + [U^b V^b.T]_b``, one block and one user at a time."""
    shared = network.recurrent[0].to(dtype)
    size, n_blocks = network.hidden_size, network.unit.n_blocks
    left, right = network.low_rank_left.to(dtype), network.low_rank_right.to(dtype)
    users = []
    for u in range(left.shape[0]):
        blocks = [shared[:, b * size:(b + 1) * size] + left[u, b] @ right[u, b].T
                  for b in range(n_blocks)]
        users.append(torch.cat(blocks, dim=1))
    return torch.stack(users)


class LowRankNaive(test_rnn.Naive):
    """The naive loop of ``tests/test_rnn.py`` with each user's composed matrices."""

    def __init__(self, network, dtype=torch.float64):
        super().__init__(network, dtype)
        self.R = composed(network, dtype)
        self.shared = False


@pytest.fixture
def low_rank_naive(monkeypatch):
    monkeypatch.setattr(test_rnn, "Naive", LowRankNaive)


def network_pair(cell, n_users=7, n_items=6, size=3, seed=1):
    """A dense per-user network and a low-rank one of rank H with the same matrices.

    The low-rank network's shared matrices are drawn anew; each user's
    deviation from them is factored by SVD per block, ``U = A S``, ``V = B``.
    """
    generator = torch.Generator().manual_seed(seed)
    dense = CollaborativeRNN(n_users, n_items, size, dtype=torch.float64,
                             **CELLS[cell]).reset_parameters(generator)
    low = CollaborativeRNN(n_users, n_items, size, dtype=torch.float64,
                           recurrent_kind="low_rank", rank=size,
                           **CELLS[cell]).reset_parameters(generator)
    with torch.no_grad():
        dense.output_bias.normal_(generator=generator)
        for name in ("item_input", "output_weight", "output_bias"):
            low.get_parameter(name).copy_(dense.get_parameter(name))
        n_blocks = dense.unit.n_blocks
        for u in range(n_users):
            for b in range(n_blocks):
                columns = slice(b * size, (b + 1) * size)
                deviation = dense.recurrent[u][:, columns] - low.recurrent[0][:, columns]
                a, s, vh = torch.linalg.svd(deviation)
                low.low_rank_left[u, b] = a * s
                low.low_rank_right[u, b] = vh.T
    return dense, low


# ------------------------------------------------------- rank H is dense
@pytest.mark.parametrize("cell", CELLS)
def test_rank_h_expresses_the_dense_per_user_model(cell):
    dense, low = network_pair(cell)
    np.testing.assert_allclose(composed(low).detach().numpy(),
                               dense.recurrent.detach().numpy(),
                               atol=1e-12)
    sequences, lengths, _ = tiny_sequences()
    # users 0..6 and a stranger (-1): the mean of the per-user matrices
    sequences = Sequences(np.array([0, 1, 2, -1, 4, 5, 6]), sequences.indptr,
                          sequences.items)
    prefixes = np.arange(sequences.prefix_start[-1] + lengths[-1] + 1)
    start = torch.full((len(lengths), 3), 0.2, dtype=torch.float64)
    got = log_proba(forward_states(low, sequences, start, prefixes),
                    low.output_weight, low.output_bias)
    want = log_proba(forward_states(dense, sequences, start, prefixes),
                     dense.output_weight, dense.output_bias)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    sequences = Sequences(np.arange(len(lengths)), sequences.indptr, sequences.items)
    losses = {}
    for name, network in (("dense", dense), ("low", low)):
        losses[name] = [step.loss.item() for batch in make_batches(sequences, 3, "cpu")
                        for step in chunk_losses(network, batch, 3, 0.1)]
    np.testing.assert_allclose(losses["low"], losses["dense"], rtol=1e-12)


# ------------------------------------------------- training, against naive
@pytest.mark.parametrize("bptt", ["manual", "autograd"])
@pytest.mark.parametrize("cell", CELLS)
def test_training_loss_and_gradients_match_naive_loop(cell, bptt, low_rank_naive):
    sequences, lengths, items_of = tiny_sequences()
    generator = torch.Generator().manual_seed(2)
    network = CollaborativeRNN(len(lengths), 6, 4, dtype=torch.float64,
                               recurrent_kind="low_rank", rank=2,
                               **CELLS[cell]).reset_parameters(generator)
    with torch.no_grad():  # non-zero U (else V gets no gradient) and bias
        network.low_rank_left.normal_(generator=generator)
        network.output_bias.normal_(generator=generator)
    batch_size, chunk_size, initial_state = 3, 3, 0.1

    per_user = {name: torch.zeros_like(network.get_parameter(name))
                for name in ("low_rank_left", "low_rank_right")}
    package_chunks = []
    for batch in make_batches(sequences, batch_size, "cpu"):
        for chunk in chunk_losses(network, batch, chunk_size, initial_state,
                                  bptt=bptt):
            chunk.loss.backward()
            package_chunks.append(chunk.loss.item())
            assert set(chunk.touched) == set(per_user)
            for name, (users, leaf) in chunk.touched.items():
                if leaf.grad is not None:  # None: a one-item chunk reads no matrix
                    per_user[name].index_add_(0, users, leaf.grad)
    package_grads = {name: p.grad.clone() for name, p in network.named_parameters()
                     if name not in per_user}
    package_grads.update(per_user)
    network.zero_grad()
    for parameter in network.parameters():
        parameter.grad = None

    total, naive_chunks = naive_training_loss(network, lengths, items_of, batch_size,
                                              chunk_size, initial_state)
    total.backward()
    np.testing.assert_allclose(package_chunks, [v.item() for v in naive_chunks],
                               rtol=1e-10)
    for name, parameter in network.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        np.testing.assert_allclose(package_grads[name].numpy(), parameter.grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)


def test_a_step_updates_only_its_users_rows():
    sequences, lengths, _ = tiny_sequences()
    generator = torch.Generator().manual_seed(3)
    network = CollaborativeRNN(len(lengths), 6, 4, recurrent_kind="low_rank",
                               rank=2).reset_parameters(generator)
    optimizer = Optimizer(network, "rmsprop", 0.01, 0.9, 1e-8)
    batch = make_batches(sequences, 3, "cpu")[0]
    before = copy.deepcopy(network.state_dict())
    step = next(chunk_losses(network, batch, 3, 0.0))
    optimizer.zero_grad()
    step.loss.backward()
    optimizer.step(step.touched)
    users = batch.users.tolist()
    others = [u for u in range(len(lengths)) if u not in users]
    assert others
    for name in ("low_rank_left", "low_rank_right"):
        after = network.get_parameter(name).detach()
        assert torch.equal(after[others], before[name][others]), name
        assert not optimizer.state[name]["mean_square"][others].any(), name
    # U starts at zero and moves; V (whose gradient is U's times...) stays at first
    assert network.low_rank_left[users].abs().sum() > 0
    assert not torch.equal(network.recurrent, before["recurrent"])


def test_start_is_the_shared_network_of_the_same_seed():
    shared = CollaborativeRNN(5, 7, 4, shared=True).reset_parameters(
        torch.Generator().manual_seed(0))
    low = CollaborativeRNN(5, 7, 4, recurrent_kind="low_rank", rank=3).reset_parameters(
        torch.Generator().manual_seed(0))
    for name, tensor in shared.state_dict().items():
        assert torch.equal(low.get_parameter(name), tensor), name
    assert not low.low_rank_left.any()
    assert low.low_rank_right.abs().min() > 0
    assert low.row_indexed["low_rank_left"] == low.row_indexed["low_rank_right"] == "user"
    assert "recurrent" not in low.row_indexed


# ---------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def old_events():
    return random_events(n_users=6, n_events=150, ties=False, seed=3)


def fitted(events, **params):
    return CollaborativeGRURecommender(**{**TINY, "recurrent_weights": "low_rank",
                                          **params}).fit(events)


def later(events, rows):
    users, items = zip(*rows)
    seconds = pd.to_timedelta(np.arange(1, len(rows) + 1), unit="s")
    return pd.DataFrame({"user": list(users), "item": list(items),
                         "timestamp": events["timestamp"].max() + seconds})


@pytest.mark.parametrize("cell", ["gru", "tanh"])
def test_scores_match_the_naive_loop_strangers_get_the_mean(no_tie_split, cell,
                                                            low_rank_naive):
    train, test = no_tie_split
    model = CollaborativeGRURecommender(
        hidden_size=5, rank=2, recurrent_weights="low_rank", cell=cell, max_epochs=3,
        batch_size=2, chunk_size=4, initial_state=0.05, learning_rate=0.02,
        device="cpu", random_state=0).fit(train)
    assert model.network_.low_rank_left.abs().sum() > 0  # users have learned
    stranger = test[test["user"] == test["user"].iloc[0]].assign(user=-7)
    scored = pd.concat([test, stranger.set_axis(stranger.index + 10_000)])
    expected, expected_proba = naive_scores(model, train, scored)
    with pytest.warns(UserWarning, match="unknown to the model"):
        got = pd.Series(model.score_samples(scored), index=scored.index)
    np.testing.assert_allclose(got[expected.index], expected, rtol=1e-9, atol=1e-12)
    with pytest.warns(UserWarning, match="unknown to the model"):
        proba = model.predict_proba(scored)
    proba = pd.DataFrame(proba, index=scored.index).loc[expected.index].to_numpy()
    np.testing.assert_allclose(proba, expected_proba, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def no_tie_split():
    from skcrnn.model_selection import suffix_split
    return suffix_split(random_events(n_users=5, n_events=90, ties=False, seed=4),
                        0.25, 2, 50)


# ------------------------------------------------------------------ growth
def test_new_users_start_at_the_best_rank_r_approximation_of_the_mean(old_events):
    model = fitted(old_events, rank=2)
    old = copy.deepcopy(model.network_)
    n_users = model.n_users_
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(
        later(old_events, [(100, "i1"), (999, "i2"), (998, "i0")]))
    network = model.network_
    for name in ("low_rank_left", "low_rank_right"):
        assert network.get_parameter(name).shape[0] == n_users + 2
        assert torch.equal(network.get_parameter(name)[:n_users], old.get_parameter(name))
    assert torch.equal(network.recurrent, old.recurrent)
    # each new user's block is the truncated SVD of the mean deviation's block
    size = model.hidden_size
    mean_deviation = (composed(old) - old.recurrent.double()).mean(dim=0).detach()
    new = (composed(network)[n_users:] - network.recurrent.double()).detach()
    for b in range(3):
        block = mean_deviation[:, b * size:(b + 1) * size]
        a, s, vh = torch.linalg.svd(block)
        best = (a[:, :2] * s[:2]) @ vh[:2]
        for user in range(2):
            np.testing.assert_allclose(new[user][:, b * size:(b + 1) * size].numpy(),
                                       best.numpy(), atol=1e-6)
    # V has orthonormal columns: U keeps receiving gradients
    right = network.low_rank_right[n_users:].double()
    eye = torch.eye(2, dtype=torch.float64).expand(2, 3, 2, 2)
    np.testing.assert_allclose((right.transpose(-1, -2) @ right).numpy(), eye.numpy(),
                               atol=1e-6)
    # optimizer statistics: zero rows for the new users
    state = model.optimizer_state_["state"]
    for name in ("low_rank_left", "low_rank_right"):
        assert state[name]["mean_square"].shape[0] == n_users + 2
        assert not state[name]["mean_square"][n_users:].any()


def test_with_rank_h_a_user_added_by_update_keeps_its_scores_when_grown(old_events):
    """rank = H: the grown rows are the mean deviation itself, the scoring fallback."""
    model = fitted(old_events, rank=TINY["hidden_size"])
    model.update(later(old_events, [(777, "i1"), (777, "i2")]))
    probe = later(old_events, [(777, "i3"), (777, "i4"), (777, "i1")]).assign(
        timestamp=lambda frame: frame["timestamp"] + pd.Timedelta(seconds=60))
    before = model.score_samples(probe)
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(later(old_events, [(100, "i1")]))
    assert model.network_.low_rank_left.shape[0] == model.n_users_
    np.testing.assert_allclose(model.score_samples(probe), before, rtol=1e-5)


def test_partial_fit_learns_the_new_users(old_events):
    model = fitted(old_events, rank=2)
    new = later(old_events, [(999, f"i{k % 4}") for k in range(30)])
    grown_only = copy.deepcopy(model).set_params(
        partial_epochs=0, replay_epochs=0).partial_fit(new)
    model.set_params(partial_epochs=1, replay_epochs=0).partial_fit(new)
    assert model.partial_history_[-1]["n_users"] == 1
    for name in ("low_rank_left", "low_rank_right"):
        assert not torch.equal(model.network_.get_parameter(name)[-1],
                               grown_only.network_.get_parameter(name)[-1]), name
    # the other users' rows did not move (lazy rows)
    for name in ("low_rank_left", "low_rank_right"):
        assert torch.equal(model.network_.get_parameter(name)[:-1],
                           grown_only.network_.get_parameter(name)[:-1]), name


def test_save_load_keeps_the_model_and_partial_fit(old_events, tmp_path):
    model = fitted(old_events, rank=3, batch_size=2)
    model.save(tmp_path / "model.pt")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.pt")
    assert loaded.network_.config == model.network_.config
    assert loaded.network_.config["recurrent_kind"] == "low_rank"
    assert loaded.network_.config["rank"] == 3
    probe = later(old_events, [(100, "i1"), (101, "i2"), (12345, "i3")])
    with pytest.warns(UserWarning, match="unknown to the model"):
        np.testing.assert_array_equal(loaded.score_samples(probe),
                                      model.score_samples(probe))
    events = later(old_events, [(100, "i0"), (997, "i3"), (997, "i1")])
    model.partial_fit(events)
    loaded.partial_fit(events)
    for name, tensor in model.network_.state_dict().items():
        assert torch.equal(loaded.network_.state_dict()[name], tensor), name


def test_a_file_whose_network_does_not_match_rank_is_refused(old_events, tmp_path):
    model = fitted(old_events, rank=2)
    model.save(tmp_path / "model.pt")
    from skcrnn import _persistence
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    record["params"] = {**record["params"], "rank": 3}
    _persistence.write(tmp_path / "bad.pt", record["estimator"], {
        key: value for key, value in record.items()
        if key not in ("format", "format_version", "estimator", "checksum")})
    with pytest.raises(ValueError, match="recurrent_weights, rank"):
        CollaborativeGRURecommender.load(tmp_path / "bad.pt")


# ------------------------------------------------------------------ errors
def test_rank_larger_than_hidden_size_is_refused_at_fit(old_events):
    model = CollaborativeGRURecommender(**{**TINY, "recurrent_weights": "low_rank",
                                           "rank": 5})
    assert model.rank == 5  # __init__ stores, fit validates
    with pytest.raises(ValueError, match="rank=5 is larger than hidden_size=4"):
        model.fit(old_events)
    assert not hasattr(model, "network_")


@pytest.mark.parametrize("weights", ["per_user", "shared"])
def test_rank_without_low_rank_weights_is_refused(old_events, weights):
    with pytest.raises(ValueError, match="rank=2 is only used with recurrent_weights"):
        CollaborativeGRURecommender(**{**TINY, "recurrent_weights": weights,
                                       "rank": 2}).fit(old_events)


@pytest.mark.parametrize("rank", [0, -1, 1.5, "4"])
def test_rank_must_be_a_positive_int(old_events, rank):
    with pytest.raises(ValueError, match="rank"):
        fitted(old_events, rank=rank)


def test_default_rank_is_four_at_most_hidden_size(old_events):
    assert fitted(old_events).network_.rank == 4
    assert fitted(old_events, hidden_size=3).network_.rank == 3
    assert fitted(old_events, hidden_size=8, max_epochs=1).network_.rank == 4


# ------------------------------------------------------------ memory model
@pytest.mark.parametrize("options", [
    dict(), dict(cell="tanh"), dict(recurrent_weights="shared"),
    dict(deviation_penalty=0.5), dict(recurrent_weights="low_rank"),
    dict(recurrent_weights="low_rank", rank=3, cell="tanh"),
    dict(recurrent_weights="basis"), dict(recurrent_weights="basis", rank=5, cell="tanh"),
    dict(recurrent_weights="basis", rank=3, deviation_penalty=0.5)])
def test_memory_model_counts_the_networks_parameters_and_statistics(options):
    from skcrnn._rnn.memory import FLOAT, parameter_count, training_memory
    model = CollaborativeGRURecommender(hidden_size=5, **options)
    model.n_users_, model.n_items_ = 7, 11
    network = model._new_network()
    counts = parameter_count(7, 11, 5, **options)
    assert counts["total"] == sum(p.numel() for p in network.parameters())
    per_user = sum(network.get_parameter(name).numel() for name, kind
                   in network.row_indexed.items() if kind == "user")
    assert counts["users"] == per_user
    assert counts["items"] == sum(network.get_parameter(name).numel() for name, kind
                                  in network.row_indexed.items() if kind == "item")
    for name, factor in (("rmsprop", 1), ("adam", 2)):
        optimizer = Optimizer(network, name, 0.01, 0.9, 1e-8)
        statistics = sum(tensor.numel() for state in optimizer.state.values()
                         for key, tensor in state.items() if key != "step")
        assert statistics == factor * counts["total"]
        memory = training_memory(7, 11, 100, hidden_size=5, optimizer=name, **options)
        assert memory["parameters"] == FLOAT * counts["total"]
        assert memory["optimizer"] == FLOAT * statistics
        assert memory["total"] == sum(value for key, value in memory.items()
                                      if key != "total")


def test_memory_model_orders_the_variants():
    """At scale the per-user matrices dominate; low rank and sampling cut them."""
    from skcrnn._rnn.memory import training_memory
    sizes = (10 ** 5, 5 * 10 ** 4, 2 * 10 ** 6)
    dense = training_memory(*sizes, hidden_size=64)["total"]
    low = training_memory(*sizes, hidden_size=64, recurrent_weights="low_rank",
                          rank=8)["total"]
    sampled = training_memory(*sizes, hidden_size=64, recurrent_weights="low_rank",
                              rank=8, loss="sampled")["total"]
    no_refit = training_memory(*sizes, hidden_size=64, refit=False)["total"]
    assert sampled < low < dense / 3
    assert no_refit < dense
