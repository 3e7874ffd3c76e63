"""Version stamps of saved files and pickles, and the migration table.

Files and pickles record the package version; what those of earlier versions
lack is filled once, on loading or unpickling, from
:data:`skcrnn._migrations.MIGRATIONS` (see docs/persistence.rst).
"""

import inspect
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import skcrnn
from skcrnn import (BaseRecommender, BigramRecommender,
                    CollaborativeGRURecommender, SelfAttentionRecommender)
from skcrnn import _migrations, _persistence
from skcrnn._migrations import (FILE_ENTRY, MIGRATIONS, PICKLE_KEY, VERSION,
                                Converted, Derived, Fitted,
                                InconsistentVersionWarning,
                                Parameter, migrations_since, parse_version)

from .conftest import TINY_RNN
from .data.make_persistence_v2 import events as v2_events
from .estimators import ALL_ESTIMATORS, ids

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
STAMP = ("format", "format_version", "estimator", "checksum")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bigram():
    return BigramRecommender(alpha=2.0).fit(v2_events())


@pytest.fixture(scope="module")
def cgru():
    return CollaborativeGRURecommender(**TINY_RNN).fit(v2_events())


def changes(kind):
    return [change for _, entries in MIGRATIONS for change in entries
            if isinstance(change, kind)]


def in_scope(change, cls):
    return _migrations._in_scope(change, cls)


def unstamped_file(model, path, drop=()):
    """``model`` saved as a version without stamps wrote it: without the
    package version, without ``drop`` (record entries and parameters)."""
    model.save(path)
    record = _persistence.read(path, type(model).__name__)
    payload = {key: value for key, value in record.items()
               if key not in (*STAMP, FILE_ENTRY, *drop)}
    payload["params"] = {name: value for name, value in payload["params"].items()
                         if name not in drop}
    _persistence.write(path, type(model).__name__, payload)
    return path


def every_change_dropped(cls):
    """The record entries and parameters that a file of before 0.2.0 lacks."""
    return ([change.entry for change in changes(Fitted) if in_scope(change, cls)]
            + [change.name for change in changes(Parameter) if in_scope(change, cls)])


def assert_same_scores(a, b):
    frame = v2_events()
    np.testing.assert_array_equal(a.score_samples(frame), b.score_samples(frame))


# ----------------------------------------------------------------- version
def test_one_version_stamped_released_and_in_the_changelog():
    """skcrnn/_version.py is the version's one home: setup.py reads it as
    below, and the changelog has its section."""
    setup = (ROOT / "setup.py").read_text()
    assert '"skcrnn" / "_version.py"' in setup
    line, = [line for line in (ROOT / "skcrnn" / "_version.py").read_text()
             .splitlines() if line.startswith("__version__")]
    assert line.split("=")[1].strip().strip('"') == skcrnn.__version__ == VERSION
    assert parse_version(VERSION) > parse_version("0.1.0")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{VERSION}]" in changelog and "## [0.1.0]" in changelog


@pytest.mark.parametrize("text, parsed", [
    ("0.1.0", (0, 1, 0)), ("0.2", (0, 2, 0)), ("1.10.3", (1, 10, 3)),
    ("0.3.0.dev1", (0, 3, 0)), ("2.0rc1", (2, 0, 0))])
def test_versions_compare_as_numbers(text, parsed):
    assert parse_version(text) == parsed


@pytest.mark.parametrize("text", ["", "x.1", None, 3, ["0.2.0"]])
def test_a_stamp_that_is_not_a_version_is_refused(text):
    with pytest.raises(ValueError, match="not a version"):
        parse_version(text)


# ------------------------------------------------------------------- table
def test_table_versions_are_ascending_and_not_later_than_this_one():
    versions = [parse_version(version) for version, _ in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[-1] <= parse_version(VERSION)


def test_no_change_applies_to_this_version_all_to_an_unstamped_one():
    assert migrations_since(VERSION) == []
    assert migrations_since(None) == migrations_since("0.1.0") == [
        change for _, entries in MIGRATIONS for change in entries]


@pytest.mark.parametrize("change", changes(Parameter), ids=lambda c: c.name)
def test_each_parameter_fill_is_the_default_of_the_estimators_that_have_it(change):
    """The fills give the behaviour of before the parameter: here, each is
    the default of every estimator that has it, but for the defaults changed
    since (DEFAULT_CHANGED), whose fill stays the old behaviour."""
    classes = [cls for cls in {type(e) for e in ALL_ESTIMATORS}
               if in_scope(change, cls)]
    assert classes, f"no estimator has {change.name}"
    for cls in classes:
        default = inspect.signature(cls).parameters[change.name].default
        if change.name in DEFAULT_CHANGED:
            assert (change.fill, default) == DEFAULT_CHANGED[change.name]
            continue
        assert change.fill == default and type(change.fill) is type(default)


#: Parameters whose default changed after they were added: (fill, default).
#: Issue 26: partial_fit stops by itself by default; files of 0.1.0 keep
#: one pass over the new events and no replay.
DEFAULT_CHANGED = {"partial_epochs": (1, "auto"), "replay_epochs": (0, "auto")}


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=ids)
def test_each_fitted_change_names_what_fit_sets_and_save_writes(estimator,
                                                               tmp_path):
    """The table's entries and attributes are those of this version, so
    that a file or pickle of this version has them all."""
    model = estimator.fit(v2_events())
    model.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", type(model).__name__)
    fitted = [change for change in changes(Fitted) if in_scope(change, type(model))]
    assert fitted
    for change in fitted:
        assert change.entry in record
        assert change.attribute in vars(model)


def test_each_fitted_change_is_scoped_to_a_class_of_the_estimators():
    names = {cls.__name__ for estimator in ALL_ESTIMATORS
             for cls in type(estimator).__mro__ if issubclass(cls, BaseRecommender)}
    assert {change.scope for change in changes(Fitted)} <= names


# ------------------------------------------------------------------- files
def test_a_file_records_the_package_version(bigram, tmp_path):
    bigram.save(tmp_path / "model.pt")
    with zipfile.ZipFile(tmp_path / "model.pt") as archive:
        document = json.loads(archive.read("record.json"))
    assert document["content"][FILE_ENTRY] == skcrnn.__version__
    record = _persistence.read(tmp_path / "model.pt", "BigramRecommender")
    assert record[FILE_ENTRY] == skcrnn.__version__
    assert record["checksum"] == _persistence.checksum(record)  # covered


@pytest.mark.parametrize("name, cls", [("bigram", BigramRecommender),
                                       ("cgru", CollaborativeGRURecommender)])
def test_version_2_files_have_no_stamp_and_get_every_fill(name, cls):
    """The files of skcrnn cdb4459 (tests/data/make_persistence_v2.py) lack
    what the table says, and load with its fills."""
    path = DATA / f"persistence_v2_{name}.pt"
    record = _persistence.read(path, cls.__name__)
    assert FILE_ENTRY not in record
    for change in changes(Fitted):
        if in_scope(change, cls):
            assert change.entry not in record
    model = cls.load(path)
    assert model._time_kind is None and model._last_times is None
    if cls is CollaborativeGRURecommender:
        assert model.optimizer_state_ is None and model.partial_history_ == []
        assert "replay_epochs" not in record["params"]
        assert (model.replay_epochs, model.repeat_bias, model.copy_history,
                model.loss, model.dropout) == (0, 0.0, False, "full", 0.0)
    np.testing.assert_allclose(model.score_samples(v2_events()),
                               np.load(DATA / f"persistence_v2_{name}_scores.npy"),
                               rtol=1e-6)


@pytest.mark.parametrize("fixture", ["bigram", "cgru"])
def test_a_file_without_a_version_loads_with_the_fills(fixture, request,
                                                       tmp_path):
    model = request.getfixturevalue(fixture)
    cls = type(model)
    drop = every_change_dropped(cls)
    path = unstamped_file(model, tmp_path / "old.pt", drop)
    assert not set(drop) & set(_persistence.read(path, cls.__name__))
    loaded = cls.load(path)
    assert loaded._time_kind is None and loaded._last_times is None
    for change in changes(Parameter):
        if in_scope(change, cls):
            assert getattr(loaded, change.name) == change.fill
    if cls is CollaborativeGRURecommender:
        assert loaded.optimizer_state_ is None and loaded.partial_history_ == []
    assert_same_scores(loaded, model)
    # saved again, it is a file of this version: nothing to fill any more
    loaded.save(tmp_path / "again.pt")
    record = _persistence.read(tmp_path / "again.pt", cls.__name__)
    assert record[FILE_ENTRY] == VERSION
    assert record["time_kind"] is None and record["last_times"] is None


@pytest.mark.parametrize("entry", ["time_kind", "last_times", "optimizer_state",
                                   "partial_history"])
def test_a_file_of_this_version_without_an_entry_is_damaged(cgru, entry,
                                                            tmp_path):
    """Not guessed as an old file: a file stamped with this version has
    every entry of this version."""
    cgru.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "CollaborativeGRURecommender")
    _persistence.write(tmp_path / "model.pt", "CollaborativeGRURecommender",
                       {key: value for key, value in record.items()
                        if key not in (*STAMP, entry)})
    with pytest.raises(ValueError, match=f"damaged skcrnn model file: KeyError: "
                                         f"'{entry}'"):
        CollaborativeGRURecommender.load(tmp_path / "model.pt")


@pytest.mark.parametrize("stamp", ["zero", 2, None])
def test_a_file_whose_stamp_is_not_a_version_is_damaged(bigram, stamp, tmp_path):
    bigram.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "BigramRecommender")
    _persistence.write(tmp_path / "model.pt", "BigramRecommender",
                       {**{key: value for key, value in record.items()
                           if key not in STAMP}, FILE_ENTRY: stamp})
    with pytest.raises(ValueError, match="damaged skcrnn model file: .*not a "
                                         "version"):
        BigramRecommender.load(tmp_path / "model.pt")


def test_a_file_of_a_later_version_loads_as_today(bigram, tmp_path):
    """Readable when its format is (a later format is refused by
    test_persistence_format); nothing filled, no warning."""
    bigram.save(tmp_path / "model.pt")
    record = _persistence.read(tmp_path / "model.pt", "BigramRecommender")
    _persistence.write(tmp_path / "model.pt", "BigramRecommender",
                       {**{key: value for key, value in record.items()
                           if key not in STAMP}, FILE_ENTRY: "9.0.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = BigramRecommender.load(tmp_path / "model.pt")
    assert_same_scores(loaded, bigram)


# ----------------------------------------------------------------- pickles
def test_a_pickle_records_the_package_version(cgru):
    state = cgru.__getstate__()
    assert state[PICKLE_KEY] == skcrnn.__version__
    assert PICKLE_KEY not in vars(cgru)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = pickle.loads(pickle.dumps(cgru))
    assert PICKLE_KEY not in vars(restored)
    assert sorted(vars(restored)) == sorted(vars(cgru))


def test_the_pickle_of_release_0_1_0_loads_with_the_fills():
    """Written by skcrnn 0.1.0 (tests/data/make_pickle_0_1_0.py), without a
    version and without the attributes of update()."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = pickle.loads((DATA / "pickle_0_1_0_bigram.pkl").read_bytes())
    assert model._time_kind is None and model._last_times is None
    frame = v2_events()
    np.testing.assert_allclose(model.score_samples(frame),
                               np.load(DATA / "pickle_0_1_0_bigram_scores.npy"),
                               rtol=1e-12)
    later = frame.assign(timestamp=frame["timestamp"] + np.timedelta64(1, "D"))
    model.update(later)
    assert model._time_kind is None  # as loaded: any kind and order go


@pytest.mark.parametrize("fixture", ["bigram", "cgru"])
def test_a_pickle_without_a_version_unpickles_with_the_fills(fixture, request):
    model = request.getfixturevalue(fixture)
    cls = type(model)
    state = dict(model.__getstate__())
    del state[PICKLE_KEY]
    filled = [change for change in migrations_since(None) if in_scope(change, cls)
              and not isinstance(change, (Derived, Converted))]
    derived = [change for change in migrations_since(None) if in_scope(change, cls)
               and isinstance(change, Derived) and change.attribute in state]
    for change in filled:
        state.pop(change.name if isinstance(change, Parameter) else
                  change.attribute)
    for change in derived:
        state.pop(change.attribute)
    restored = cls.__new__(cls)
    restored.__setstate__(state)
    for change in filled:
        name = change.name if isinstance(change, Parameter) else change.attribute
        assert getattr(restored, name) == change.fill
    for change in derived:  # derived again from the pickled state
        assert getattr(restored, change.attribute) == getattr(model, change.attribute)
    assert sorted(vars(restored)) == sorted(vars(model))
    assert_same_scores(restored, model)


def test_an_unfitted_pickle_gets_parameters_but_no_fitted_attributes():
    state = dict(SelfAttentionRecommender().__getstate__())
    del state[PICKLE_KEY], state["repeat_bias"]
    restored = SelfAttentionRecommender.__new__(SelfAttentionRecommender)
    restored.__setstate__(state)
    assert restored.repeat_bias == 0.0
    assert "optimizer_state_" not in vars(restored)
    assert "_time_kind" not in vars(restored)


def test_a_pickle_of_this_version_gets_no_fill(cgru):
    state = dict(cgru.__getstate__())
    del state["repeat_bias"]
    restored = CollaborativeGRURecommender.__new__(CollaborativeGRURecommender)
    restored.__setstate__(state)
    assert "repeat_bias" not in vars(restored)


@pytest.mark.parametrize("stamp", ["9.0.0", "not a version", None])
def test_a_pickle_of_a_later_version_warns_and_gets_no_fill(bigram, stamp):
    state = {**bigram.__getstate__(), PICKLE_KEY: stamp}
    del state["_time_kind"]
    restored = BigramRecommender.__new__(BigramRecommender)
    with pytest.warns(InconsistentVersionWarning,
                      match=f"BigramRecommender from skcrnn version {stamp} when "
                            f"using version {VERSION}") as record:
        restored.__setstate__(state)
    assert issubclass(record[0].category, UserWarning)
    assert "_time_kind" not in vars(restored)
    # the rest of the state came through as it was pickled
    restored._time_kind = bigram._time_kind
    assert_same_scores(restored, bigram)


# ------------------------------------------------------------ applied once
@pytest.fixture
def counted(monkeypatch):
    calls = []
    since = _migrations.migrations_since

    def counting(version):
        calls.append(version)
        return since(version)

    monkeypatch.setattr(_migrations, "migrations_since", counting)
    return calls


@pytest.mark.parametrize("fixture", ["bigram", "cgru"])
def test_loading_applies_the_table_once(fixture, request, counted, tmp_path):
    model = request.getfixturevalue(fixture)
    unstamped_file(model, tmp_path / "old.pt")
    type(model).load(tmp_path / "old.pt")
    assert counted == [None]


@pytest.mark.parametrize("fixture", ["bigram", "cgru"])
def test_unpickling_applies_the_table_once(fixture, request, counted):
    model = request.getfixturevalue(fixture)
    pickle.loads(pickle.dumps(model))
    assert counted == [VERSION]
