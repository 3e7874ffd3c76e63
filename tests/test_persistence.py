"""save/load of every estimator, and the persistence helpers.

A saved file must hold only JSON and ``.npy`` arrays that load without
pickle (test_persistence_format.py checks the format itself), and the loaded
model must be the fitted one attribute for attribute; a file that is not
right gives a ``ValueError`` that names the problem, never a model with
wrong weights.
"""

import copy
import json
import pickle
import struct
import warnings
import zipfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skcrnn import BigramRecommender, UniformRecommender, UnigramRecommender
from skcrnn import _persistence
from skcrnn._events import Sequences
from skcrnn._persistence import (FORMAT_VERSION, checksum, from_saved,
                                 labels_from_plain, labels_to_plain, plain_params,
                                 sequences_from_tensors, sequences_to_tensors,
                                 to_saved)

from .conftest import random_events
from .estimators import ALL_ESTIMATORS, ids

_STAMP = ("format", "format_version", "estimator", "checksum")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split(small_split):
    return small_split


@pytest.fixture(scope="module")
def probe(split):
    """The test rows plus a row of an unknown item and one of an unknown user."""
    test = split[1]
    odd = pd.DataFrame({"user": [test["user"].iloc[0], -1],
                        "item": ["never seen", test["item"].iloc[0]],
                        "timestamp": test["timestamp"].max() + pd.Timedelta("1h")})
    return pd.concat([test, odd], ignore_index=True)


@pytest.fixture(scope="module", params=ALL_ESTIMATORS, ids=ids)
def fitted(request, split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clone(request.param).fit(split[0])


@pytest.fixture
def saved(fitted, tmp_path):
    """Path of ``fitted`` saved, and the record in it."""
    path = tmp_path / "model.pt"
    fitted.save(path)
    return path, _persistence.read(path, type(fitted).__name__)


def quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


# ------------------------------------------------------------- round trip
def test_loaded_model_answers_alike(fitted, saved, probe):
    loaded = type(fitted).load(saved[0])
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    scores = quiet(loaded.score_samples, probe)
    assert np.isnan(scores).sum() == 1  # the unknown item's row
    np.testing.assert_array_equal(scores, quiet(fitted.score_samples, probe))
    assert quiet(loaded.score, probe) == quiet(fitted.score, probe)
    known = probe[probe["item"] != "never seen"]
    np.testing.assert_array_equal(quiet(loaded.predict_proba, known),
                                  quiet(fitted.predict_proba, known))
    np.testing.assert_array_equal(quiet(loaded.predict, known),
                                  quiet(fitted.predict, known))
    users = [*fitted.users_[:3], "stranger"]
    for exclude_seen in (False, True):
        pd.testing.assert_frame_equal(
            quiet(loaded.recommend, users, k=4, exclude_seen=exclude_seen),
            quiet(fitted.recommend, users, k=4, exclude_seen=exclude_seen))


def test_loaded_model_has_every_fitted_attribute(fitted, saved):
    loaded = type(fitted).load(saved[0])
    assert sorted(vars(loaded)) == sorted(vars(fitted))
    for name, value in vars(fitted).items():
        assert_same(getattr(loaded, name), value, name)


def test_handle_unknown_survives(fitted, tmp_path, probe):
    model = copy.deepcopy(fitted).set_params(handle_unknown="error")
    model.save(tmp_path / "model.pt")
    loaded = type(model).load(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="unknown to the model"):
        loaded.score_samples(probe)


def test_file_needs_no_pickle(fitted, saved):
    path, record = saved
    assert record["format"] == "skcrnn-model"
    assert record["format_version"] == FORMAT_VERSION
    assert record["estimator"] == type(fitted).__name__
    assert record["checksum"] == checksum(record)
    for value in _leaves(record):
        assert isinstance(value, (torch.Tensor, np.ndarray, str, int, float,
                                  type(None))), value
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu"
    with zipfile.ZipFile(path) as archive:  # JSON, and arrays without objects
        names = archive.namelist()
        assert names[0] == "record.json"
        document = json.loads(archive.read("record.json"))
        assert document["checksum"] == record["checksum"]
        for name in names[1:]:
            assert name.startswith("arrays/") and name.endswith(".npy"), name
            with archive.open(name) as member:
                np.lib.format.read_array(member, allow_pickle=False)


def test_arrays_keep_their_dtypes(fitted, saved):
    for name in getattr(type(fitted), "_saved_attributes", {}):
        value = getattr(fitted, name)
        if isinstance(value, np.ndarray):
            assert type(saved[1][name]) is np.ndarray, name
            assert saved[1][name].dtype == value.dtype, name


def _as_torch_record(value):
    """A record as format versions 1 and 2 held it: arrays as CPU tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return {key: _as_torch_record(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_torch_record(item) for item in value]
    return value


def test_version_1_files_without_checksum_still_load(fitted, saved, probe, tmp_path):
    old = tmp_path / "old.pt"
    torch.save(_as_torch_record({**{k: v for k, v in saved[1].items()
                                    if k != "checksum"}, "format_version": 1}), old)
    np.testing.assert_array_equal(
        quiet(type(fitted).load(old).score_samples, probe),
        quiet(fitted.score_samples, probe))


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_save_before_fit_raises(estimator, tmp_path):
    with pytest.raises(NotFittedError):
        clone(estimator).save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("estimator", list({
    type(e): e for e in ALL_ESTIMATORS if "random_state" in e.get_params()}.values()),
    ids=ids)
def test_random_state_instance_is_saved_as_none(estimator, split, tmp_path):
    model = quiet(clone(estimator).set_params(
        random_state=np.random.RandomState(0)).fit, split[0])
    model.save(tmp_path / "model.pt")
    assert type(model).load(tmp_path / "model.pt").random_state is None


# ------------------------------------------------------------------ labels
def _relabel(events, users, items):
    return events.assign(user=events["user"].map(users), item=events["item"].map(items))


@pytest.mark.parametrize("users, items", [
    (lambda u: u, lambda i: i),  # int users, str items
    (lambda u: f"user {u}", lambda i: int(i[1:]) * 2 ** 40 - 3),
    (lambda u: -u, lambda i: float(i[1:]) / 4),
    (lambda u: f"ü{u}", lambda i: f"{i} \n ✓"),
    (lambda u: 2 ** 62 + u, lambda i: i),
], ids=["int-str", "str-int", "int-float", "unicode", "huge-int"])
def test_labels_round_trip(users, items, tmp_path):
    events = _relabel(random_events(), users, items)
    model = BigramRecommender().fit(events)
    model.save(tmp_path / "model.pt")
    loaded = BigramRecommender.load(tmp_path / "model.pt")
    for name in ("classes_", "users_"):
        assert_same(getattr(loaded, name), getattr(model, name), name)
    np.testing.assert_array_equal(loaded.score_samples(events),
                                  model.score_samples(events))
    users_ = events["user"].unique()[:2]
    pd.testing.assert_frame_equal(loaded.recommend(users_, k=3),
                                  model.recommend(users_, k=3))


def test_unsavable_labels_are_refused_before_writing(tmp_path):
    events = random_events().assign(item=lambda frame: frame["item"].map(
        lambda item: Decimal(item[1:])))
    model = UnigramRecommender().fit(events)
    with pytest.raises(ValueError, match="Labels of type Decimal"):
        model.save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


# ----------------------------------------------------------- bad files
def _flip_in_member(path, part):
    """Flip a byte in the middle of the largest member of the zip at ``path``
    whose name has ``part`` (the zip's CRC-32 of it left as it was)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((entry for entry in archive.infolist()
                    if part in entry.filename), key=lambda entry: entry.file_size)
    # a local header is 30 bytes, then the name, then the extra field
    name_length, extra_length = struct.unpack(
        "<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_inside_an_array(path):
    """Flip a byte in the middle of the file's largest array."""
    _flip_in_member(path, ".npy")


def _rewrite_member(path, name, data):
    """Replace a member of the zip at ``path`` by ``data`` (its CRC-32
    updated, as a zip tool would)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, content in members:
            archive.writestr(info, data if info.filename == name else content)


def _edit_document(path, **changes):
    """Change entries of the file's JSON document, its checksum left as it was."""
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read("record.json"))
    _rewrite_member(path, "record.json", json.dumps({**document, **changes}))


_DROP = object()


def _rewrite(path, record, **changes):
    """Write ``record`` with ``changes`` (``_DROP`` removes an entry) through
    the package's own writer, so that the checksum matches the damage."""
    payload = {k: v for k, v in {**record, **changes}.items()
               if k not in _STAMP and v is not _DROP}
    _persistence.write(path, record["estimator"], payload)


def _with_label(plain, position, value):
    values = list(plain["values"])
    values[position:position + 1] = [value]
    return {**plain, "values": values}


DAMAGES = {
    "plain-text": (lambda path, record, model: path.write_text("not a model\n"),
                   "is not a skcrnn model file"),
    "empty": (lambda path, record, model: path.write_bytes(b""),
              "is not a skcrnn model file"),
    "truncated": (lambda path, record, model: path.write_bytes(
        path.read_bytes()[:len(path.read_bytes()) // 2]), "damaged or truncated"),
    "truncated-tail": (lambda path, record, model: path.write_bytes(
        path.read_bytes()[:-10]), "damaged or truncated"),
    "flipped-byte": (lambda path, record, model: _flip_inside_an_array(path),
                     "is damaged: its content does not match its checksum"),
    "edited-without-checksum": (lambda path, record, model: _edit_document(
        path, estimator="SomeOtherRecommender"), "does not match its checksum"),
    "edited-without-checksum-v2": (lambda path, record, model: torch.save(
        _as_torch_record({**record, "format_version": 2,
                          "estimator": "SomeOtherRecommender"}), path),
        "does not match its checksum"),
    "foreign-torch-file": (lambda path, record, model: torch.save(
        {"weights": torch.zeros(3)}, path), "has no 'skcrnn-model' stamp"),
    "pickled-model": (lambda path, record, model: path.write_bytes(
        pickle.dumps(model)), "is not a skcrnn model file"),
    "torch-saved-model": (lambda path, record, model: torch.save(model, path),
                          "is not a skcrnn model file"),
    "newer-version": (lambda path, record, model: _edit_document(
        path, format_version=FORMAT_VERSION + 1),
        f"format version {FORMAT_VERSION + 1}; .* Upgrade skcrnn"),
    "newer-version-torch": (lambda path, record, model: torch.save(
        _as_torch_record({**record, "format_version": FORMAT_VERSION + 1}), path),
        f"format version {FORMAT_VERSION + 1}; .* Upgrade skcrnn"),
    "version-not-a-number": (lambda path, record, model: _edit_document(
        path, format_version="2"), "format version is '2'"),
    "version-not-a-number-torch": (lambda path, record, model: torch.save(
        _as_torch_record({**record, "format_version": "2"}), path),
        "format version is '2'"),
    "missing-entry": (lambda path, record, model: _rewrite(
        path, record, fit_sequences=_DROP),
        "damaged skcrnn model file: KeyError: 'fit_sequences'"),
    "user-added": (lambda path, record, model: _rewrite(
        path, record, users=_with_label(record["users"], 99, 10 ** 6)),
        "damaged skcrnn model file: .*histories do not match the 7 users"),
    "repeated-item": (lambda path, record, model: _rewrite(
        path, record, classes=_with_label(record["classes"], 1,
                                          record["classes"]["values"][0])),
        "damaged skcrnn model file: .*classes_ has repeated labels"),
    "invalid-parameter": (lambda path, record, model: _rewrite(
        path, record, params={**record["params"], "handle_unknown": "maybe"}),
        "damaged skcrnn model file: .*'handle_unknown' parameter"),
    "unknown-parameter": (lambda path, record, model: _rewrite(
        path, record, params={**record["params"], "colour": "blue"}),
        "damaged skcrnn model file: TypeError: .*'colour'"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_bad_files_are_refused_clearly(fitted, saved, damage):
    path, record = saved
    make, message = DAMAGES[damage]
    make(path, record, fitted)
    with pytest.raises(ValueError, match=message) as error:
        type(fitted).load(path)
    assert str(path) in str(error.value)


def test_file_of_another_estimator_is_refused(fitted, split, tmp_path):
    other = UniformRecommender if not isinstance(fitted, UniformRecommender) \
        else UnigramRecommender
    other().fit(split[0]).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=f"holds a '{other.__name__}', not a "
                                         f"'{type(fitted).__name__}'"):
        type(fitted).load(tmp_path / "other.pt")


def test_arrays_of_the_wrong_shape_are_damage(fitted, saved):
    path, record = saved
    entry = next((k for k, v in record.items() if k not in _STAMP
                  and isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim), None)
    if entry is None:  # only the uniform model has no fitted array of its own
        assert isinstance(fitted, UniformRecommender), type(fitted).__name__
        return
    if isinstance(record[entry], torch.Tensor):
        longer = torch.cat([record[entry], record[entry][:1]])
    else:
        longer = np.concatenate([record[entry], record[entry][:1]])
    _rewrite(path, record, **{entry: longer})
    with pytest.raises(ValueError, match=r"damaged skcrnn model file: .*"
                                         r"(has shape|do not match)"):
        type(fitted).load(path)


def test_sparse_matrix_of_the_wrong_shape_is_damage(split, tmp_path):
    path = tmp_path / "model.pt"
    BigramRecommender().fit(split[0]).save(path)
    record = _persistence.read(path, "BigramRecommender")
    counts = record["transition_counts_"]
    _rewrite(path, record, transition_counts_={
        **counts, "csr_shape": [counts["csr_shape"][0] + 1, counts["csr_shape"][1]]})
    with pytest.raises(ValueError, match=r"transition_counts_ has shape \(9, 8\); "
                                         r"expected \(n_items, n_items\)"):
        BigramRecommender.load(path)


def test_fuzzed_files_fail_loudly_or_load_alike(fitted, saved, probe):
    """Whatever bytes are hit, loading never gives a model that differs."""
    path, _ = saved
    good = path.read_bytes()
    expected = quiet(fitted.score_samples, probe)
    rng = np.random.default_rng(0)
    refused = 0
    for position in rng.choice(len(good), size=30, replace=False):
        damaged = bytearray(good)
        damaged[position] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            loaded = type(fitted).load(path)
        except ValueError:
            refused += 1
            continue
        np.testing.assert_array_equal(quiet(loaded.score_samples, probe), expected)
    for length in rng.choice(len(good), size=5, replace=False):
        path.write_bytes(good[:length])
        with pytest.raises(ValueError):
            type(fitted).load(path)
    assert refused > 0


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        UnigramRecommender.load(tmp_path / "nothing.pt")


# ------------------------------------------------------------------ helpers
@pytest.mark.parametrize("labels", [
    np.array([3, 1, 7], dtype=np.int32), np.array([0.5, 2.0]),
    np.array([True, False]), np.array(["a", "bc"]),
    np.array(["x", "yz"], dtype=object), np.array([1, "a", 2.5], dtype=object),
    np.array([np.int64(4), "b"], dtype=object)])
def test_plain_labels_round_trip(labels):
    rebuilt = labels_from_plain(labels_to_plain(labels))
    assert rebuilt.dtype == labels.dtype
    assert list(rebuilt) == list(labels)
    if labels.dtype == object:  # numpy scalars come back as Python ones
        assert [type(v) for v in rebuilt] == [type(getattr(v, "item", lambda: v)())
                                              for v in labels]
    assert pd.Index(rebuilt).get_indexer(labels).tolist() == list(range(len(labels)))


def test_unsavable_labels():
    with pytest.raises(ValueError, match="Decimal"):
        labels_to_plain(np.array([Decimal(1)], dtype=object))


def test_sequences_round_trip():
    sequences = Sequences(np.array([0, -1]), np.array([0, 2, 3]), np.array([4, 5, 6]))
    rebuilt = sequences_from_tensors(sequences_to_tensors(sequences))
    for name in ("user_codes", "indptr", "items"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(sequences, name))


def test_plain_params():
    params = plain_params({"a": np.float32(0.5), "b": np.int64(3), "c": None,
                           "d": Path("some/dir"), "random_state": np.random
                           .RandomState(0), "e": "x"})
    assert params == {"a": 0.5, "b": 3, "c": None, "d": "some/dir",
                      "random_state": None, "e": "x"}
    assert type(params["b"]) is int
    with pytest.raises(ValueError, match="Parameter f=.* cannot be saved"):
        plain_params({"f": object()})


@pytest.mark.parametrize("value, spec", [
    (np.arange(6, dtype=np.float32).reshape(2, 3), ("rows", "n_items")),
    (np.array([1, 2], dtype=np.int32), ("rows",)),
    (np.array([True, False]), ("rows",)),
    (sp.csr_matrix(np.array([[0, 2.0, 0], [1.0, 0, 0]])), ("rows", "n_items")),
    (np.float64(2.5), float), (3, int), (float("nan"), float), ("x", str),
])
def test_saved_values_round_trip(value, spec):
    rebuilt = from_saved(to_saved(value), spec, {"n_items": 3}, "value")
    assert_same(rebuilt, value.item() if isinstance(value, np.generic) else value,
                "value")


def test_from_saved_names_what_does_not_fit():
    sizes = {"n_items": 3}
    with pytest.raises(ValueError, match=r"w has shape \(4,\); expected \(n_items\)"):
        from_saved(to_saved(np.zeros(4)), ("n_items",), sizes, "w")
    from_saved(to_saved(np.zeros((2, 3))), ("k", "n_items"), sizes, "a")
    with pytest.raises(ValueError, match=r"b has shape \(5, 3\); expected \(k, "):
        from_saved(to_saved(np.zeros((5, 3))), ("k", "n_items"), sizes, "b")
    with pytest.raises(ValueError, match="c is of type int, expected float"):
        from_saved(3, float, sizes, "c")
    with pytest.raises(ValueError, match="d is of type list, expected a tensor"):
        from_saved([1.0], ("n_items",), sizes, "d")
    with pytest.raises(ValueError, match="cannot be saved"):
        to_saved(np.array([object()]))


def test_checksum_sees_every_value():
    record = {"a": torch.arange(4.0), "b": [1, 2.5, "x", None, True],
              "c": {"d": torch.zeros(2, dtype=torch.int32)}}
    digest = checksum(record)
    assert checksum({**record, "checksum": "anything"}) == digest
    assert checksum({**record, "b": [1, 2.5, "x", None, True]}) == digest
    for changed in ({**record, "a": torch.tensor([0.0, 1, 2, 3.5])},
                    {**record, "a": torch.arange(4.0).reshape(2, 2)},
                    {**record, "a": torch.arange(4, dtype=torch.float64)},
                    {**record, "b": [1, 2.5, "x", None, 1]},
                    {**record, "b": [1, 2.5, "y", None, True]},
                    {**record, "c": {"d": torch.zeros(2, dtype=torch.int64)}},
                    {"b": record["b"], "a": record["a"], "c": record["c"]}):
        assert checksum(changed) != digest


def test_checksum_tells_arrays_from_tensors():
    digest = checksum({"a": np.arange(4.0)})
    assert checksum({"a": np.arange(4.0)}) == digest
    for changed in (np.arange(4.0) + [0, 0, 0, 0.5], np.arange(4.0).reshape(2, 2),
                    np.arange(4, dtype=np.float32), np.arange(4.0).astype(">f8"),
                    torch.arange(4.0, dtype=torch.float64)):
        assert checksum({"a": changed}) != digest


# ----------------------------------------------------------------- compare
def _leaves(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def assert_same(got, want, name):
    """``got`` is ``want``: same type, dtype, shape, device and values
    (NaN where ``want`` has NaN)."""
    assert type(got) is type(want), name
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        if want.dtype == object:
            assert [type(v) for v in got] == [type(v) for v in want], name
    elif sp.issparse(want):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        assert (got != want).nnz == 0, name
    elif isinstance(want, torch.Tensor):
        assert (got.dtype, got.device) == (want.dtype, want.device), name
        assert torch.equal(got, want), name
    elif isinstance(want, torch.nn.Module):
        assert got.config == want.config, name
        assert_same(dict(got.state_dict()), dict(want.state_dict()), name)
        assert [p.requires_grad for p in got.parameters()] == [
            p.requires_grad for p in want.parameters()], name
    elif isinstance(want, Sequences):
        for part in ("user_codes", "indptr", "items"):
            assert_same(getattr(got, part), getattr(want, part), f"{name}.{part}")
    elif hasattr(want, "emissionprob_"):  # the hmmlearn model
        params = {k: v for k, v in want.get_params().items() if k != "random_state"}
        assert {k: v for k, v in got.get_params().items()
                if k != "random_state"} == params, name
        for part in ("startprob_", "transmat_", "emissionprob_"):
            assert_same(getattr(got, part), getattr(want, part), f"{name}.{part}")
        state = got.random_state.get_state()
        wanted_state = want.random_state.get_state()
        np.testing.assert_array_equal(state[1], wanted_state[1])
        assert state[2:] == wanted_state[2:], name
    elif isinstance(want, dict):
        assert list(got) == list(want), name
        for key in want:
            assert_same(got[key], want[key], f"{name}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), name
        for index, (item, wanted) in enumerate(zip(got, want)):
            assert_same(item, wanted, f"{name}[{index}]")
    elif isinstance(want, float) and np.isnan(want):
        assert np.isnan(got), name
    else:
        assert got == want, name
