"""CollaborativeGRURecommender: what save/load and pickling add for tensors
on devices. The checks every estimator shares are in test_persistence.py."""

import pickle

import numpy as np
import pytest
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn import _persistence

from .conftest import TINY_RNN as TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split(small_split):
    return small_split


@pytest.fixture(scope="module")
def fitted(split):
    return CollaborativeGRURecommender(**TINY).fit(split[0])


def test_load_puts_the_network_on_the_requested_device(fitted, split, tmp_path):
    fitted.save(tmp_path / "model.pt")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.pt", device="cpu")
    assert loaded.device_ == "cpu"
    assert loaded.network_.item_input.device.type == "cpu"
    assert loaded.final_states_.device.type == "cpu"
    assert not any(p.requires_grad for p in loaded.network_.parameters())
    np.testing.assert_array_equal(loaded.score_samples(split[1]),
                                  fitted.score_samples(split[1]))


@pytest.mark.parametrize("device, message", [
    ("tpu", "device='tpu' is not"), ("gpu7", "device='gpu7' is not a device name"),
    ("cuda:7", "device='cuda:7' but")])
def test_bad_device_is_the_callers_error_not_a_damaged_file(fitted, tmp_path,
                                                             device, message):
    fitted.save(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=message) as error:
        CollaborativeGRURecommender.load(tmp_path / "model.pt", device=device)
    assert "damaged" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_model_file_loads_on_cpu_only_machine(fitted, split, tmp_path):
    """A file of a model trained with device='cuda' (its tensors are saved on
    the CPU) loads on the CPU here, without a device argument."""
    fitted.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    _persistence.write(tmp_path / "gpu.pt", record["estimator"], {
        **{k: v for k, v in record.items() if k not in (
            "format", "format_version", "estimator", "checksum")},
        "params": {**record["params"], "device": "cuda"}})
    loaded = CollaborativeGRURecommender.load(tmp_path / "gpu.pt")
    assert loaded.device == "cuda" and loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.score_samples(split[1]),
                                  fitted.score_samples(split[1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_round_trip(split, tmp_path):
    model = CollaborativeGRURecommender(**{**TINY, "device": "cuda"}).fit(split[0])
    model.save(tmp_path / "model.pt")
    on_gpu = CollaborativeGRURecommender.load(tmp_path / "model.pt")
    assert on_gpu.device_.startswith("cuda")
    np.testing.assert_array_equal(on_gpu.score_samples(split[1]),
                                  model.score_samples(split[1]))
    on_cpu = CollaborativeGRURecommender.load(tmp_path / "model.pt", device="cpu")
    np.testing.assert_allclose(on_cpu.score_samples(split[1]),
                               model.score_samples(split[1]), rtol=1e-10)


def test_missing_network_is_a_damaged_file(fitted, tmp_path):
    fitted.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    _persistence.write(tmp_path / "damaged.pt", record["estimator"], {
        k: v for k, v in record.items() if k not in (
            "format", "format_version", "estimator", "checksum", "network_state")})
    with pytest.raises(ValueError, match="damaged skcrnn model file: KeyError: "
                                         "'network_state'"):
        CollaborativeGRURecommender.load(tmp_path / "damaged.pt")


def test_weights_of_another_size_are_a_damaged_file(fitted, tmp_path):
    fitted.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    state = dict(record["network_state"])
    state["item_input"] = torch.zeros(state["item_input"].shape[0] + 1,
                                      state["item_input"].shape[1])
    _persistence.write(tmp_path / "damaged.pt", record["estimator"], {
        **{k: v for k, v in record.items() if k not in (
            "format", "format_version", "estimator", "checksum")},
        "network_state": state})
    with pytest.raises(ValueError, match="damaged skcrnn model file: RuntimeError"):
        CollaborativeGRURecommender.load(tmp_path / "damaged.pt")


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


def test_checkpoint_dir_path_is_saved_as_a_string(split, tmp_path):
    directory = tmp_path / "checkpoints"
    model = CollaborativeGRURecommender(**TINY, checkpoint_dir=directory)
    model.fit(split[0]).save(tmp_path / "model.pt")
    loaded = CollaborativeGRURecommender.load(tmp_path / "model.pt")
    assert loaded.checkpoint_dir == str(directory)


def test_a_pickle_from_before_replay_and_repeat_bias_scores_and_learns(fitted, split):
    """A state pickled before ``replay_epochs`` and ``repeat_bias`` existed
    gets their defaults: the same scores, and partial_fit still runs."""
    state = dict(fitted.__getstate__())
    del state["replay_epochs"], state["repeat_bias"]
    del state["_skcrnn_version"]  # pickled before 0.2.0: no version stamp
    restored = CollaborativeGRURecommender.__new__(CollaborativeGRURecommender)
    restored.__setstate__(state)
    assert (restored.replay_epochs, restored.repeat_bias) == (0, 0.0)
    np.testing.assert_array_equal(restored.score_samples(split[1]),
                                  fitted.score_samples(split[1]))
    restored.partial_fit(split[1])
