"""The file format: a zip of one JSON document and ``.npy`` arrays.

Models that compute with numpy save and load without importing torch; torch
tensors in a payload come back as tensors, numpy arrays as arrays; nothing in
a file is unpickled; files of earlier versions (torch zips) still load.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from skcrnn import BigramRecommender, CollaborativeGRURecommender
from skcrnn._persistence import FORMAT_VERSION, RECORD, checksum, read, write

from .data.make_persistence_v2 import events as v2_events
from .test_persistence import (_edit_document, _flip_in_member,
                               _rewrite_member, assert_same)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


# ----------------------------------------------------------------- no torch
def test_numpy_models_save_and_load_without_torch(tmp_path):
    """Fitting, saving, loading and scoring the models that compute with
    numpy imports no torch, in a fresh interpreter."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import pandas as pd
        import skcrnn

        rng = np.random.default_rng(0)
        events = pd.DataFrame({"user": rng.integers(0, 8, 300),
                               "item": rng.integers(0, 12, 300).astype(str),
                               "timestamp": np.arange(300)})
        names = ["UniformRecommender", "UnigramRecommender",
                 "PersonalUnigramRecommender", "BigramRecommender",
                 "HMMRecommender", "MatrixFactorizationRecommender"]
        for name in names:
            cls = getattr(skcrnn, name)
            model = cls().fit(events)
            assert "torch" not in sys.modules, f"{name}.fit imported torch"
            model.save(sys.argv[1])
            assert "torch" not in sys.modules, f"{name}.save imported torch"
            loaded = cls.load(sys.argv[1])
            assert "torch" not in sys.modules, f"{name}.load imported torch"
            np.testing.assert_array_equal(loaded.score_samples(events),
                                          model.score_samples(events))
        print("torch" in sys.modules)
        """)
    result = subprocess.run(
        [sys.executable, "-B", "-c", script, str(tmp_path / "model.pt")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------ layout
def _tags(value):
    """The ``{"$tag": ...}`` objects of a JSON document."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)).startswith("$"):
            yield value
        for item in value.values():
            yield from _tags(item)
    elif isinstance(value, list):
        for item in value:
            yield from _tags(item)


def test_file_is_a_zip_of_json_and_npy_arrays(tmp_path):
    path = tmp_path / "model.pt"
    BigramRecommender().fit(v2_events()).save(path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos][0] == "record.json"
        assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
        document = json.loads(archive.read("record.json"))
        arrays = {}
        for info in infos[1:]:
            assert re.fullmatch(r"arrays/\d+\.npy", info.filename), info.filename
            with archive.open(info) as member:
                arrays[info.filename] = np.lib.format.read_array(
                    member, allow_pickle=False)
    assert list(document) == ["format", "format_version", "estimator",
                              "checksum", "content"]
    assert document["format"] == "skcrnn-model"
    assert document["format_version"] == FORMAT_VERSION == 3
    assert document["estimator"] == "BigramRecommender"
    assert re.fullmatch("[0-9a-f]{64}", document["checksum"])
    tags = list(_tags(document["content"]))
    assert sorted(tag["$ndarray"] for tag in tags) == sorted(arrays)
    record = read(path, "BigramRecommender")
    assert record["checksum"] == document["checksum"] == checksum(record)


def test_same_model_same_bytes(tmp_path):
    model = BigramRecommender().fit(v2_events())
    model.save(tmp_path / "a.pt")
    model.save(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


# -------------------------------------------------------------- round trip
def payload():
    """Every kind of value a payload may hold."""
    return {
        "weights": {"input": torch.randn(3, 4, generator=torch.Generator()
                                         .manual_seed(0)),
                    "bias": torch.zeros(4, dtype=torch.float64)},
        "states": [{"step": torch.arange(5), "mask": torch.tensor([True, False])},
                   {"step": torch.tensor(7),
                    "half": torch.ones(2, dtype=torch.float16)}],
        "empty": torch.empty(0, 3, dtype=torch.int32),
        "counts": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i4"),
        "complex": np.array([1 + 2j, -0.5j]),
        "scalar_array": np.array(2.5),
        "history": [{"epoch": 1, "loss": float("nan"), "best": None,
                     "gain": float("-inf")}],
        "pair": (1, "two", [3.0]),
        "codes": {1: "one", "$dollar": 2, None: [True]},
        "rng": {"state": 2 ** 100 + 3, "inc": -(2 ** 70)},
        "text": "ü ✓ \n \"quoted\"",
        "nothing": None,
    }


def test_payload_round_trips_with_types_dtypes_and_shapes(tmp_path):
    path = tmp_path / "thing.pt"
    saved = payload()
    write(path, "Thing", saved)
    record = read(path, "Thing")
    assert list(record) == ["format", "format_version", "estimator", *saved,
                            "checksum"]
    for name, value in saved.items():
        assert_same(record[name], value, name)
    assert record["pair"] == (1, "two", [3.0])


def test_numpy_scalars_are_saved_as_python_scalars(tmp_path):
    write(tmp_path / "thing.pt", "Thing", {"values": [np.float32(0.5), np.int64(3),
                                                      np.bool_(True)]})
    values = read(tmp_path / "thing.pt", "Thing")["values"]
    assert values == [0.5, 3, True]
    assert [type(value) for value in values] == [float, int, bool]


def test_tensors_go_to_the_map_location(tmp_path):
    write(tmp_path / "thing.pt", "Thing", payload())
    record = read(tmp_path / "thing.pt", "Thing", map_location="meta")
    assert record["weights"]["input"].device.type == "meta"
    assert record["states"][1]["half"].dtype == torch.float16
    assert record["states"][1]["half"].device.type == "meta"
    assert isinstance(record["counts"], np.ndarray)


@pytest.mark.parametrize("value, message", [
    (object(), "A value of type object cannot be saved"),
    (np.array(["a"], dtype=object), "dtype object cannot be saved"),
    (torch.zeros(2, dtype=torch.bfloat16), "dtype torch.bfloat16 cannot be saved"),
    ({("a", "tuple"): 1}, "A key of type tuple cannot be saved"),
])
def test_unsavable_values_are_refused_before_writing(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path / "thing.pt", "Thing", {"value": value})
    assert list(tmp_path.iterdir()) == []


def test_reserved_entries_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write(tmp_path / "thing.pt", "Thing", {"checksum": "mine"})


def test_write_into_an_open_file(tmp_path):
    """The checkpoints write into a file they opened themselves."""
    with open(tmp_path / "thing.pt", "wb") as handle:
        write(handle, "Thing", payload())
    record = read(tmp_path / "thing.pt", "Thing")
    for name, value in payload().items():
        assert_same(record[name], value, name)


# ------------------------------------------------------------- bad files
class _Runs:
    """Unpickling this creates a file: proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.pt"
    BigramRecommender().fit(v2_events()).save(path)
    return path


def test_pickled_array_is_refused_and_never_run(saved, tmp_path):
    marker = tmp_path / "it ran"
    with zipfile.ZipFile(saved) as archive:
        name = archive.namelist()[1]
    member = tmp_path / "member.npy"
    np.save(member, np.array([_Runs(marker)], dtype=object), allow_pickle=True)
    _rewrite_member(saved, name, member.read_bytes())
    with pytest.raises(ValueError, match=f"{re.escape(str(saved))} is damaged.*"
                                         f"allow_pickle=False"):
        BigramRecommender.load(saved)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    ({"estimator": "UnigramRecommender"}, "does not match its checksum"),
    ({"format_version": FORMAT_VERSION + 1},
     f"format version {FORMAT_VERSION + 1}; this version of skcrnn reads versions "
     f"up to {FORMAT_VERSION}. Upgrade skcrnn"),
    ({"format_version": 2}, "its format version is 2, but it is a zip of JSON "
                                "and arrays"),
    ({"format_version": "3"}, "its format version is '3', not a number"),
    ({"format": "other"}, "has no 'skcrnn-model' stamp"),
    ({"content": {"params": {"$ndarray": "arrays/999.npy"}}},
     "is damaged.*arrays/999.npy"),
    ({"content": {"params": {"$pickle": "x"}}}, "is damaged.*'\\$pickle'"),
])
def test_edited_documents_are_refused(saved, change, message):
    _edit_document(saved, **change)
    with pytest.raises(ValueError, match=message) as error:
        BigramRecommender.load(saved)
    assert str(saved) in str(error.value)


def test_document_that_is_not_json(saved):
    _rewrite_member(saved, "record.json", b"{not json")
    with pytest.raises(ValueError, match="is damaged or truncated: .*JSON"):
        BigramRecommender.load(saved)


def test_zip_that_is_not_a_model(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="is not a skcrnn model file"):
        BigramRecommender.load(path)


def test_array_edited_with_its_crc_fails_the_checksum(saved):
    with zipfile.ZipFile(saved) as archive:
        name = max((info for info in archive.infolist()
                    if info.filename.endswith(".npy")),
                   key=lambda info: info.file_size).filename
        with archive.open(name) as member:
            array = np.lib.format.read_array(member, allow_pickle=False)
    changed = saved.with_name("member.npy")
    np.save(changed, array + 1, allow_pickle=False)
    _rewrite_member(saved, name, changed.read_bytes())
    with pytest.raises(ValueError, match="is damaged: its content does not match "
                                         "its checksum"):
        BigramRecommender.load(saved)


# -------------------------------------------------------- earlier versions
V2_FILES = {"bigram": BigramRecommender, "cgru": CollaborativeGRURecommender}


@pytest.mark.parametrize("name", V2_FILES)
def test_version_2_files_still_load(name):
    """Files of skcrnn cdb4459 (see tests/data/make_persistence_v2.py)."""
    cls = V2_FILES[name]
    model = cls.load(DATA / f"persistence_v2_{name}.pt")
    expected = np.load(DATA / f"persistence_v2_{name}_scores.npy")
    np.testing.assert_allclose(model.score_samples(v2_events()), expected,
                               rtol=1e-6)
    record = read(DATA / f"persistence_v2_{name}.pt", cls.__name__)
    assert record["format_version"] == 2
    assert isinstance(record["fit_sequences"]["items"], torch.Tensor)


def test_version_2_recurrent_model_keeps_its_dtypes():
    model = CollaborativeGRURecommender.load(DATA / "persistence_v2_cgru.pt")
    assert model.network_.item_input.dtype == torch.float32
    assert model.final_states_.dtype == torch.float64
    assert model.device_ == "cpu"
    assert model.history_[0]["epoch"] == 1


@pytest.mark.parametrize("name", V2_FILES)
def test_damaged_version_2_file_fails_its_checksum(name, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copyfile(DATA / f"persistence_v2_{name}.pt", path)
    _flip_in_member(path, "/data/")
    with pytest.raises(ValueError, match="does not match its checksum"):
        V2_FILES[name].load(path)


def test_version_2_file_loads_in_a_process_without_torch_yet():
    """torch is imported when a file needs it."""
    script = textwrap.dedent("""
        import sys
        from skcrnn import BigramRecommender
        BigramRecommender.load(sys.argv[1])
        print("torch" in sys.modules)
        """)
    result = subprocess.run(
        [sys.executable, "-B", "-c", script, str(DATA / "persistence_v2_bigram.pt")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_changed_byte_in_the_document_fails_its_crc(saved):
    _flip_in_member(saved, RECORD)
    with pytest.raises(ValueError, match="is damaged: its content does not match "
                                         "its checksum"):
        BigramRecommender.load(saved)


def test_loaded_arrays_and_tensors_are_writable(tmp_path):
    write(tmp_path / "thing.pt", "Thing", payload())
    record = read(tmp_path / "thing.pt", "Thing")
    assert record["counts"].flags.writeable
    record["weights"]["input"].add_(1)  # torch warns on read-only memory
