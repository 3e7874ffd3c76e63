"""CollaborativeGRURecommender: save/load, pickling, and the persistence helpers."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._events import Sequences
from skcrnn._persistence import (labels_from_plain, labels_to_plain,
                                 sequences_from_tensors, sequences_to_tensors)

from .conftest import TINY_RNN as TINY, random_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split():
    from skcrnn.model_selection import suffix_split
    return suffix_split(random_events(n_users=6, n_events=150, ties=False, seed=3),
                        0.2, 2, 50)


@pytest.fixture(scope="module")
def fitted(split):
    return CollaborativeGRURecommender(**TINY).fit(split[0])


@pytest.mark.parametrize("labels", [
    np.array([3, 1, 7], dtype=np.int32), np.array([0.5, 2.0]),
    np.array([True, False]), np.array(["a", "bc"]),
    np.array(["x", "yz"], dtype=object), np.array([1, "a", 2.5], dtype=object),
    np.array([np.int64(4), "b"], dtype=object)])
def test_labels_round_trip(labels):
    rebuilt = labels_from_plain(labels_to_plain(labels))
    assert rebuilt.dtype == labels.dtype
    assert list(rebuilt) == list(labels)
    assert pd.Index(rebuilt).get_indexer(labels).tolist() == list(range(len(labels)))


def test_unsavable_labels():
    from decimal import Decimal
    with pytest.raises(ValueError, match="Decimal"):
        labels_to_plain(np.array([Decimal(1)], dtype=object))


def test_sequences_round_trip():
    sequences = Sequences(np.array([0, -1]), np.array([0, 2, 3]), np.array([4, 5, 6]))
    rebuilt = sequences_from_tensors(sequences_to_tensors(sequences))
    for name in ("user_codes", "indptr", "items"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(sequences, name))


def test_save_load_round_trip(fitted, split, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = CollaborativeGRURecommender.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.classes_.dtype == fitted.classes_.dtype
    assert list(loaded.classes_) == list(fitted.classes_)
    assert loaded.users_.dtype == fitted.users_.dtype
    np.testing.assert_array_equal(loaded.score_samples(split[1]),
                                  fitted.score_samples(split[1]))
    pd.testing.assert_frame_equal(loaded.recommend(fitted.users_[:2], k=3),
                                  fitted.recommend(fitted.users_[:2], k=3))
    assert loaded.history_ == fitted.history_
    assert loaded.best_epoch_ == fitted.best_epoch_
    record = torch.load(path, weights_only=True)
    assert record["format"] == "skcrnn-model" and record["format_version"] == 1


def test_load_rejects_foreign_and_damaged_files(fitted, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps(fitted))
    for path in (garbage, foreign, pickled):
        with pytest.raises(ValueError, match="not a skcrnn model file"):
            CollaborativeGRURecommender.load(path)
    good = tmp_path / "good.pt"
    fitted.save(good)
    record = torch.load(good, weights_only=True)
    newer = tmp_path / "newer.pt"
    torch.save({**record, "format_version": 99}, newer)
    with pytest.raises(ValueError, match="format version 99"):
        CollaborativeGRURecommender.load(newer)
    other = tmp_path / "other.pt"
    torch.save({**record, "estimator": "HMMRecommender"}, other)
    with pytest.raises(ValueError, match="HMMRecommender"):
        CollaborativeGRURecommender.load(other)
    damaged = tmp_path / "damaged.pt"
    torch.save({k: v for k, v in record.items() if k != "network_state"}, damaged)
    with pytest.raises(ValueError, match="damaged"):
        CollaborativeGRURecommender.load(damaged)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a skcrnn model file"):
        CollaborativeGRURecommender.load(truncated)


def test_save_before_fit_raises(tmp_path):
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        CollaborativeGRURecommender().save(tmp_path / "model.pt")


def test_random_state_instance_is_saved_as_none(split, tmp_path):
    model = CollaborativeGRURecommender(**{**TINY, "random_state":
                                           np.random.RandomState(0)}).fit(split[0])
    model.save(tmp_path / "model.pt")
    assert CollaborativeGRURecommender.load(tmp_path / "model.pt").random_state is None


def test_pickle_keeps_scores_and_moves_tensors_to_cpu(fitted, split):
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.score_samples(split[1]),
                                  fitted.score_samples(split[1]))
    assert restored.device_ == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_pickle_unpickles_on_cpu_only_machine(fitted, split):
    """A state written on a CUDA machine (tensors already on the CPU, device_
    'cuda:0') comes back on the CPU here."""
    state = fitted.__getstate__()
    state = {**state, "device_": "cuda:0"}
    restored = CollaborativeGRURecommender.__new__(CollaborativeGRURecommender)
    restored.__setstate__(state)
    assert restored.device_ == "cpu"
    np.testing.assert_array_equal(restored.score_samples(split[1]),
                                  fitted.score_samples(split[1]))
