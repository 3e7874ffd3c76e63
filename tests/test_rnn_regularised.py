"""Regularised collaborative weights (``deviation_penalty``) and dropout.

The penalised objective is checked against the naive per-user loop of
``tests/test_rnn.py`` plus a penalty written from its definition, and its
sum over an epoch against the closed form ``lambda sum_u ||D_u||^2``; the
limits (zero penalty: the paper's C-GRU exactly; huge penalty: deviations
vanish, P-GRU); dropout against a naive loop that applies the same masks,
scoring exact and deterministic, seeded and resumable; and the errors.
"""

import copy

import numpy as np
import pytest
import torch
from sklearn.base import clone

import skcrnn._rnn.tbptt as tbptt
from skcrnn import CollaborativeGRURecommender
from skcrnn._rnn.network import CollaborativeRNN
from skcrnn._rnn.tbptt import chunk_losses
from skcrnn._torch.batching import make_batches
from skcrnn._torch.checkpoint import FILENAME
from skcrnn._torch.dropout import Dropout

from . import test_rnn
from .conftest import TINY_RNN as TINY, random_events
from .test_rnn import naive_scores, naive_training_loss, tiny_sequences
from .test_rnn_checkpoint import (PARAMS as CHECKPOINT_PARAMS, Interrupted,
                                  assert_same_fit, count_chunks, read_checkpoint)
from .test_rnn_basis import BasisNaive, basis_composed
from .test_rnn_low_rank import LowRankNaive, composed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def deviations(network, dtype=torch.float64):
    """``R_u - R`` of every user, from the parameters (one user at a time for low rank)."""
    if network.recurrent_kind == "deviation":
        return network.deviation.to(dtype)
    if network.recurrent_kind == "basis":
        return basis_composed(network, dtype) - network.recurrent.to(dtype)
    return composed(network, dtype) - network.recurrent.to(dtype)


class DeviationNaive(test_rnn.Naive):
    """The naive loop of ``tests/test_rnn.py`` with ``R_u = R + D_u``."""

    def __init__(self, network, dtype=torch.float64):
        super().__init__(network, dtype)
        self.R = network.recurrent.to(dtype) + network.deviation.to(dtype)
        self.shared = False


@pytest.fixture
def naive_of_kind(monkeypatch):
    def patch(kind):
        naive = {"deviation": DeviationNaive, "low_rank": LowRankNaive,
                 "basis": BasisNaive}
        monkeypatch.setattr(test_rnn, "Naive", naive[kind])
    return patch


def naive_penalties(network, lengths, batch_size, chunk_size, penalty):
    """Each chunk's penalty, from the definition, in the chunk order of the naive loop.

    Chunk ``c`` of a batch adds ``penalty * sum_u (events of u in c / events
    of u) ||D_u||^2``, over the batch's users x chunk size.
    """
    norms = [(deviations(network)[u] ** 2).sum() for u in range(len(lengths))]
    order = sorted(np.flatnonzero(lengths), key=lambda u: (-lengths[u], u))
    values = []
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        n_chunks = -(-max(lengths[u] for u in batch) // chunk_size)
        for c in range(n_chunks):
            total = 0.0
            for u in batch:
                in_chunk = min((c + 1) * chunk_size, lengths[u]) - c * chunk_size
                if in_chunk > 0:
                    total = total + penalty * in_chunk / lengths[u] * norms[u]
            values.append(total / (len(batch) * chunk_size))
    return values


def penalised_network(kind, n_users, seed=5):
    generator = torch.Generator().manual_seed(seed)
    network = CollaborativeRNN(n_users, 6, 4, dtype=torch.float64, recurrent_kind=kind,
                               rank={"low_rank": 2, "basis": 3}.get(kind)
                               ).reset_parameters(generator)
    with torch.no_grad():  # deviations away from zero, a non-zero bias
        for name in network.weights.row_indexed():
            network.get_parameter(name).normal_(generator=generator)
        network.output_bias.normal_(generator=generator)
    return network


# ------------------------------------------------------- penalty, naive
@pytest.mark.parametrize("bptt", ["manual", "autograd"])
@pytest.mark.parametrize("kind", ["deviation", "low_rank", "basis"])
def test_penalised_loss_and_gradients_match_naive_loop(kind, bptt, naive_of_kind):
    naive_of_kind(kind)
    sequences, lengths, items_of = tiny_sequences()
    network = penalised_network(kind, len(lengths))
    batch_size, chunk_size, initial_state, penalty = 3, 3, 0.1, 0.7

    per_user = {name: torch.zeros_like(network.get_parameter(name))
                for name in network.weights.row_indexed()}
    package_chunks = []
    for batch in make_batches(sequences, batch_size, "cpu"):
        for chunk in chunk_losses(network, batch, chunk_size, initial_state, bptt=bptt,
                                  deviation_penalty=penalty):
            chunk.loss.backward()
            package_chunks.append(chunk.loss.item())
            for name, (users, leaf) in chunk.touched.items():
                per_user[name].index_add_(0, users, leaf.grad)
    package_grads = {name: p.grad.clone() for name, p in network.named_parameters()
                     if name not in per_user}
    package_grads.update(per_user)
    for parameter in network.parameters():
        parameter.grad = None

    total, naive_chunks = naive_training_loss(network, lengths, items_of, batch_size,
                                              chunk_size, initial_state)
    penalties = naive_penalties(network, lengths, batch_size, chunk_size, penalty)
    (total + sum(penalties)).backward()
    np.testing.assert_allclose(
        package_chunks, [(v + p).item() for v, p in zip(naive_chunks, penalties)],
        rtol=1e-10)
    for name, parameter in network.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        np.testing.assert_allclose(package_grads[name].numpy(), parameter.grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", ["deviation", "low_rank", "basis"])
def test_an_epochs_penalty_is_lambda_times_the_summed_squared_deviations(kind):
    """Over a pass (weights fixed), the steps' penalties times their slots sum
    to ``lambda sum_u ||D_u||^2`` over the users with events."""
    sequences, lengths, _ = tiny_sequences()
    network = penalised_network(kind, len(lengths))
    penalty, total = 2.5, 0.0
    for batch in make_batches(sequences, 3, "cpu"):
        slots = len(batch.lengths) * 4
        with_penalty = chunk_losses(network, batch, 4, 0.0, deviation_penalty=penalty)
        without = chunk_losses(network, batch, 4, 0.0)
        for step, plain in zip(with_penalty, without):
            total += (step.loss.item() - plain.loss.item()) * slots
    norms = (deviations(network).detach() ** 2).sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(total, penalty * norms[lengths > 0].sum(), rtol=1e-10)


def test_a_network_without_deviations_refuses_a_penalty():
    sequences, _, _ = tiny_sequences()
    for kind in ("per_user", "shared"):
        network = CollaborativeRNN(7, 6, 3, recurrent_kind=kind).reset_parameters()
        batch = make_batches(sequences, 3, "cpu")[0]
        with pytest.raises(ValueError, match="deviation_penalty=0.5 needs deviations"):
            next(chunk_losses(network, batch, 3, 0.0, deviation_penalty=0.5))


# ------------------------------------------------------------ the limits
@pytest.fixture(scope="module")
def events():
    return random_events(n_users=6, n_events=200, ties=False, seed=7)


def test_zero_penalty_and_dropout_are_the_papers_model(events):
    default = CollaborativeGRURecommender(**TINY).fit(events)
    explicit = CollaborativeGRURecommender(**TINY, deviation_penalty=0.0,
                                           dropout=0.0).fit(events)
    assert default.network_.recurrent_kind == explicit.network_.recurrent_kind == "per_user"
    assert set(dict(explicit.network_.named_parameters())) == {
        "item_input", "recurrent", "output_weight", "output_bias"}
    for name, tensor in default.network_.state_dict().items():
        assert torch.equal(explicit.network_.state_dict()[name], tensor), name
    np.testing.assert_array_equal(explicit.score_samples(events),
                                  default.score_samples(events))


def test_a_positive_penalty_starts_every_user_at_the_shared_matrices(events):
    network = CollaborativeGRURecommender(**TINY, deviation_penalty=1.0)
    network = clone(network).fit(events).network_
    assert network.recurrent_kind == "deviation"
    assert network.recurrent.shape[0] == 1
    start = CollaborativeRNN(6, 8, 4, recurrent_kind="deviation").reset_parameters(
        torch.Generator().manual_seed(0))
    shared = CollaborativeRNN(6, 8, 4, shared=True).reset_parameters(
        torch.Generator().manual_seed(0))
    assert not start.deviation.any()
    assert torch.equal(start.recurrent, shared.recurrent)


@pytest.mark.parametrize("weights", ["per_user", "low_rank"])
def test_a_huge_penalty_gives_the_shared_model(events, weights):
    """lambda -> infinity: the deviations vanish, the model scores like P-GRU
    (the same network with its deviations removed)."""
    params = dict(TINY, max_epochs=4, recurrent_weights=weights, learning_rate=0.02,
                  validation_fraction=0.0)
    mild = CollaborativeGRURecommender(**params, deviation_penalty=1e-3).fit(events)
    huge = CollaborativeGRURecommender(**params, deviation_penalty=1e6).fit(events)
    shared_norm = huge.network_.recurrent.norm().item()
    mild_norm = deviations(mild.network_).norm(dim=(1, 2)).max().item()
    huge_norm = deviations(huge.network_).norm(dim=(1, 2)).max().item()
    assert mild_norm > 0.1 * shared_norm, (mild_norm, shared_norm)
    assert huge_norm < 0.01 * shared_norm, (huge_norm, shared_norm)
    # the same network with no deviation at all: P-GRU
    shared = copy.deepcopy(huge)
    with torch.no_grad():
        for name in shared.network_.weights.row_indexed():
            shared.network_.get_parameter(name).zero_()
    np.testing.assert_allclose(huge.score_samples(events), shared.score_samples(events),
                               atol=0.02)


@pytest.mark.parametrize("weights", ["per_user", "low_rank"])
def test_penalised_scores_match_the_naive_loop(weights, naive_of_kind):
    from skcrnn.model_selection import suffix_split
    train, test = suffix_split(random_events(n_users=5, n_events=90, ties=False,
                                             seed=4), 0.25, 2, 50)
    model = CollaborativeGRURecommender(
        hidden_size=5, recurrent_weights=weights, deviation_penalty=0.3, dropout=0.2,
        max_epochs=3, batch_size=2, chunk_size=4, initial_state=0.05,
        learning_rate=0.02, device="cpu", random_state=0).fit(train)
    naive_of_kind(model.network_.recurrent_kind)
    stranger = test[test["user"] == test["user"].iloc[0]].assign(user=-7)
    import pandas as pd
    scored = pd.concat([test, stranger.set_axis(stranger.index + 10_000)])
    expected, _ = naive_scores(model, train, scored)
    with pytest.warns(UserWarning, match="unknown to the model"):
        got = pd.Series(model.score_samples(scored), index=scored.index)
    np.testing.assert_allclose(got[expected.index], expected, rtol=1e-9, atol=1e-12)
    # scoring is deterministic: dropout is training only
    with pytest.warns(UserWarning, match="unknown to the model"):
        np.testing.assert_array_equal(model.score_samples(scored), got.to_numpy())


def test_partial_fit_grows_deviations_with_the_mean(events, tmp_path):
    model = CollaborativeGRURecommender(**TINY, deviation_penalty=0.5).fit(events)
    old = copy.deepcopy(model.network_)
    model.save(tmp_path / "model.pt")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.pt")
    assert loaded.network_.config["recurrent_kind"] == "deviation"
    new = events.iloc[:3].assign(user=[900, 900, 901],
                                 timestamp=events["timestamp"].max()
                                 + pd_seconds([1, 2, 3]))
    model.set_params(partial_epochs=0, replay_epochs=0).partial_fit(new)
    n = old.deviation.shape[0]
    mean = old.deviation.mean(dim=0, dtype=torch.float64).float()
    assert torch.equal(model.network_.deviation[:n], old.deviation)
    assert torch.equal(model.network_.deviation[n:], mean.expand(2, -1, -1))
    loaded.set_params(partial_epochs=0, replay_epochs=0).partial_fit(new)
    for name, tensor in model.network_.state_dict().items():
        assert torch.equal(loaded.network_.state_dict()[name], tensor), name


def pd_seconds(values):
    import pandas as pd
    return pd.to_timedelta(values, unit="s")


# ---------------------------------------------------------------- dropout
def test_dropped_values_are_zero_or_scaled_with_the_rate():
    generator = torch.Generator().manual_seed(0)
    values = torch.ones(200_000, dtype=torch.float64)
    drop = Dropout(0.3, generator)
    assert abs(drop.rate - 0.3) <= 2 ** -17  # rounded to a multiple of 2^-16
    dropped = drop(values)
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept].numpy(), 1 / (1 - drop.rate), rtol=1e-15)
    np.testing.assert_allclose(dropped[kept].numpy(), 1 / 0.7, rtol=1e-5)
    assert abs(1 - kept.double().mean().item() - 0.3) < 0.005
    assert abs(dropped.mean().item() - 1.0) < 0.01
    # entries are independent of their neighbours (four share one 64-bit draw)
    pairs = kept[:-1].double() * kept[1:].double()
    assert abs(pairs.mean().item() - 0.7 ** 2) < 0.005
    assert Dropout(0.0, None)(values) is values
    again = Dropout(0.3, torch.Generator().manual_seed(0))(values)
    assert torch.equal(again, dropped)


def naive_dropout_loss(network, lengths, items_of, batch_size, chunk_size, masks):
    """The naive loop of ``tests/test_rnn.py`` with recorded dropout masks.

    Per chunk, ``masks`` holds the input terms' mask ``(rows, T, k*H)`` and the
    output states' mask ``(real slots, H)``, slots in row-major order.
    """
    naive = test_rnn.Naive(network, dtype=torch.float64)
    order = sorted(np.flatnonzero(lengths), key=lambda u: (-lengths[u], u))
    values, masks = [], iter(masks)
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        states = {u: torch.full((naive.H,), 0.1, dtype=torch.float64) for u in batch}
        n_chunks = -(-max(lengths[u] for u in batch) // chunk_size)
        for c in range(n_chunks):
            input_mask, output_mask = next(masks)
            loss, slot = 0.0, 0
            for row, u in enumerate(batch):
                R, h = naive.user_matrices(u), states[u].detach()
                for k in range(c * chunk_size, min((c + 1) * chunk_size, lengths[u])):
                    loss = loss - naive.log_proba(h * output_mask[slot])[items_of[u][k]]
                    slot += 1
                    E = naive.E
                    item, t = items_of[u][k], k - c * chunk_size
                    naive.E = E.clone()
                    naive.E[item] = E[item] * input_mask[row, t]
                    h = naive.step(h, item, R)
                    naive.E = E
                states[u] = h
            values.append(loss / (len(batch) * chunk_size))
    return values


@pytest.mark.parametrize("bptt", ["manual", "autograd"])
def test_dropout_loss_and_gradients_match_naive_loop_with_the_same_masks(bptt,
                                                                         monkeypatch):
    sequences, lengths, items_of = tiny_sequences()
    generator = torch.Generator().manual_seed(1)
    network = CollaborativeRNN(len(lengths), 6, 3, dtype=torch.float64,
                               candidate="sigmoid").reset_parameters(generator)
    recorded = []

    class Recording(Dropout):
        def __call__(self, values):
            dropped = super().__call__(values)
            recorded.append((dropped / values).detach())
            return dropped
    monkeypatch.setattr(tbptt, "Dropout", Recording)

    recurrent_grad = torch.zeros_like(network.recurrent)
    package_chunks = []
    noise = torch.Generator().manual_seed(9)
    for batch in make_batches(sequences, 3, "cpu"):
        for chunk in chunk_losses(network, batch, 3, 0.1, bptt=bptt, dropout=0.4,
                                  generator=noise):
            chunk.loss.backward()
            package_chunks.append(chunk.loss.item())
            users, leaf = chunk.touched["recurrent"]
            if leaf.grad is not None:
                recurrent_grad.index_add_(0, users, leaf.grad)
    package_grads = {name: p.grad.clone() for name, p in network.named_parameters()
                     if name != "recurrent"}
    package_grads["recurrent"] = recurrent_grad
    for parameter in network.parameters():
        parameter.grad = None
    masks = list(zip(recorded[0::2], recorded[1::2]))
    assert any((mask == 0).any() for pair in masks for mask in pair)

    naive_chunks = naive_dropout_loss(network, lengths, items_of, 3, 3, masks)
    sum(naive_chunks).backward()
    np.testing.assert_allclose(package_chunks, [v.item() for v in naive_chunks],
                               rtol=1e-10)
    for name, parameter in network.named_parameters():
        np.testing.assert_allclose(package_grads[name].numpy(), parameter.grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)


def test_dropout_is_seeded_and_changes_training(events):
    params = dict(TINY, dropout=0.3)
    first = CollaborativeGRURecommender(**params).fit(events)
    again = CollaborativeGRURecommender(**params).fit(events)
    other = CollaborativeGRURecommender(**{**params, "random_state": 1}).fit(events)
    plain = CollaborativeGRURecommender(**TINY).fit(events)
    state = first.network_.state_dict()
    for name, tensor in again.network_.state_dict().items():
        assert torch.equal(state[name], tensor), name
    assert not torch.equal(state["item_input"], other.network_.item_input)
    assert not torch.equal(state["item_input"], plain.network_.item_input)


def test_interrupted_fit_with_dropout_resumes_to_the_same_model(tmp_path, monkeypatch):
    from skcrnn.datasets import make_sequences
    events = make_sequences(n_users=6, n_items=12, n_events=240, random_state=0)
    params = {**CHECKPOINT_PARAMS, "dropout": 0.3, "recurrent_weights": "low_rank",
              "deviation_penalty": 0.1, "checkpoint_dir": tmp_path}
    counter = count_chunks(monkeypatch)
    reference = CollaborativeGRURecommender(**params).fit(events)
    per_epoch = counter["validated"][0]
    count_chunks(monkeypatch, interrupt_at=2 * per_epoch + per_epoch // 2)
    with pytest.raises(Interrupted):
        CollaborativeGRURecommender(**params).fit(events)
    assert read_checkpoint(tmp_path)["training"]["epoch"] == 2
    assert (tmp_path / FILENAME).exists()
    count_chunks(monkeypatch)
    resumed = CollaborativeGRURecommender(**params).fit(events)
    assert_same_fit(resumed, reference, events)


# ----------------------------------------------------------------- errors
def test_penalty_with_shared_weights_is_refused_at_fit(events):
    model = CollaborativeGRURecommender(**TINY, recurrent_weights="shared",
                                        deviation_penalty=1.0)
    with pytest.raises(ValueError, match="recurrent_weights='shared' has no per-user"):
        model.fit(events)
    assert not hasattr(model, "network_")


@pytest.mark.parametrize("penalty, message", [
    (float("inf"), r"deviation_penalty.*range \[0.0, inf\)"), (-1.0, "deviation_penalty"),
    (float("nan"), "deviation_penalty"), ("1", "deviation_penalty")])
def test_bad_penalties_are_refused(events, penalty, message):
    with pytest.raises(ValueError, match=message):
        CollaborativeGRURecommender(**TINY, deviation_penalty=penalty).fit(events)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_outside_zero_one_is_refused(events, rate):
    model = CollaborativeGRURecommender(**TINY, dropout=rate)
    assert model.dropout is rate
    with pytest.raises(ValueError, match="dropout"):
        model.fit(events)


@pytest.mark.parametrize("change", [{"deviation_penalty": 0.0},
                                    {"recurrent_weights": "low_rank"},
                                    {"hidden_size": 5}])
def test_partial_fit_refuses_parameters_the_network_was_not_built_with(events, change):
    model = CollaborativeGRURecommender(**TINY, deviation_penalty=0.5).fit(events)
    network = model.network_
    new = events.iloc[:2].assign(timestamp=events["timestamp"].max() + pd_seconds([1, 2]))
    name, value = next(iter(change.items()))
    # the rule of every fit-time parameter (docs/parameters.rst)
    with pytest.raises(ValueError, match=f"{name}={value!r} was set after fit.*"
                                         f"fitted with {name}="):
        model.set_params(**change).partial_fit(new)
    assert model.network_ is network
