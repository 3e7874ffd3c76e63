"""Issue 24: call sequences that let wrong answers through, each now right or refused.

Each test failed on the code before its fix (the item of the issue it covers
is named); the stateful test of every sequence is ``test_stateful.py``.
"""

from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest

from skcrnn import BigramRecommender, CollaborativeGRURecommender


def frame(users, items, times):
    return pd.DataFrame({"user": users, "item": items, "timestamp": times})


def datetimes(strings, unit):
    return pd.Series(pd.to_datetime(strings)).dt.as_unit(unit)


@pytest.mark.parametrize("fit_unit, update_unit", [("s", "ns"), ("us", "ns"),
                                                   ("ns", "s"), ("ms", "us")])
@pytest.mark.parametrize("make", [
    lambda: BigramRecommender(),
    lambda: CollaborativeGRURecommender(hidden_size=2, max_epochs=1, device="cpu",
                                        random_state=0),
], ids=["bigram", "c-gru"])
def test_times_of_any_resolution_are_compared_in_one_unit(make, fit_unit, update_unit):
    """Item 1: a 1990 event was accepted after 2021's, a 2030 one refused."""
    train = frame(["u", "u", "v", "v"], ["a", "b", "a", "c"],
                  datetimes(["2021-01-01", "2021-01-02", "2021-01-01", "2021-01-03"],
                            fit_unit))
    model = make().fit(train)
    earlier = frame(["u"], ["c"], datetimes(["1990-01-01"], update_unit))
    with pytest.raises(ValueError, match="earlier than"):
        model.update(earlier)
    later = frame(["u"], ["c"], datetimes(["2030-01-01"], update_unit))
    model.update(later)
    assert model.n_users_ == 2


def test_time_zones_are_compared_in_utc():
    train = frame(["u", "u"], ["a", "b"], pd.to_datetime(
        ["2021-01-01T10:00", "2021-01-01T12:00"]).tz_localize("Europe/Zurich"))
    model = BigramRecommender().fit(train)
    # 11:30 UTC is 12:30 in Zurich: after the last event (12:00 Zurich)
    model.update(frame(["u"], ["a"], pd.to_datetime(["2021-01-01T11:30"]).tz_localize(
        "UTC")))
    with pytest.raises(ValueError, match="earlier than"):
        # 10:30 UTC is 11:30 in Zurich: before the last one of 12:30
        model.update(frame(["u"], ["b"], pd.to_datetime(
            ["2021-01-01T10:30"]).tz_localize("UTC")))


def test_times_beyond_nanoseconds_are_refused_clearly():
    train = frame(["u", "u"], ["a", "b"], pd.Series(np.array(
        ["1500-01-01", "1500-01-02"], dtype="datetime64[s]")))
    with pytest.raises(ValueError, match="outside the range that nanoseconds hold"):
        BigramRecommender().fit(train)


@pytest.mark.parametrize("params, name", [
    ({"loss": "sampled", "negative_power": 200.0}, "negative_power"),
    ({"loss": "sampled", "negative_power": 1.5}, "negative_power"),
    ({"initial_state": 1e39}, "initial_state"),
    ({"initial_state": -1.5}, "initial_state"),
])
def test_values_that_crashed_inside_torch_are_refused_at_fit(params, name):
    """Item 9: 'invalid multinomial distribution', 'cannot be converted to float'."""
    events = frame(["u", "u", "u", "v", "v", "v"], ["a", "b", "c", "a", "c", "d"],
                   [1, 2, 3, 1, 2, 3])
    model = CollaborativeGRURecommender(hidden_size=2, max_epochs=1, device="cpu",
                                        n_negatives=2, **params)
    if "negative_power" not in params:
        model.set_params(n_negatives=None)
    with pytest.raises(ValueError, match=f"'{name}' parameter .* range"):
        model.fit(events)


@pytest.mark.parametrize("params", [{"loss": "sampled", "negative_power": 1.0,
                                     "n_negatives": 2},
                                    {"initial_state": -1.0}, {"initial_state": 1.0}])
def test_the_bounds_themselves_are_accepted(params):
    events = frame(["u", "u", "u", "v", "v", "v"], ["a", "b", "c", "a", "c", "d"],
                   [1, 2, 3, 1, 2, 3])
    model = CollaborativeGRURecommender(hidden_size=2, max_epochs=1, device="cpu",
                                        random_state=0, **params).fit(events)
    assert np.isfinite(model.score(events))


@pytest.mark.parametrize("method", ["update", "partial_fit"])
@pytest.mark.parametrize("column, value", [("item", True), ("item", "1"),
                                           ("user", True), ("user", "7"),
                                           ("item", b"1")])
def test_labels_of_another_kind_are_refused_and_change_nothing(method, column, value):
    """Item 4: a boolean item joined an integer vocabulary and broke the model."""
    train = frame([1, 1, 2, 2], [0, 1, 1, 2], [1, 2, 1, 2])
    model = BigramRecommender().fit(train)
    before = (model.classes_.copy(), model.users_.copy(), model.score(train))
    new = {"user": 1, "item": 2, "timestamp": 3}
    new[column] = value
    with pytest.raises(TypeError, match=f"X\\['{column}'\\] holds .* labels"):
        getattr(model, method)(pd.DataFrame([new]))
    np.testing.assert_array_equal(model.classes_, before[0])
    np.testing.assert_array_equal(model.users_, before[1])
    assert model.score(train) == before[2]
    model.partial_fit(frame([3], [3], [4]))  # still usable
    assert list(model.classes_) == [0, 1, 2, 3]


def test_numbers_of_both_kinds_still_join():
    train = frame([1, 1], [0, 1], [1, 2])
    model = BigramRecommender().fit(train)
    model.partial_fit(frame([1], [2.5], [3]))
    assert model.n_items_ == 3


def test_ties_after_partial_fit_rank_as_a_fit_on_all_events():
    """Item 10: ties followed classes_ order, new items last."""
    first = frame(["u", "u", "v"], ["m", "z", "m"], [1, 2, 1])
    more = frame(["v", "w"], ["b", "k"], [2, 1])
    grown = BigramRecommender(alpha=1.0).fit(first).partial_fit(more)
    whole = BigramRecommender(alpha=1.0).fit(pd.concat([first, more]))
    assert list(grown.classes_) != list(whole.classes_)  # appended, not sorted
    for users in (["u", "v", "w"], ["stranger"]):
        with pytest.warns(UserWarning) if users == ["stranger"] else nullcontext():
            got = grown.recommend(users, k=4)
        with pytest.warns(UserWarning) if users == ["stranger"] else nullcontext():
            expected = whole.recommend(users, k=4)
        pd.testing.assert_frame_equal(got, expected)
    rows = frame(["w", "w", "u"], ["k", "m", "z"], [3, 4, 5])
    np.testing.assert_array_equal(grown.predict(rows), whole.predict(rows))


def old_microsecond_model():
    """A model as 0.1.0 kept it: last times as the integers of a [us] column."""
    train = frame(["u", "u", "v"], ["a", "b", "a"],
                  datetimes(["2021-01-01", "2021-01-02", "2021-01-01"], "us"))
    model = BigramRecommender().fit(train)
    micro = train.groupby("user")["timestamp"].max().dt.as_unit("us")
    return model, micro.to_numpy().view(np.int64)


def assert_ordered_in_nanoseconds(model):
    with pytest.raises(ValueError, match="earlier than"):
        model.update(frame(["u"], ["b"], datetimes(["1990-01-01"], "ns")))
    model.update(frame(["u"], ["b"], datetimes(["2021-06-01"], "ns")))


def test_a_file_records_the_time_unit_and_older_files_convert(tmp_path):
    """Item 1: saved files kept raw integers without a unit."""
    from skcrnn import _persistence
    from skcrnn._migrations import FILE_ENTRY
    model, micro = old_microsecond_model()
    model.save(tmp_path / "new.skcrnn")
    record = _persistence.read(tmp_path / "new.skcrnn", "BigramRecommender")
    assert record["time_unit"] == "ns"
    old = {key: value for key, value in record.items()
           if key not in ("format", "format_version", "estimator", "checksum",
                          FILE_ENTRY, "time_unit")}
    old["last_times"] = micro  # as 0.1.0 wrote them
    _persistence.write(tmp_path / "old.skcrnn", "BigramRecommender", old)
    loaded = BigramRecommender.load(tmp_path / "old.skcrnn")
    np.testing.assert_array_equal(loaded._last_times, model._last_times)
    assert_ordered_in_nanoseconds(loaded)


def test_a_pickle_of_before_the_unit_converts():
    from skcrnn._migrations import PICKLE_KEY
    model, micro = old_microsecond_model()
    state = model.__getstate__()
    for key in (PICKLE_KEY, "_time_unit"):
        del state[key]
    state["_last_times"] = micro
    restored = BigramRecommender.__new__(BigramRecommender)
    restored.__setstate__(state)
    np.testing.assert_array_equal(restored._last_times, model._last_times)
    assert restored._time_unit == "ns"
    assert_ordered_in_nanoseconds(restored)


@pytest.mark.parametrize("unit, factor", [("s", 10 ** 9), ("ms", 10 ** 6),
                                          ("us", 10 ** 3), ("ns", 1)])
def test_the_unit_is_told_by_the_magnitude(unit, factor):
    from skcrnn._events import nanoseconds_from_magnitude
    times = datetimes(["1973-03-04", "2021-01-01", "2262-01-01"], unit)
    raw = times.to_numpy().view(np.int64)
    expected = times.dt.as_unit("ns").to_numpy().view(np.int64)
    np.testing.assert_array_equal(nanoseconds_from_magnitude(raw), expected)
    assert factor * raw[1] == expected[1]
