"""CollaborativeGRURecommender: training loop, parameters, model selection, devices."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from skcrnn import CollaborativeGRURecommender
from skcrnn._events import Sequences
from skcrnn._rnn.estimator import _Validation
from skcrnn._torch.batching import (length_sorted_batches, pad, validation_sizes,
                                    window)
from skcrnn.model_selection import UserSuffixSplit

from .conftest import TINY_RNN as TINY, random_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def events():
    return random_events(n_users=8, n_items=10, n_events=240, ties=False, seed=1)


# ---------------------------------------------------------------- batching
def test_validation_sizes():
    sizes = validation_sizes(np.array([1, 2, 5, 10, 15, 25, 100]), 0.1)
    np.testing.assert_array_equal(sizes, [0, 1, 1, 1, 2, 2, 10])
    np.testing.assert_array_equal(validation_sizes(np.array([1, 5]), 0.0), [0, 0])


def test_window_pad_and_batches():
    sequences = Sequences(np.arange(4), np.array([0, 3, 3, 8, 9]),
                          np.arange(9))
    cut = window(sequences, np.array([1, 0, 2, 0]), np.array([3, 0, 5, 1]))
    np.testing.assert_array_equal(cut.items, [1, 2, 5, 6, 7, 8])
    np.testing.assert_array_equal(cut.lengths, [2, 0, 3, 1])
    assert [list(b) for b in length_sorted_batches(sequences.lengths, 2)] == [[2, 0],
                                                                             [3]]
    items, lengths = pad(sequences, np.array([2, 3, 0]))
    np.testing.assert_array_equal(items, [[3, 4, 5, 6, 7], [8, 0, 0, 0, 0],
                                          [0, 1, 2, 0, 0]])
    np.testing.assert_array_equal(lengths, [5, 1, 3])


# ---------------------------------------------------------------- training
def test_reproducible_with_random_state(events):
    first = CollaborativeGRURecommender(**TINY).fit(events).score_samples(events)
    again = CollaborativeGRURecommender(**TINY).fit(events).score_samples(events)
    np.testing.assert_array_equal(first, again)
    other = CollaborativeGRURecommender(**{**TINY, "random_state": 1}).fit(events)
    assert not np.allclose(other.score_samples(events), first)


def test_history_records_every_epoch(events):
    model = CollaborativeGRURecommender(**{**TINY, "max_epochs": 3,
                                           "n_iter_no_change": 3}).fit(events)
    assert [h["epoch"] for h in model.history_] == [1, 2, 3] and model.n_iter_ == 3
    for entry in model.history_:
        assert set(entry) == {"epoch", "train_loss", "valid_loss", "seconds",
                              "events_per_second"}
        assert np.isfinite([entry["train_loss"], entry["valid_loss"]]).all()
        assert entry["seconds"] > 0 and entry["events_per_second"] > 0


def test_early_stopping_restores_the_best_weights(events):
    # a large learning rate on patternless data: validation loss soon rises
    model = CollaborativeGRURecommender(
        hidden_size=8, learning_rate=0.05, max_epochs=25, n_iter_no_change=2,
        validation_fraction=0.2, refit=False, batch_size=4, chunk_size=5,
        device="cpu", random_state=0).fit(events)
    valid = [entry["valid_loss"] for entry in model.history_]
    best = int(np.argmin(valid)) + 1
    assert model.best_epoch_ == best
    assert model.n_iter_ == len(valid) == best + 2 < 25
    # the validation loss of the kept weights is the best epoch's
    history = model._history
    n_valid = validation_sizes(history.lengths, 0.2)
    validation = _Validation(model.network_, history, history.lengths - n_valid,
                             model.initial_state)
    assert validation() == pytest.approx(valid[best - 1], rel=1e-12)
    assert validation() < valid[-1]


def test_refit_trains_on_all_events_for_the_best_epochs(events):
    settings = dict(hidden_size=8, learning_rate=0.05, max_epochs=25,
                    n_iter_no_change=2, validation_fraction=0.2, batch_size=4,
                    chunk_size=5, device="cpu", random_state=0)
    kept = CollaborativeGRURecommender(**settings, refit=False).fit(events)
    refit = CollaborativeGRURecommender(**settings).fit(events)

    def losses(history):
        return [(h["train_loss"], h["valid_loss"]) for h in history]

    # the same first run, then a second one on every event
    assert losses(refit.history_) == losses(kept.history_)
    assert kept.refit_history_ is None
    assert len(refit.refit_history_) == refit.best_epoch_ < len(refit.history_)
    assert all(np.isnan(h["valid_loss"]) for h in refit.refit_history_)
    assert refit.refit_history_[0]["train_loss"] != kept.history_[0]["train_loss"]
    assert not torch.equal(refit.network_.output_bias, kept.network_.output_bias)


def test_no_validation_trains_all_epochs(events):
    model = CollaborativeGRURecommender(**{**TINY, "validation_fraction": 0.0,
                                           "max_epochs": 3}).fit(events)
    assert model.n_iter_ == 3 and model.best_epoch_ is None
    assert all(np.isnan(entry["valid_loss"]) for entry in model.history_)


@pytest.mark.parametrize("extra", [dict(optimizer="adam"), dict(max_train_chunks=1),
                                   dict(cell="tanh", recurrent_weights="shared")])
def test_options_train_and_score(events, extra):
    model = CollaborativeGRURecommender(**TINY, **extra).fit(events)
    assert np.isfinite(model.score_samples(events)).all()


def test_max_train_chunks_uses_the_latest_events(events):
    """Only the last chunk of each user trains: earlier events do not matter."""
    settings = {**TINY, "max_train_chunks": 1, "validation_fraction": 0.0}
    ordered = events.sort_values(["user", "timestamp"])
    position_from_end = ordered.groupby("user").cumcount(ascending=False)
    early = position_from_end >= TINY["chunk_size"]
    changed = ordered.copy()
    changed.loc[early, "item"] = changed.loc[early, "item"].iloc[::-1].to_numpy()
    a = CollaborativeGRURecommender(**settings).fit(ordered)
    b = CollaborativeGRURecommender(**settings).fit(changed)
    assert list(a.classes_) == list(b.classes_)
    for (_, x), (_, y) in zip(a.network_.state_dict().items(),
                              b.network_.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    full = CollaborativeGRURecommender(**{**settings, "max_train_chunks": None})
    assert not torch.equal(full.fit(ordered).network_.output_bias,
                           a.network_.output_bias)


def test_verbose_prints_epochs(events, capsys):
    CollaborativeGRURecommender(**{**TINY, "verbose": 1}).fit(events)
    captured = capsys.readouterr()
    assert "epoch 1" in captured.out + captured.err


# -------------------------------------------------------------- parameters
@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(learning_rate=0.0),
                                 dict(cell="lstm"), dict(recurrent_weights="user"),
                                 dict(optimizer="sgd"), dict(rho=1.0),
                                 dict(chunk_size=0), dict(batch_size=0),
                                 dict(validation_fraction=1.0),
                                 dict(max_train_chunks=0), dict(epsilon=0.0),
                                 dict(initial_state=float("nan"))])
def test_invalid_parameters_rejected_in_fit(events, bad):
    model = CollaborativeGRURecommender(**{**TINY, **bad})  # __init__ accepts all
    with pytest.raises(ValueError):
        model.fit(events)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_invalid_device_names(events, device):
    with pytest.raises(ValueError, match="device"):
        CollaborativeGRURecommender(**{**TINY, "device": device}).fit(events)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(events):
    with pytest.raises(ValueError, match="CUDA is not available"):
        CollaborativeGRURecommender(**{**TINY, "device": "cuda"}).fit(events)
    model = CollaborativeGRURecommender(**{**TINY, "device": "auto"}).fit(events)
    assert model.device_ == "cpu"


# --------------------------------------------------------- model selection
def test_grid_search_with_user_suffix_split(events):
    search = GridSearchCV(
        CollaborativeGRURecommender(max_epochs=1, batch_size=4, chunk_size=5,
                                    device="cpu", random_state=0),
        {"hidden_size": [2, 4], "learning_rate": [0.005, 0.02]},
        cv=UserSuffixSplit(n_splits=2, test_size=0.1, min_test=2, max_test=10))
    search.fit(events)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_["hidden_size"] in (2, 4)
    assert np.isfinite(search.score(events))


# -------------------------------------------------------------------- GPU
@pytest.mark.parametrize("variant", [dict(), dict(cell="tanh"),
                                     dict(recurrent_weights="shared")])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_and_scores_on_cuda(events, variant):
    model = CollaborativeGRURecommender(**{**TINY, "device": "cuda"},
                                        **variant).fit(events)
    assert model.device_.startswith("cuda")
    assert model.network_.item_input.is_cuda and model.final_states_.is_cuda
    scores = model.score_samples(events)
    assert np.isfinite(scores).all()
    # the same weights on the CPU score the same (to float64 rounding)
    import pickle
    state = pickle.loads(pickle.dumps(model))
    state.network_.cpu()
    state.final_states_ = state.final_states_.cpu()
    state.device_ = "cpu"
    np.testing.assert_allclose(state.score_samples(events), scores, rtol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_saved_loads_on_cpu(events, tmp_path):
    model = CollaborativeGRURecommender(**{**TINY, "device": "cuda"}).fit(events)
    model.save(tmp_path / "model.pt")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.pt", device="cpu")
    assert loaded.device_ == "cpu" and not loaded.network_.item_input.is_cuda
    np.testing.assert_allclose(loaded.score_samples(events),
                               model.score_samples(events), rtol=1e-9)
    state = model.__getstate__()
    assert not state["network_"].item_input.is_cuda
    assert not state["final_states_"].is_cuda


def test_diverged_training_raises_a_clear_error(events, monkeypatch):
    from skcrnn._torch import loop
    monkeypatch.setattr(loop, "_train_epoch", lambda *args: float("nan"))
    model = CollaborativeGRURecommender(hidden_size=4, max_epochs=3, device="cpu",
                                        random_state=0)
    with pytest.raises(ValueError, match="diverged in epoch 1.*learning_rate"):
        model.fit(events)


def test_nan_validation_loss_counts_as_no_improvement(events, monkeypatch):
    from skcrnn._rnn import estimator as _estimator
    losses = iter([float("nan"), 5.0, 4.0, 4.5, 4.6, 4.7, 4.8])
    monkeypatch.setattr(_estimator._Validation, "__call__", lambda self: next(losses))
    model = CollaborativeGRURecommender(
        hidden_size=4, max_epochs=7, n_iter_no_change=2, refit=False, batch_size=4,
        chunk_size=5, device="cpu", random_state=0).fit(events)
    assert model.best_epoch_ == 3
    assert model.n_iter_ == 5


def test_nan_validation_loss_in_every_epoch_stops_early(events, monkeypatch):
    from skcrnn._rnn import estimator as _estimator
    monkeypatch.setattr(_estimator._Validation, "__call__", lambda self: float("nan"))
    model = CollaborativeGRURecommender(
        hidden_size=4, max_epochs=7, n_iter_no_change=2, refit=True, batch_size=4,
        chunk_size=5, device="cpu", random_state=0)
    with pytest.warns(RuntimeWarning, match="not finite in any epoch"):
        model.fit(events)
    assert model.best_epoch_ is None and model.n_iter_ == 2
    assert model.refit_history_ is None


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
@pytest.mark.parametrize("learning_rate", [1e12, 1e3])
def test_exploding_but_finite_loss_is_divergence(events, optimizer, learning_rate):
    """A huge learning rate gives a loss of 1e13 nats, finite: still divergence."""
    model = CollaborativeGRURecommender(**{**TINY, "learning_rate": learning_rate,
                                           "optimizer": optimizer})
    with pytest.raises(ValueError, match="diverged in epoch 1.*above"):
        model.fit(events)


def test_non_finite_parameters_are_divergence(events, monkeypatch):
    from skcrnn._torch import loop

    def poison(module, optimizer, batches, steps, bar, reduce):
        with torch.no_grad():
            module.output_bias[0] = float("inf")
        return 1.0
    monkeypatch.setattr(loop, "_train_epoch", poison)
    with pytest.raises(ValueError, match=r"diverged in epoch 1.*\['output_bias'\]"):
        CollaborativeGRURecommender(**TINY).fit(events)


# ------------------------------------------------------------ thread policy
def threads_of_epochs(monkeypatch):
    """The list that receives torch's thread count at the start of each epoch."""
    from skcrnn._torch import loop
    seen = []
    real_epoch = loop._train_epoch

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real_epoch(*args)
    monkeypatch.setattr(loop, "_train_epoch", spy)
    return seen


@pytest.mark.parametrize("n_jobs, expected", [(None, 1), (1, 1), (2, 2), (-1, None)])
def test_n_jobs_sets_torch_threads_during_fit_and_scoring_only(events, monkeypatch,
                                                              n_jobs, expected):
    import os
    seen = threads_of_epochs(monkeypatch)
    torch.set_num_threads(3)  # the module's fixture restores its own setting
    model = CollaborativeGRURecommender(**{**TINY, "n_jobs": n_jobs}).fit(events)
    assert torch.get_num_threads() == 3
    expected = min(expected or os.cpu_count(), os.cpu_count())
    assert set(seen) == {expected}
    model.score_samples(events)
    assert torch.get_num_threads() == 3


def test_thread_count_is_restored_when_fit_fails(events, monkeypatch):
    from skcrnn._torch import loop

    def interrupted(*args):
        assert torch.get_num_threads() == 1
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "_train_epoch", interrupted)
    torch.set_num_threads(2)
    with pytest.raises(KeyboardInterrupt):
        CollaborativeGRURecommender(**TINY).fit(events)
    assert torch.get_num_threads() == 2


def test_joblib_context_sets_the_default_thread_count(events, monkeypatch):
    import os

    from joblib import parallel_config
    seen = threads_of_epochs(monkeypatch)
    with parallel_config(n_jobs=2):
        CollaborativeGRURecommender(**TINY).fit(events)
    assert set(seen) == {min(2, os.cpu_count())}


def test_n_jobs_zero_is_refused(events):
    with pytest.raises(ValueError, match="n_jobs == 0"):
        CollaborativeGRURecommender(**{**TINY, "n_jobs": 0}).fit(events)


def test_recurrence_steps_run_on_one_thread_and_the_output_layer_on_n_jobs(
        events, monkeypatch):
    """Tiny step kernels lose to thread wake-ups; the output layer's products gain."""
    import os

    from skcrnn._rnn import cells, tbptt
    if os.cpu_count() < 2:
        pytest.skip("one processor: every count is 1")
    steps, products = [], []
    real_step, real_loss = cells.GRUCell.step, tbptt.summed_cross_entropy

    def step(self, *args):
        steps.append(torch.get_num_threads())
        return real_step(self, *args)

    def loss(*args, **kwargs):
        products.append(torch.get_num_threads())
        return real_loss(*args, **kwargs)
    monkeypatch.setattr(cells.GRUCell, "step", step)
    monkeypatch.setattr(tbptt, "summed_cross_entropy", loss)
    CollaborativeGRURecommender(**{**TINY, "n_jobs": 2}).fit(events)
    assert set(products) == {2}
    assert 1 in set(steps)  # training steps (scoring runs on n_jobs threads)
