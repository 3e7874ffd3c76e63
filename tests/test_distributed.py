"""Multi-process training (``fit_distributed``, ``torchrun``) on gloo, on this machine.

The processes are started by the tests themselves with the environment
``torchrun`` gives its workers (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), so that a test controls what each rank does; one test goes
through ``torchrun`` and the ``fit`` command, the documented entry point.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._torch.cluster import Cluster, shard_users
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import suffix_split

from .distributed_worker import events

WORKER = Path(__file__).with_name("distributed_worker.py")
SETTINGS = dict(hidden_size=4, max_epochs=3, batch_size=4, chunk_size=5,
                learning_rate=0.05, validation_fraction=0.2, device="cpu",
                random_state=0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(tmp_path, scenario, params, world_size=2):
    """Start ``world_size`` worker processes; their exit codes and error files."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path), scenario, json.dumps(params)],
        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank in range(world_size)]
    codes, outputs = [], []
    for process in processes:
        output, _ = process.communicate(timeout=120)
        codes.append(process.returncode)
        outputs.append(output.decode(errors="replace"))
    errors = {rank: (tmp_path / f"rank{rank}.error").read_text()
              for rank in range(world_size)
              if (tmp_path / f"rank{rank}.error").exists()}
    return codes, errors, outputs


def test_users_are_balanced_by_event_count():
    lengths = np.array([50, 10, 40, 30, 20, 25, 5])
    owner = shard_users(lengths, 3)
    loads = np.bincount(owner, weights=lengths, minlength=3)
    assert loads.max() - loads.min() <= lengths.min() + 5
    assert sorted(np.unique(owner)) == [0, 1, 2]
    np.testing.assert_array_equal(owner, shard_users(lengths, 3))  # same on every rank


def test_more_processes_than_users_is_refused_before_training():
    with pytest.raises(ValueError, match="3 processes but only 2 user"):
        Cluster(0, 3).shard(np.array([5, 7]))


@pytest.mark.parametrize("params", [
    {},
    {"copy_history": True, "optimizer": "adam"},
    {"recurrent_weights": "shared"},
    {"recurrent_weights": "low_rank", "rank": 2},
    {"recurrent_weights": "basis", "rank": 3},
    {"loss": "sampled", "n_negatives": 6},
], ids=["C-GRU", "copy-adam", "P-GRU", "low-rank", "basis", "sampled"])
def test_two_processes_give_the_parameters_of_one(tmp_path, params):
    settings = {**SETTINGS, **params}
    codes, errors, outputs = run_ranks(tmp_path, "fit", settings)
    assert codes == [0, 0], (errors, outputs)
    distributed = CollaborativeGRURecommender.load(tmp_path / "model.skcrnn")
    single = CollaborativeGRURecommender(**settings).fit(events())
    assert distributed.best_epoch_ == single.best_epoch_
    # basis coefficients grow to ~1.6 at this learning rate; the directions'
    # gradient, summed over two ranks in another order, rounds to 2e-5 there
    tolerance = 5e-5 if params.get("recurrent_weights") == "basis" else 1e-5
    for name, tensor in single.network_.state_dict().items():
        torch.testing.assert_close(distributed.network_.state_dict()[name], tensor,
                                   rtol=tolerance, atol=tolerance, msg=name)
    for name, state in single.optimizer_state_["state"].items():
        for key, tensor in state.items():
            torch.testing.assert_close(
                distributed.optimizer_state_["state"][name][key], tensor,
                rtol=1e-4, atol=1e-6, msg=f"{name} {key}")
    np.testing.assert_allclose(
        [entry["valid_loss"] for entry in distributed.history_],
        [entry["valid_loss"] for entry in single.history_], rtol=1e-5)
    _, test = suffix_split(events(), 0.1, 1, 10)
    assert distributed.score(test) == pytest.approx(single.score(test), abs=1e-4)


def test_processes_with_different_events_fail_before_training(tmp_path):
    codes, errors, _ = run_ranks(tmp_path, "mismatch", SETTINGS)
    assert codes == [1, 1]
    for message in errors.values():
        assert "do not have the same events and parameters" in message
        assert "rank(s) [1] differ from rank 0" in message
    assert not (tmp_path / "model.skcrnn").exists()


def test_more_processes_than_users_fail_clearly(tmp_path):
    codes, errors, _ = run_ranks(tmp_path, "few-users", SETTINGS, world_size=3)
    assert codes == [1, 1, 1]
    assert all("3 processes but only 2 user(s)" in message
               for message in errors.values())


def test_a_dying_process_makes_the_others_fail_instead_of_hanging(tmp_path):
    codes, errors, outputs = run_ranks(tmp_path, "dies", SETTINGS)
    assert codes[1] == 3
    assert codes[0] == 1, outputs[0]
    assert "rank 0 of 2" in errors[0]
    assert "another process probably died" in errors[0]


def test_torchrun_and_the_fit_command(tmp_path):
    output = tmp_path / "model.skcrnn"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node=2", "-m", "skcrnn", "fit", "--generated", "8", "12", "400",
         "--set", "hidden_size=3", "--set", "max_epochs=2", "--set", "device='cpu'",
         "--set", "random_state=0", "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "saved CollaborativeGRURecommender (8 users, 12 items)" in result.stdout
    model = CollaborativeGRURecommender.load(output)
    assert model.network_.recurrent.shape[0] == 8
    trained_on = make_sequences(n_users=8, n_items=12, n_events=400, random_state=0)
    assert np.isfinite(model.score(trained_on))


def test_fit_distributed_outside_torchrun_is_refused(monkeypatch):
    import skcrnn
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    model = CollaborativeGRURecommender(**SETTINGS)
    with pytest.raises(ValueError, match="Not started by torchrun"):
        skcrnn.fit_distributed(model, events())
    assert not hasattr(model, "network_")
