"""The sampled softmax for training (``loss="sampled"``).

The loss against a naive per-row loop written from its definition (logQ
correction, accidental hits), its identity with the full softmax when the
negatives are every item once, the proposal's distribution and seeding, the
training steps against the naive network loop of ``tests/test_rnn.py``, the
estimator's exact scoring, reproducibility, resuming, and its errors.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._rnn.network import CollaborativeRNN
from skcrnn._rnn.tbptt import chunk_losses
from skcrnn._torch.batching import make_batches
from skcrnn._torch.output import (UnigramProposal, sampled_cross_entropy,
                                  summed_cross_entropy)
from skcrnn._torch.checkpoint import FILENAME

from . import test_rnn
from .conftest import TINY_RNN as TINY, random_events
from .test_rnn import naive_scores, tiny_sequences
from .test_rnn_checkpoint import (PARAMS as CHECKPOINT_PARAMS, Interrupted,
                                  assert_same_fit, count_chunks)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_sampled_loss(hidden, weight, bias, targets, negatives, log_expected):
    """Row by row: the target and every negative that is not the target."""
    total = 0.0
    for n in range(hidden.shape[0]):
        y = int(targets[n])
        candidates = [y] + [int(j) for j in negatives if int(j) != y]
        logits = torch.stack([hidden[n] @ weight[j] + bias[j] - log_expected[j]
                              for j in candidates])
        total = total - torch.log_softmax(logits, dim=0)[0]
    return total


def leaves(seed, n_rows=9, n_items=7, size=4):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64)
               for shape in ((n_rows, size), (n_items, size), (n_items,))]
    return [tensor.requires_grad_() for tensor in tensors]


def gradients(loss, tensors):
    return [grad.clone() for grad in torch.autograd.grad(loss, tensors)]


# ------------------------------------------------------------------ the loss
def test_loss_and_gradients_match_the_naive_definition():
    hidden, weight, bias = leaves(0)
    targets = torch.tensor([0, 3, 3, 6, 1, 2, 5, 4, 3])
    # repeats, and negatives that are some rows' targets (accidental hits)
    negatives = torch.tensor([3, 1, 1, 5, 0])
    log_expected = torch.log(5 * torch.tensor([.1, .2, .05, .3, .15, .1, .1],
                                              dtype=torch.float64))
    got = sampled_cross_entropy(hidden, weight, bias, targets, negatives, log_expected)
    want = naive_sampled_loss(hidden, weight, bias, targets, negatives, log_expected)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for mine, theirs in zip(gradients(got, [hidden, weight, bias]),
                            gradients(want, [hidden, weight, bias])):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-14)


def test_a_row_whose_every_negative_is_its_target_has_zero_loss():
    hidden, weight, bias = leaves(1, n_rows=2)
    loss = sampled_cross_entropy(hidden, weight, bias, torch.tensor([2, 2]),
                                 torch.tensor([2, 2, 2]),
                                 torch.zeros(7, dtype=torch.float64))
    assert loss.item() == 0.0


def test_every_item_once_with_a_uniform_proposal_is_the_full_softmax():
    """S = V negatives, each item once, Q = 1/V: log(S Q) = 0, the candidate set
    of every row is the whole catalogue (its target's hit masked, the target
    counted once): the sampled loss is the full cross-entropy, and so are its
    gradients."""
    hidden, weight, bias = leaves(2, n_rows=11, n_items=7)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 2, 0, 3])
    proposal = UnigramProposal(np.arange(7), 0.0, 7)  # power 0: uniform
    np.testing.assert_allclose(proposal.log_expected.numpy(), 0.0, atol=1e-15)
    negatives = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    sampled = sampled_cross_entropy(hidden, weight, bias, targets, negatives,
                                    proposal.log_expected)
    full = summed_cross_entropy(hidden, weight, bias, targets)
    reference = -torch.log_softmax(hidden @ weight.T + bias, dim=1)[
        torch.arange(11), targets].sum()
    torch.testing.assert_close(sampled, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(full, reference, rtol=1e-12, atol=0)
    for mine, theirs in zip(gradients(sampled, [hidden, weight, bias]),
                            gradients(full, [hidden, weight, bias])):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-14)


def test_every_item_once_is_the_full_softmax_at_corrected_biases():
    """Any Q: with each item once, the loss is the full cross-entropy at the
    biases b - log(V Q)."""
    hidden, weight, bias = leaves(3, n_rows=6, n_items=5)
    targets = torch.tensor([4, 0, 2, 2, 1, 3])
    proposal = UnigramProposal([3, 1, 7, 2, 5], 0.75, 5)
    sampled = sampled_cross_entropy(hidden, weight, bias, targets, torch.arange(5),
                                    proposal.log_expected)
    shifted = bias - torch.log(5 * proposal.proba)
    full = -torch.log_softmax(hidden @ weight.T + shifted, dim=1)[
        torch.arange(6), targets].sum()
    torch.testing.assert_close(sampled, full, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- proposal
def test_proposal_is_the_unigram_to_the_power():
    counts = np.array([4, 0, 1, 9, 16])
    for power in (0.0, 0.5, 0.75, 1.0):
        proposal = UnigramProposal(counts, power, 3)
        weights = np.array([c ** power if c or power == 0 else 0.0 for c in counts])
        np.testing.assert_allclose(proposal.proba.numpy(), weights / weights.sum(),
                                   rtol=1e-15)
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(proposal.log_expected.numpy(),
                                       np.log(3 * weights / weights.sum()), rtol=1e-12)
    # power 0 also draws the item never seen; power > 0 never does
    assert UnigramProposal(counts, 0.0, 3).proba[1] > 0
    draws = UnigramProposal(counts, 0.75, 100_000).draw(torch.Generator().manual_seed(0))
    assert not (draws == 1).any()
    frequencies = np.bincount(draws.numpy(), minlength=5) / 100_000
    np.testing.assert_allclose(frequencies, UnigramProposal(counts, 0.75, 1).proba,
                               atol=0.006)


def test_draws_are_seeded():
    proposal = UnigramProposal(np.arange(1, 50), 0.75, 20)
    first = proposal.draw(torch.Generator().manual_seed(4))
    again = proposal.draw(torch.Generator().manual_seed(4))
    other = proposal.draw(torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.equal(first, other)


# ---------------------------------------------------- training, naive loop
class FixedProposal(UnigramProposal):
    """Hands out given negatives in turn, recording nothing else."""

    def __init__(self, counts, power, draws):
        super().__init__(counts, power, len(draws[0]))
        self.draws = iter(draws)

    def draw(self, generator=None):
        return next(self.draws)


def naive_sampled_training(network, lengths, items_of, batch_size, chunk_size,
                           initial_state, draws, log_expected):
    """The naive loop's chunks (``tests/test_rnn.py``), each with its negatives."""
    naive = test_rnn.Naive(network, dtype=torch.float64)
    order = sorted(np.flatnonzero(lengths), key=lambda u: (-lengths[u], u))
    values, draws = [], iter(draws)
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        states = {u: torch.full((naive.H,), initial_state, dtype=torch.float64)
                  for u in batch}
        n_chunks = -(-max(lengths[u] for u in batch) // chunk_size)
        for c in range(n_chunks):
            negatives, hidden, targets = next(draws), [], []
            for u in batch:
                R, h = naive.user_matrices(u), states[u].detach()
                for k in range(c * chunk_size, min((c + 1) * chunk_size, lengths[u])):
                    hidden.append(h)
                    targets.append(items_of[u][k])
                    h = naive.step(h, items_of[u][k], R)
                states[u] = h
            loss = naive_sampled_loss(torch.stack(hidden), naive.W_out, naive.b,
                                      targets, negatives, log_expected)
            values.append(loss / (len(batch) * chunk_size))
    return values


@pytest.mark.parametrize("kind", ["per_user", "shared", "low_rank"])
def test_training_loss_and_gradients_match_naive_loop(kind, monkeypatch):
    if kind == "low_rank":
        from .test_rnn_low_rank import LowRankNaive
        monkeypatch.setattr(test_rnn, "Naive", LowRankNaive)
    sequences, lengths, items_of = tiny_sequences()
    generator = torch.Generator().manual_seed(1)
    network = CollaborativeRNN(len(lengths), 6, 3, dtype=torch.float64,
                               recurrent_kind=kind,
                               rank=2 if kind == "low_rank" else None
                               ).reset_parameters(generator)
    with torch.no_grad():
        network.output_bias.normal_(generator=generator)
        if kind == "low_rank":
            network.low_rank_left.normal_(generator=generator)
    draws = [torch.randint(0, 6, (4,), generator=generator) for _ in range(6)]
    draws[0] = torch.tensor([5, 5, 3, 1])  # repeats; items that are targets
    proposal = FixedProposal([5, 1, 2, 8, 3, 4], 0.75, draws)

    lazy = {}
    package_chunks = []
    for batch in make_batches(sequences, 3, "cpu"):
        for chunk in chunk_losses(network, batch, 3, 0.1, proposal=proposal):
            chunk.loss.backward()
            package_chunks.append(chunk.loss.item())
            assert {"item_input", "output_weight", "output_bias"} <= set(chunk.touched)
            for name, (rows, leaf) in chunk.touched.items():
                if leaf.grad is not None:
                    lazy.setdefault(name, torch.zeros_like(network.get_parameter(name)))
                    lazy[name].index_add_(0, rows, leaf.grad)
    package_grads = {name: p.grad.clone() for name, p in network.named_parameters()
                     if p.grad is not None}
    package_grads.update(lazy)
    for parameter in network.parameters():
        parameter.grad = None

    naive_chunks = naive_sampled_training(network, lengths, items_of, 3, 3, 0.1, draws,
                                          proposal.log_expected)
    assert len(package_chunks) == len(naive_chunks) == 6
    sum(naive_chunks).backward()
    np.testing.assert_allclose(package_chunks, [v.item() for v in naive_chunks],
                               rtol=1e-10)
    for name, parameter in network.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        np.testing.assert_allclose(package_grads[name].numpy(), parameter.grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)


def test_a_step_reads_only_its_items_rows():
    sequences, lengths, _ = tiny_sequences()
    network = CollaborativeRNN(len(lengths), 6, 3).reset_parameters(
        torch.Generator().manual_seed(0))
    proposal = FixedProposal(np.ones(6), 0.0, [torch.tensor([4, 4])])
    batch = make_batches(sequences, 3, "cpu")[1]  # short users: few items
    step = next(chunk_losses(network, batch, 3, 0.0, proposal=proposal))
    items = batch.items[:, :3]
    real = torch.arange(3)[None, :] < torch.as_tensor(batch.lengths)[:, None]
    targets = set(items[real].tolist())
    assert set(step.touched["output_weight"][0].tolist()) == targets | {4}
    # the input rows of the real slots' items (padding feeds no loss)
    assert set(step.touched["item_input"][0].tolist()) == targets
    assert len(step.touched["output_weight"][0]) < 6
    assert not real.all()  # the batch has padding


# ---------------------------------------------------------------- estimator
@pytest.fixture(scope="module")
def events():
    return random_events(n_users=6, n_items=12, n_events=240, ties=False, seed=2)


SAMPLED = dict(TINY, loss="sampled", n_negatives=5, max_epochs=3)


def test_fits_are_seeded_and_scoring_is_exact(events):
    from skcrnn.model_selection import suffix_split
    train, test = suffix_split(events, 0.2, 2, 50)
    model = CollaborativeGRURecommender(**SAMPLED).fit(train)
    again = CollaborativeGRURecommender(**SAMPLED).fit(train)
    other = CollaborativeGRURecommender(**{**SAMPLED, "random_state": 1}).fit(train)
    full = CollaborativeGRURecommender(**{**SAMPLED, "loss": "full",
                                          "n_negatives": None}).fit(train)
    for name, tensor in model.network_.state_dict().items():
        assert torch.equal(again.network_.state_dict()[name], tensor), name
    assert not torch.equal(model.network_.output_weight, other.network_.output_weight)
    assert not torch.equal(model.network_.output_weight, full.network_.output_weight)
    # scoring: the exact full softmax of the network
    expected, expected_proba = naive_scores(model, train, test)
    got = pd.Series(model.score_samples(test), index=test.index)
    np.testing.assert_allclose(got[expected.index], expected, rtol=1e-9, atol=1e-12)
    proba = pd.DataFrame(model.predict_proba(test), index=test.index)
    np.testing.assert_allclose(proba.loc[expected.index].to_numpy(), expected_proba,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_sampled_training_lowers_the_full_softmax_error(events):
    params = dict(SAMPLED, hidden_size=8, max_epochs=8, learning_rate=0.05,
                  validation_fraction=0.0)
    untrained = CollaborativeGRURecommender(**{**params, "max_epochs": 1,
                                               "learning_rate": 1e-9}).fit(events)
    trained = CollaborativeGRURecommender(**params).fit(events)
    assert trained.score(events) > untrained.score(events) + 0.1


def test_proposal_counts_the_trained_events_then_the_histories(events, monkeypatch):
    import skcrnn._rnn.estimator as rnn_estimator
    seen = []
    monkeypatch.setattr(rnn_estimator, "UnigramProposal",
                        lambda counts, power, n, device: seen.append(counts.copy())
                        or UnigramProposal(counts, power, n, device))
    model = CollaborativeGRURecommender(**{**SAMPLED, "refit": False,
                                           "max_epochs": 1}).fit(events)
    codes = pd.Index(model.classes_).get_indexer(events["item"])
    # the check at fit (every event), then the trained events (no validation suffix)
    np.testing.assert_array_equal(seen[0], np.bincount(codes, minlength=12))
    assert seen[1].sum() < len(events) and (seen[1] <= seen[0]).all()
    later = events.iloc[:5].assign(timestamp=events["timestamp"].max()
                                   + pd.to_timedelta(np.arange(1, 6), unit="s"))
    model.set_params(partial_epochs=1, replay_epochs=0).partial_fit(later)
    both = np.concatenate([codes, pd.Index(model.classes_).get_indexer(later["item"])])
    np.testing.assert_array_equal(seen[-1], np.bincount(both, minlength=12))


def test_interrupted_sampled_fit_resumes_to_the_same_model(tmp_path, monkeypatch):
    from skcrnn.datasets import make_sequences
    events = make_sequences(n_users=6, n_items=12, n_events=240, random_state=0)
    params = {**CHECKPOINT_PARAMS, "loss": "sampled", "n_negatives": 4,
              "checkpoint_dir": tmp_path}
    counter = count_chunks(monkeypatch)
    reference = CollaborativeGRURecommender(**params).fit(events)
    per_epoch = counter["validated"][0]
    count_chunks(monkeypatch, interrupt_at=2 * per_epoch + per_epoch // 2)
    with pytest.raises(Interrupted):
        CollaborativeGRURecommender(**params).fit(events)
    assert (tmp_path / FILENAME).exists()
    count_chunks(monkeypatch)
    assert_same_fit(CollaborativeGRURecommender(**params).fit(events), reference, events)


def test_default_negatives_fit_small_catalogues(events):
    model = CollaborativeGRURecommender(**{**SAMPLED, "n_negatives": None}).fit(events)
    assert model._n_negatives() == 11


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("n_negatives", [12, 13, 500])
def test_as_many_negatives_as_items_are_refused_at_fit(events, n_negatives):
    model = CollaborativeGRURecommender(**{**SAMPLED, "n_negatives": n_negatives})
    with pytest.raises(ValueError, match=f"n_negatives={n_negatives} negatives, which "
                                         f"must be fewer than the 12 items"):
        model.fit(events)
    assert not hasattr(model, "network_")


@pytest.mark.parametrize("option", [{"n_negatives": 3}, {"negative_power": 1.0}])
def test_sampling_options_with_the_full_loss_are_refused(events, option):
    with pytest.raises(ValueError, match="is only used with loss='sampled'"):
        CollaborativeGRURecommender(**TINY, **option).fit(events)


def test_sampled_loss_with_the_copy_gate_is_refused(events):
    with pytest.raises(ValueError, match="cannot train the copy gate"):
        CollaborativeGRURecommender(**SAMPLED, copy_history=True).fit(events)


@pytest.mark.parametrize("option", [{"negative_power": -0.5}, {"n_negatives": 0},
                                    {"loss": "nce"}, {"negative_power": float("inf")}])
def test_bad_sampling_options_are_refused(events, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        CollaborativeGRURecommender(**{**SAMPLED, **option}).fit(events)
