"""CollaborativeGRURecommender: checkpoints and resuming a fit that was killed."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import skcrnn._rnn.estimator as rnn_estimator
from skcrnn import _persistence
from skcrnn import CollaborativeGRURecommender
from skcrnn._rnn.estimator import _Validation
from skcrnn._rnn.network import CollaborativeRNN
from skcrnn._torch.checkpoint import FILENAME, Checkpoint
from skcrnn._torch.optim import Optimizer
from skcrnn.datasets import make_sequences

from .conftest import TINY_RNN as TINY, random_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Early stopping before the 8th epoch, then a refit of 3 epochs or more (6 of
#: 8 epochs, then 4, on the generated events below).
PARAMS = {**TINY, "max_epochs": 8, "n_iter_no_change": 2, "validation_fraction": 0.25}
EVENTS = dict(n_users=6, n_items=12, n_events=240, random_state=0)


@pytest.fixture(scope="module")
def events():
    return make_sequences(**EVENTS)


class Interrupted(Exception):
    """Stands for whatever stops a fit: Ctrl-C, an out-of-memory error..."""


def count_chunks(monkeypatch, interrupt_at=None):
    """Count the chunks that training steps on; raise at chunk ``interrupt_at``.

    ``counter["validated"]`` records the count at each validation (the end of
    each epoch of phase 1).
    """
    original = rnn_estimator.chunk_losses
    validate = _Validation.__call__
    counter = {"chunks": 0, "validated": []}

    def validating(self):
        counter["validated"].append(counter["chunks"])
        return validate(self)

    def counting(*args, **kwargs):
        for chunk in original(*args, **kwargs):
            counter["chunks"] += 1
            if counter["chunks"] == interrupt_at:
                raise Interrupted
            yield chunk

    monkeypatch.setattr(rnn_estimator, "chunk_losses", counting)
    monkeypatch.setattr(_Validation, "__call__", validating)
    return counter


def without_seconds(history):
    if history is None:
        return None
    return [{key: value for key, value in entry.items()
             if key not in ("seconds", "events_per_second")} for entry in history]


def assert_same_fit(model, reference, events):
    np.testing.assert_array_equal(model.score_samples(events),
                                  reference.score_samples(events))
    np.testing.assert_equal(without_seconds(model.history_),
                            without_seconds(reference.history_))
    np.testing.assert_equal(without_seconds(model.refit_history_),
                            without_seconds(reference.refit_history_))
    assert (model.best_epoch_, model.n_iter_) == (reference.best_epoch_,
                                                  reference.n_iter_)
    for name, tensor in reference.network_.state_dict().items():
        torch.testing.assert_close(model.network_.state_dict()[name], tensor,
                                   rtol=0, atol=0)
    torch.testing.assert_close(model.final_states_, reference.final_states_,
                               rtol=0, atol=0)


def read_checkpoint(directory):
    return _persistence.read(directory / FILENAME,
                             "CollaborativeGRURecommender checkpoint")


@pytest.fixture(scope="module")
def reference(events):
    """An uninterrupted fit, and how many chunks each of its phases trained."""
    with pytest.MonkeyPatch.context() as patch:
        counter = count_chunks(patch)
        CollaborativeGRURecommender(**{**PARAMS, "refit": False}).fit(events)
        phase1 = counter["chunks"]
        model = CollaborativeGRURecommender(**PARAMS).fit(events)
    assert model.n_iter_ < PARAMS["max_epochs"] and model.best_epoch_ >= 3
    refit = counter["chunks"] - 2 * phase1
    return model, {"phase1": phase1, "refit_epoch": refit // model.best_epoch_}


# ------------------------------------------------------------- resuming
@pytest.mark.parametrize("variant", [
    {}, {"optimizer": "adam", "recurrent_weights": "shared", "cell": "tanh"},
    {"optimizer": "adam", "max_train_chunks": 2}])
def test_interrupted_fit_resumes_to_the_same_model(events, tmp_path, monkeypatch,
                                                   variant):
    params = {**PARAMS, **variant, "checkpoint_dir": tmp_path}
    counter = count_chunks(monkeypatch)
    reference = CollaborativeGRURecommender(**params).fit(events)
    assert not (tmp_path / FILENAME).exists()  # a completed fit removes it
    n_chunks, per_epoch = counter["chunks"], counter["validated"][0]

    # in the middle of epoch 3
    counter = count_chunks(monkeypatch, interrupt_at=2 * per_epoch + per_epoch // 2)
    with pytest.raises(Interrupted):
        CollaborativeGRURecommender(**params).fit(events)
    saved = read_checkpoint(tmp_path)
    assert (saved["phase"], saved["training"]["epoch"]) == (1, 2)

    counter = count_chunks(monkeypatch)
    resumed = CollaborativeGRURecommender(**params).fit(events)
    assert counter["chunks"] == n_chunks - 2 * per_epoch  # epochs 1-2 skipped
    assert_same_fit(resumed, reference, events)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["first chunk of the refit", "epoch 3 of the refit"])
def test_fit_interrupted_in_the_refit_resumes(events, reference, tmp_path,
                                              monkeypatch, where):
    reference, chunks = reference
    interrupt_at = chunks["phase1"] + 1
    if where == "epoch 3 of the refit":
        interrupt_at += 2 * chunks["refit_epoch"]
    params = {**PARAMS, "checkpoint_dir": tmp_path}
    count_chunks(monkeypatch, interrupt_at=interrupt_at)
    with pytest.raises(Interrupted):
        CollaborativeGRURecommender(**params).fit(events)
    saved = read_checkpoint(tmp_path)
    training_state = saved["training"]
    if where == "first chunk of the refit":
        # phase 1's last checkpoint: early stopping had ended it
        assert (saved["phase"], training_state["epoch"]) == (1, reference.n_iter_)
        assert training_state["stopped"]
        assert training_state["best_epoch"] == reference.best_epoch_
        skipped = chunks["phase1"]
    else:
        assert (saved["phase"], training_state["epoch"]) == (2, 2)
        assert saved["first_best_epoch"] == reference.best_epoch_
        assert len(saved["first_history"]) == reference.n_iter_
        skipped = chunks["phase1"] + 2 * chunks["refit_epoch"]

    counter = count_chunks(monkeypatch)
    resumed = CollaborativeGRURecommender(**params).fit(events)
    assert counter["chunks"] == chunks["phase1"] + reference.best_epoch_ * chunks[
        "refit_epoch"] - skipped
    assert_same_fit(resumed, reference, events)


def test_fit_killed_after_training_resumes_from_its_last_checkpoint(
        events, reference, tmp_path, monkeypatch):
    """Killed after the last epoch, before the checkpoint was deleted: the next
    fit trains nothing and gives the same model."""
    reference, _ = reference

    def dies(self):
        raise Interrupted

    params = {**PARAMS, "checkpoint_dir": tmp_path}
    with monkeypatch.context() as patch:
        patch.setattr(Checkpoint, "remove", dies)
        with pytest.raises(Interrupted):
            CollaborativeGRURecommender(**params).fit(events)
    saved = read_checkpoint(tmp_path)
    assert (saved["phase"], saved["training"]["epoch"]) == (2, reference.best_epoch_)
    counter = count_chunks(monkeypatch)
    resumed = CollaborativeGRURecommender(**params).fit(events)
    assert counter["chunks"] == 0
    assert_same_fit(resumed, reference, events)
    assert not (tmp_path / FILENAME).exists()


def test_resumed_fit_reuses_the_seeds_of_the_checkpoint(events, tmp_path,
                                                        monkeypatch):
    """With random_state=None the seeds come from numpy's global generator;
    the resumed fit continues the interrupted one, not a new random run."""
    params = {**PARAMS, "random_state": None, "checkpoint_dir": tmp_path}
    np.random.seed(7)
    reference = CollaborativeGRURecommender(**params).fit(events)
    np.random.seed(7)
    with monkeypatch.context() as patch:
        count_chunks(patch, interrupt_at=30)
        with pytest.raises(Interrupted):
            CollaborativeGRURecommender(**params).fit(events)
    np.random.seed(8)
    resumed = CollaborativeGRURecommender(**params).fit(events)
    assert_same_fit(resumed, reference, events)


KILLED_SCRIPT = """
import sys
from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import make_sequences

events = make_sequences(**{events})
CollaborativeGRURecommender(**{params}, checkpoint_dir=sys.argv[1]).fit(events)
"""


def test_fit_killed_with_sigkill_resumes_to_the_same_model(events, tmp_path):
    # slow enough to be killed mid-run: many epochs, no early stopping
    params = {**TINY, "max_epochs": 25, "n_iter_no_change": 25,
              "validation_fraction": 0.25}
    script = tmp_path / "fit.py"
    script.write_text(KILLED_SCRIPT.format(events=EVENTS, params=params))
    directory = tmp_path / "checkpoints"
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(directory)], stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (directory / FILENAME).exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.005)
        time.sleep(0.05)  # a few epochs in, somewhere in an epoch or a write
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    saved = read_checkpoint(directory)
    assert saved["phase"] == 1 and 1 <= saved["training"]["epoch"] < 25

    resumed = CollaborativeGRURecommender(**params, checkpoint_dir=directory)
    resumed.fit(events)
    assert resumed.n_iter_ == 25
    assert_same_fit(resumed, CollaborativeGRURecommender(**params).fit(events), events)
    assert list(directory.iterdir()) == []  # neither checkpoint nor temporaries


def test_verbose_says_that_it_resumes(events, tmp_path, monkeypatch, capsys):
    params = {**PARAMS, "checkpoint_dir": tmp_path}
    with monkeypatch.context() as patch:
        count_chunks(patch, interrupt_at=30)
        with pytest.raises(Interrupted):
            CollaborativeGRURecommender(**params).fit(events)
    capsys.readouterr()
    CollaborativeGRURecommender(**params, verbose=1).fit(events)
    out = capsys.readouterr()
    assert f"resuming from checkpoint {tmp_path / FILENAME} after epoch" in (
        out.out + out.err)


# ------------------------------------------------------ refused checkpoints
@pytest.fixture
def interrupted(events, tmp_path, monkeypatch):
    """A checkpoint directory left by a fit of PARAMS interrupted in epoch 2."""
    with monkeypatch.context() as patch:
        count_chunks(patch, interrupt_at=30)
        with pytest.raises(Interrupted):
            CollaborativeGRURecommender(**PARAMS, checkpoint_dir=tmp_path).fit(events)
    assert (tmp_path / FILENAME).exists()
    return tmp_path


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 5}, "fit with hidden_size=4 in the checkpoint, 5 now."),
    ({"random_state": 1}, "random_state=0 in the checkpoint, 1 now"),
    ({"max_epochs": 9}, "max_epochs=8 in the checkpoint, 9 now"),
    ({"optimizer": "adam", "learning_rate": 0.01},
     "learning_rate=0.0075 in the checkpoint, 0.01 now; "
     "optimizer='rmsprop' in the checkpoint, 'adam' now"),
    ({"events": dict(EVENTS, random_state=1)}, "fit with other training data"),
    ({"events": dict(EVENTS, n_users=5)}, "n_users=6 in the checkpoint, 5 now"),
])
def test_checkpoint_of_another_fit_is_refused(interrupted, events, change, message):
    change = dict(change)
    data = make_sequences(**change.pop("events")) if "events" in change else events
    before = (interrupted / FILENAME).read_bytes()
    model = CollaborativeGRURecommender(**{**PARAMS, **change},
                                        checkpoint_dir=interrupted)
    with pytest.raises(ValueError, match="Cannot resume from checkpoint") as error:
        model.fit(data)
    assert message in str(error.value) and "Delete it" in str(error.value)
    assert (interrupted / FILENAME).read_bytes() == before  # left as it was


def test_relabelled_events_and_other_settings_resume(interrupted, events):
    """Only the codes reach training: renamed labels and columns, another
    verbosity or handle_unknown do not stop a resume."""
    renamed = events.rename(columns={"user": "who"}).assign(
        who=lambda frame: frame["who"].map("user{}".format))
    model = CollaborativeGRURecommender(
        **PARAMS, checkpoint_dir=str(interrupted), user_col="who",
        handle_unknown="error", verbose=0).fit(renamed)
    reference = CollaborativeGRURecommender(**PARAMS).fit(events)
    np.testing.assert_array_equal(model.score_samples(renamed),
                                  reference.score_samples(events))


def test_damaged_checkpoints_are_refused(interrupted, events, tmp_path):
    path = interrupted / FILENAME
    good = path.read_bytes()
    record = _persistence.read(path, "CollaborativeGRURecommender checkpoint")
    payload = {key: value for key, value in record.items()
               if key not in ("format", "format_version", "estimator", "checksum")}
    training_state = payload["training"]

    def rewritten(**changes):
        """The checkpoint with these changes, well-formed as a file."""
        _persistence.write(path, record["estimator"], {**payload, **changes})

    model = CollaborativeGRURecommender(**PARAMS, checkpoint_dir=interrupted)
    saved_model = tmp_path / "model.pt"
    CollaborativeGRURecommender(**TINY).fit(events).save(saved_model)
    damages = {
        "truncated": lambda: path.write_bytes(good[:len(good) // 2]),
        "garbage": lambda: path.write_bytes(b"\0" * 100),
        "a saved model": lambda: path.write_bytes(saved_model.read_bytes()),
        "no seeds": lambda: rewritten(seeds=None),
        "phase 3": lambda: rewritten(phase=3),
        "wrong weights": lambda: rewritten(training={
            **training_state, "network": {**training_state["network"],
                                          "output_bias": torch.zeros(3)}}),
        "history of other length": lambda: rewritten(
            training={**training_state, "history": []}),
        "odd rng state": lambda: rewritten(training={**training_state,
                                                     "rng": {"x": 1}}),
        "odd optimizer state": lambda: rewritten(training={
            **training_state, "optimizer": {"name": "adam", "state": {}}}),
    }
    for name, damage in damages.items():
        damage()
        with pytest.raises(ValueError, match="Cannot resume from checkpoint") as error:
            model.fit(events)
        assert "Delete it" in str(error.value), name
    path.write_bytes(good)
    model.fit(events)  # the undamaged one resumes


# ---------------------------------------------------------------- pieces
def test_checkpoint_file_needs_no_pickle_and_holds_the_run(interrupted):
    record = _persistence.read(interrupted / FILENAME,
                               "CollaborativeGRURecommender checkpoint")
    assert record["format"] == "skcrnn-model"
    assert record["estimator"] == "CollaborativeGRURecommender checkpoint"
    assert record["fingerprint"]["hidden_size"] == 4
    assert "verbose" not in record["fingerprint"]
    training_state = record["training"]
    assert training_state["epoch"] == len(training_state["history"]) == 1
    assert training_state["best_epoch"] == 1 and not training_state["stopped"]
    assert set(training_state["best_weights"]) == set(training_state["network"])
    assert training_state["rng"]["bit_generator"] == "PCG64"
    assert set(training_state["optimizer"]["state"]) == set(training_state["network"])


def test_checkpoint_dir_is_created_and_completed_fit_starts_afresh(events, tmp_path):
    directory = tmp_path / "deep" / "er"
    model = CollaborativeGRURecommender(**PARAMS, checkpoint_dir=directory)
    first = model.fit(events).score_samples(events)
    assert directory.is_dir() and list(directory.iterdir()) == []
    np.testing.assert_array_equal(model.fit(events).score_samples(events), first)
    assert model.get_params()["checkpoint_dir"] == directory


def test_checkpoint_dir_must_be_a_path(events):
    from sklearn.utils._param_validation import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        CollaborativeGRURecommender(**TINY, checkpoint_dir=3).fit(events)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_optimizer_state_round_trip(name):
    network = CollaborativeRNN(3, 5, 2, cell="gru", shared=False,
                               candidate="sigmoid")
    optimizer = Optimizer(network, name, 0.01, 0.9, 1e-8)
    for state in optimizer.state.values():
        for tensor in state.values():
            tensor.uniform_()
    state_dict = optimizer.state_dict()
    other = Optimizer(network, name, 0.01, 0.9, 1e-8)
    other.load_state_dict(state_dict)
    for param_name, state in optimizer.state.items():
        for key, tensor in state.items():
            torch.testing.assert_close(other.state[param_name][key], tensor,
                                       rtol=0, atol=0)
    for state in optimizer.state.values():  # a copy, not a view
        state["mean_square"].zero_()
    assert any(float(state["mean_square"].sum()) > 0
               for state in state_dict["state"].values())
    wrong = Optimizer(network, "adam" if name == "rmsprop" else "rmsprop",
                      0.01, 0.9, 1e-8)
    with pytest.raises(ValueError, match="optimizer state"):
        wrong.load_state_dict(state_dict)
    bigger = Optimizer(CollaborativeRNN(4, 5, 2, cell="gru", shared=False,
                                        candidate="sigmoid"), name, 0.01, 0.9, 1e-8)
    with pytest.raises(ValueError, match="shape"):
        bigger.load_state_dict(state_dict)


def test_random_events_fixture_also_resumes(tmp_path, monkeypatch):
    """String items and datetime ties (the shared fixture's frame)."""
    frame = random_events()
    params = {**TINY, "max_epochs": 4, "checkpoint_dir": tmp_path}
    reference = CollaborativeGRURecommender(**params).fit(frame)
    with monkeypatch.context() as patch:
        count_chunks(patch, interrupt_at=25)
        with pytest.raises(Interrupted):
            CollaborativeGRURecommender(**params).fit(frame)
    assert read_checkpoint(tmp_path)["training"]["epoch"] >= 1
    assert_same_fit(CollaborativeGRURecommender(**params).fit(frame), reference, frame)


@pytest.mark.parametrize("problem", ["a-file", "under-a-file", "read-only"])
def test_unusable_checkpoint_dir_is_refused_before_training(events, tmp_path, problem,
                                                            monkeypatch):
    """Named in a clear error at the start of fit, not at the first epoch's end."""
    import os
    import skcrnn._torch.loop as loop
    monkeypatch.setattr(loop, "_train_epoch", lambda *args: pytest.fail("trained"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    directory = {"a-file": blocker, "under-a-file": blocker / "sub",
                 "read-only": tmp_path / "locked" / "sub"}[problem]
    if problem == "read-only":
        (tmp_path / "locked").mkdir(mode=0o500)
        if os.access(tmp_path / "locked", os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
    error = PermissionError if problem == "read-only" else ValueError
    with pytest.raises(error, match="checkpoint_dir=.*" + directory.name):
        CollaborativeGRURecommender(**TINY, checkpoint_dir=directory).fit(events)


def test_lazy_rows_only_of_parameters_declared_row_indexed():
    """A step may update only some rows of a parameter the network declares so."""
    from skcrnn._torch.optim import Rows
    network = CollaborativeRNN(3, 5, 2, cell="gru", shared=True, candidate="tanh")
    network.reset_parameters(torch.Generator().manual_seed(0))
    assert "recurrent" not in network.row_indexed  # shared: one set for all
    optimizer = Optimizer(network, "rmsprop", 0.01, 0.9, 1e-8)
    rows = Rows()
    leaf = rows.read("recurrent", network.recurrent, torch.tensor([0]))
    leaf.sum().backward()
    with pytest.raises(ValueError, match=r"\['recurrent'\].*row-indexed"):
        optimizer.step(rows.touched)
    per_user = CollaborativeRNN(3, 5, 2, cell="gru", shared=False, candidate="tanh")
    per_user.reset_parameters(torch.Generator().manual_seed(0))
    before = per_user.recurrent.detach().clone()
    rows = Rows()
    rows.read("recurrent", per_user.recurrent, torch.tensor([2])).sum().backward()
    Optimizer(per_user, "rmsprop", 0.01, 0.9, 1e-8).step(rows.touched)
    changed = (per_user.recurrent.detach() != before).flatten(1).any(dim=1)
    assert changed.tolist() == [False, False, True]
