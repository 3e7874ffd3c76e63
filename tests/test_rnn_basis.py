"""Compact per-user weights: R_u = R + sum_j c_uj A_j (``recurrent_weights="basis"``).

Each user is ``rank`` coefficients over shared directions. Checked against a
naive per-user loop (the composed matrices one user and one direction at a
time; training loss and gradients with the naive loop of
``tests/test_rnn.py``; finite differences), for the mean given to unknown
users, lazy rows, growth under ``partial_fit`` and ``warm_start``, save and
load, the memory model and the errors.
"""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._events import Sequences
from skcrnn._rnn.memory import parameter_count, training_memory
from skcrnn._rnn.network import CollaborativeRNN
from skcrnn._rnn.recurrence import forward_states
from skcrnn._rnn.tbptt import chunk_losses
from skcrnn._rnn.weights import BASIS_RANK
from skcrnn._torch.batching import make_batches
from skcrnn._torch.optim import Optimizer, Rows
from skcrnn._torch.output import log_proba

from . import test_rnn
from .conftest import TINY_RNN as TINY, random_events
from .test_rnn import naive_scores, naive_training_loss, tiny_sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELLS = {"gru": dict(cell="gru"), "gru-sigmoid": dict(cell="gru", candidate="sigmoid"),
         "tanh": dict(cell="tanh")}


def basis_composed(network, dtype=torch.float64):
    """Every user's ``R + sum_j c_uj A_j``, one user and one direction at a time."""
    shared = network.recurrent[0].to(dtype)
    coefficients = network.basis_coefficients.to(dtype)
    directions = network.basis_directions.to(dtype)
    users = []
    for u in range(coefficients.shape[0]):
        matrix = shared.clone()
        for j in range(directions.shape[0]):
            matrix = matrix + coefficients[u, j] * directions[j]
        users.append(matrix)
    return torch.stack(users)


class BasisNaive(test_rnn.Naive):
    """The naive loop of ``tests/test_rnn.py`` with each user's composed matrices."""

    def __init__(self, network, dtype=torch.float64):
        super().__init__(network, dtype)
        self.R = basis_composed(network, dtype)
        self.shared = False


@pytest.fixture
def basis_naive(monkeypatch):
    monkeypatch.setattr(test_rnn, "Naive", BasisNaive)


def basis_network(cell="gru", n_users=7, n_items=6, size=4, rank=3, seed=2,
                  dtype=torch.float64):
    """A basis network with non-zero coefficients and output bias."""
    generator = torch.Generator().manual_seed(seed)
    network = CollaborativeRNN(n_users, n_items, size, dtype=dtype,
                               recurrent_kind="basis", rank=rank,
                               **CELLS[cell]).reset_parameters(generator)
    with torch.no_grad():
        network.basis_coefficients.normal_(generator=generator)
        network.output_bias.normal_(generator=generator)
    return network


# ------------------------------------------------- the composed matrices
@pytest.mark.parametrize("cell", ["gru", "tanh"])
def test_composed_matrices_match_the_naive_loop_unknown_users_get_the_mean(cell):
    network = basis_network(cell)
    want = basis_composed(network)
    users = torch.tensor([3, 0, 6, 1])
    got = network.recurrent_for(users, dtype=torch.float64)
    np.testing.assert_allclose(got.detach().numpy(), want[users].detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    # training reads the same matrices, the deviation is R_u - R
    weights, deviation = network.weights.for_step(network, users, Rows())
    np.testing.assert_allclose(weights.detach().numpy(), want[users].detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        deviation.detach().numpy(),
        (want[users] - network.recurrent.double()).detach().numpy(), atol=1e-12)
    # -1 and codes past the fitted users: the mean of the users' matrices
    strangers = network.recurrent_for(torch.tensor([-1, 7, 2, 100]),
                                      dtype=torch.float64).detach()
    mean = want.mean(dim=0).detach()
    for row in (0, 1, 3):
        np.testing.assert_allclose(strangers[row].numpy(), mean.numpy(), atol=1e-12)
    np.testing.assert_allclose(strangers[2].numpy(), want[2].detach().numpy(),
                               atol=1e-12)


def test_start_is_the_shared_network_of_the_same_seed():
    shared = CollaborativeRNN(5, 7, 4, shared=True).reset_parameters(
        torch.Generator().manual_seed(0))
    basis = CollaborativeRNN(5, 7, 4, recurrent_kind="basis", rank=6).reset_parameters(
        torch.Generator().manual_seed(0))
    for name, tensor in shared.state_dict().items():
        assert torch.equal(basis.get_parameter(name), tensor), name
    assert not basis.basis_coefficients.any()
    assert basis.basis_directions.abs().min() > 0
    assert basis.basis_coefficients.shape == (5, 6)
    assert basis.basis_directions.shape == (6, 4, 12)
    assert basis.row_indexed["basis_coefficients"] == "user"
    assert "basis_directions" not in basis.row_indexed
    assert "recurrent" not in basis.row_indexed
    assert basis.n_users == 5


# ------------------------------------------------- training, against naive
@pytest.mark.parametrize("bptt", ["manual", "autograd"])
@pytest.mark.parametrize("cell", CELLS)
def test_training_loss_and_gradients_match_naive_loop(cell, bptt, basis_naive):
    sequences, lengths, items_of = tiny_sequences()
    network = basis_network(cell, n_users=len(lengths))
    batch_size, chunk_size, initial_state = 3, 3, 0.1

    per_user = {"basis_coefficients": torch.zeros_like(network.basis_coefficients)}
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


def test_coefficient_gradient_matches_finite_differences():
    sequences, lengths, _ = tiny_sequences()
    network = basis_network("gru", n_users=len(lengths))
    batch = make_batches(sequences, len(lengths), "cpu")[0]
    whole = int(max(lengths))  # one chunk: no truncated (detached) carry

    def loss():
        return sum(step.loss for step in chunk_losses(network, batch, whole, 0.1))

    grads = torch.zeros_like(network.basis_coefficients)
    for step in chunk_losses(network, batch, whole, 0.1):
        step.loss.backward()
        users, leaf = step.touched["basis_coefficients"]
        if leaf.grad is not None:
            grads.index_add_(0, users, leaf.grad)
    eps = 1e-6
    with torch.no_grad():
        for user, j in [(0, 0), (2, 1), (4, 2)]:
            network.basis_coefficients[user, j] += eps
            up = loss().item()
            network.basis_coefficients[user, j] -= 2 * eps
            down = loss().item()
            network.basis_coefficients[user, j] += eps
            assert grads[user, j].item() == pytest.approx((up - down) / (2 * eps),
                                                          rel=1e-5, abs=1e-9)


def test_a_step_updates_only_its_users_rows():
    sequences, lengths, _ = tiny_sequences()
    network = CollaborativeRNN(len(lengths), 6, 4, recurrent_kind="basis",
                               rank=3).reset_parameters(torch.Generator().manual_seed(3))
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
    after = network.basis_coefficients.detach()
    assert torch.equal(after[others], before["basis_coefficients"][others])
    assert not optimizer.state["basis_coefficients"]["mean_square"][others].any()
    # coefficients start at zero and move at once; the directions (whose
    # gradient is the coefficients' times ...) move from the next step
    assert after[users].abs().sum() > 0
    assert not torch.equal(network.recurrent, before["recurrent"])
    step = next(chunk_losses(network, batch, 3, 0.0))
    optimizer.zero_grad()
    step.loss.backward()
    optimizer.step(step.touched)
    assert not torch.equal(network.basis_directions, before["basis_directions"])


# ---------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def no_tie_split():
    from skcrnn.model_selection import suffix_split
    return suffix_split(random_events(n_users=5, n_events=90, ties=False, seed=4),
                        0.25, 2, 50)


@pytest.mark.parametrize("cell", ["gru", "tanh"])
def test_scores_match_the_naive_loop_strangers_get_the_mean(no_tie_split, cell,
                                                            basis_naive):
    train, test = no_tie_split
    model = CollaborativeGRURecommender(
        hidden_size=5, rank=3, recurrent_weights="basis", cell=cell, max_epochs=3,
        batch_size=2, chunk_size=4, initial_state=0.05, learning_rate=0.02,
        device="cpu", random_state=0).fit(train)
    assert model.network_.basis_coefficients.abs().sum() > 0  # users have learned
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


def test_forward_states_of_a_stranger_use_the_mean_matrices():
    """A group of user -1 runs with the mean of the users' composed matrices."""
    network = basis_network("gru", n_users=7, size=3)
    sequences, lengths, _ = tiny_sequences()
    sequences = Sequences(np.array([0, 1, 2, -1, 4, 5, 6]), sequences.indptr,
                          sequences.items)
    prefixes = np.arange(sequences.prefix_start[-1] + lengths[-1] + 1)
    start = torch.full((len(lengths), 3), 0.2, dtype=torch.float64)
    dense = CollaborativeRNN(7, 6, 3, dtype=torch.float64)
    with torch.no_grad():
        for name in ("item_input", "output_weight", "output_bias"):
            dense.get_parameter(name).copy_(network.get_parameter(name))
        matrices = basis_composed(network)
        matrices[3] = matrices.mean(dim=0)  # what the stranger must get
        dense.recurrent.copy_(matrices)
    dense_sequences = Sequences(np.arange(7), sequences.indptr, sequences.items)
    got = log_proba(forward_states(network, sequences, start, prefixes),
                    network.output_weight, network.output_bias)
    want = log_proba(forward_states(dense, dense_sequences, start, prefixes),
                     dense.output_weight, dense.output_bias)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ growth
@pytest.fixture(scope="module")
def old_events():
    return random_events(n_users=6, n_events=150, ties=False, seed=3)


def fitted(events, **params):
    return CollaborativeGRURecommender(**{**TINY, "recurrent_weights": "basis",
                                          **params}).fit(events)


def later(events, rows):
    users, items = zip(*rows)
    seconds = pd.to_timedelta(np.arange(1, len(rows) + 1), unit="s")
    return pd.DataFrame({"user": list(users), "item": list(items),
                         "timestamp": events["timestamp"].max() + seconds})


def test_new_users_start_at_the_mean_coefficients(old_events):
    model = fitted(old_events, rank=3)
    old = copy.deepcopy(model.network_)
    n_users = model.n_users_
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(
        later(old_events, [(100, "i1"), (999, "i2"), (998, "i0")]))
    network = model.network_
    assert network.basis_coefficients.shape == (n_users + 2, 3)
    assert torch.equal(network.basis_coefficients[:n_users], old.basis_coefficients)
    assert torch.equal(network.basis_directions, old.basis_directions)
    assert torch.equal(network.recurrent, old.recurrent)
    # each new user's matrices are the mean of the known users' (linear map)
    mean = basis_composed(old).mean(dim=0).detach()
    for user in (n_users, n_users + 1):
        np.testing.assert_allclose(basis_composed(network)[user].detach().numpy(),
                                   mean.numpy(), atol=1e-6)
    state = model.optimizer_state_["state"]["basis_coefficients"]
    assert state["mean_square"].shape[0] == n_users + 2
    assert not state["mean_square"][n_users:].any()


def test_a_user_added_by_update_keeps_its_scores_when_grown(old_events):
    """The grown row gives exactly the scoring fallback: the mean matrices."""
    model = fitted(old_events, rank=3)
    model.update(later(old_events, [(777, "i1"), (777, "i2")]))
    probe = later(old_events, [(777, "i3"), (777, "i4"), (777, "i1")]).assign(
        timestamp=lambda frame: frame["timestamp"] + pd.Timedelta(seconds=60))
    before = model.score_samples(probe)
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(
        later(old_events, [(100, "i1")]))
    assert model.network_.basis_coefficients.shape[0] == model.n_users_
    np.testing.assert_allclose(model.score_samples(probe), before, rtol=1e-5)


def test_partial_fit_learns_the_new_users_only_their_rows_move(old_events):
    model = fitted(old_events, rank=3)
    new = later(old_events, [(999, f"i{k % 4}") for k in range(30)])
    grown_only = copy.deepcopy(model).set_params(
        partial_epochs=0, replay_epochs=0).partial_fit(new)
    model.set_params(partial_epochs=1, replay_epochs=0).partial_fit(new)
    assert model.partial_history_[-1]["n_users"] == 1
    got, grown = model.network_.basis_coefficients, grown_only.network_.basis_coefficients
    assert not torch.equal(got[-1], grown[-1])
    assert torch.equal(got[:-1], grown[:-1])  # lazy rows: the others did not move
    assert not torch.equal(model.network_.basis_directions,
                           grown_only.network_.basis_directions)


def test_warm_start_keeps_the_known_users_rows(old_events):
    model = fitted(old_events, rank=3, max_epochs=1, validation_fraction=0.0,
                   warm_start=True)
    before = copy.deepcopy(model.network_)
    more = pd.concat([old_events, later(old_events, [(555, "i1"), (555, "i2"),
                                                     (555, "i3")])])
    model.set_params(max_epochs=1).fit(more)
    assert model.network_.basis_coefficients.shape == (model.n_users_, 3)
    assert model.n_users_ == before.basis_coefficients.shape[0] + 1
    # it continued from the old weights: a cold fit of one epoch differs
    cold = fitted(more, rank=3, max_epochs=1, validation_fraction=0.0)
    assert not torch.equal(cold.network_.basis_directions,
                           model.network_.basis_directions)
    assert np.isfinite(model.score(more))


def test_save_load_keeps_the_model_and_partial_fit(old_events, tmp_path):
    model = fitted(old_events, rank=3, batch_size=2)
    model.save(tmp_path / "model.pt")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.pt")
    assert loaded.network_.config == model.network_.config
    assert loaded.network_.config["recurrent_kind"] == "basis"
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


def test_a_file_whose_network_does_not_match_is_refused(old_events, tmp_path):
    model = fitted(old_events, rank=2)
    model.save(tmp_path / "model.pt")
    from skcrnn import _persistence
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    for params in ({"rank": 3}, {"recurrent_weights": "low_rank"}):
        record_params = {**record["params"], **params}
        _persistence.write(tmp_path / "bad.pt", record["estimator"], {
            **{key: value for key, value in record.items()
               if key not in ("format", "format_version", "estimator", "checksum")},
            "params": record_params})
        with pytest.raises(ValueError, match="recurrent_weights, rank"):
            CollaborativeGRURecommender.load(tmp_path / "bad.pt")


def test_default_rank_and_more_directions_than_hidden_size(old_events):
    assert fitted(old_events, max_epochs=1).network_.rank == BASIS_RANK
    # K may exceed H: directions span the space of the H x 3H matrices
    model = fitted(old_events, rank=40, max_epochs=1)
    assert model.network_.basis_directions.shape == (40, 4, 12)


def test_penalty_shrinks_the_coefficients_deviations(old_events):
    free = fitted(old_events, rank=3, max_epochs=3)
    held = fitted(old_events, rank=3, max_epochs=3, deviation_penalty=1e6)

    def deviation_norm(model):
        network = model.network_
        return (basis_composed(network) - network.recurrent.double()).norm().item()
    assert deviation_norm(held) < 0.01 * deviation_norm(free)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("cell, most", [("gru", 48), ("tanh", 16)])
def test_more_directions_than_matrix_elements_are_refused(old_events, cell, most):
    fitted(old_events, rank=most, cell=cell, max_epochs=1)
    model = CollaborativeGRURecommender(**{**TINY, "recurrent_weights": "basis",
                                           "rank": most + 1, "cell": cell})
    assert model.rank == most + 1  # __init__ stores, fit validates
    with pytest.raises(ValueError, match=f"more than the {most} elements"):
        model.fit(old_events)
    assert not hasattr(model, "network_")


@pytest.mark.parametrize("rank", [0, -1, 1.5, "4"])
def test_rank_must_be_a_positive_int(old_events, rank):
    with pytest.raises(ValueError, match="rank"):
        fitted(old_events, rank=rank)


def test_the_network_refuses_a_bad_number_of_directions():
    with pytest.raises(ValueError, match="rank must be in"):
        CollaborativeRNN(3, 4, 2, recurrent_kind="basis", rank=13)
    with pytest.raises(ValueError, match="rank must be in"):
        CollaborativeRNN(3, 4, 2, recurrent_kind="basis")


# ------------------------------------------------------------ memory model
def test_memory_model_counts_a_user_as_its_coefficients():
    counts = parameter_count(10 ** 6, 10 ** 5, 64, recurrent_weights="basis")
    assert counts["users"] / 10 ** 6 == BASIS_RANK
    assert counts["shared"] == (1 + BASIS_RANK) * 64 * 192
    for rank in (16, 64, 333):
        per_user = parameter_count(1, 10, 64, recurrent_weights="basis",
                                   rank=rank)["users"]
        assert per_user == rank <= 333
    low = parameter_count(10 ** 6, 10 ** 5, 64, recurrent_weights="low_rank", rank=8)
    assert low["users"] / 10 ** 6 == 3072
    sizes = (10 ** 6, 10 ** 5, 10 ** 8)
    basis = training_memory(*sizes, hidden_size=64, recurrent_weights="basis",
                            device="cuda")["total"]
    low_rank = training_memory(*sizes, hidden_size=64, recurrent_weights="low_rank",
                               rank=8, device="cuda")["total"]
    assert basis < low_rank / 5
