"""skcrnn._encoding against naive loops over the rows."""

import ast
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skcrnn import _encoding
from skcrnn._events import check_events

COLUMNS = ("user", "item", "timestamp")


def _events(rng, n, users, items, times=20):
    return pd.DataFrame({"user": rng.choice(users, n),
                         "item": rng.choice(items, n),
                         "timestamp": rng.integers(0, times, n)})


def _by_time(rows):
    """Rows ``(time, row, ...)`` sorted by time, ties in row order."""
    return sorted(rows, key=lambda row: (row[0], row[1]))


def _groups(sequences):
    return [sequences.items[sequences.indptr[g]:sequences.indptr[g + 1]].tolist()
            for g in range(sequences.n_groups)]


def _encoder(X, handle_unknown="ignore"):
    classes, users, history, last_times = _encoding.encode_training(
        *check_events(X, *COLUMNS))
    encoder = _encoding.Encoder(classes, users, COLUMNS, handle_unknown,
                                last_times=last_times, fitted_time_kind="numeric")
    return encoder, history


@pytest.mark.parametrize("seed", range(5))
def test_training_encoding_equals_a_loop(seed):
    rng = np.random.default_rng(seed)
    X = _events(rng, 80, ["u", "v", "w", "x"], [3, 1, 4, 15, 9, 2])
    classes, users, history, last_times = _encoding.encode_training(
        *check_events(X, *COLUMNS))
    assert classes.tolist() == sorted(set(X["item"]))
    assert users.tolist() == sorted(set(X["user"]))
    expected = []
    for user in users:
        rows = _by_time((t, i, item) for i, (u, item, t)
                        in enumerate(X.itertuples(index=False)) if u == user)
        expected.append([classes.tolist().index(item) for _, _, item in rows])
        assert last_times[len(expected) - 1] == rows[-1][0]
    assert history.user_codes.tolist() == list(range(len(users)))
    assert _groups(history) == expected


@pytest.mark.parametrize("learn_items", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_appended_events_equal_a_loop(seed, learn_items):
    rng = np.random.default_rng(seed)
    X = _events(rng, 60, ["u", "v", "w"], [10, 20, 30, 40])
    encoder, history = _encoder(X)
    new = _events(rng, 40, ["u", "v", "w", "y", "z"], [10, 20, 30, 40, 50, 60])
    new["timestamp"] += 20  # after every fitted event
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if not learn_items else "error")
        appended = encoder.appended(new, learn_items=learn_items)
    classes, users = encoder.classes.tolist(), encoder.users.tolist()
    new_items = sorted(set(new["item"]) - set(classes)) if learn_items else []
    items = classes + new_items
    kept = [(t, i, u, items.index(item)) for i, (u, item, t)
            in enumerate(new.itertuples(index=False)) if item in items]
    new_users = sorted({u for _, _, u, _ in kept} - set(users))
    users = users + new_users
    expected = {}
    for t, i, u, code in _by_time(kept):
        expected.setdefault(users.index(u), []).append((code, t))
    assert appended.new_items.tolist() == new_items
    assert appended.new_users.tolist() == new_users
    assert appended.sequences.user_codes.tolist() == sorted(expected)
    assert _groups(appended.sequences) == [
        [code for code, _ in expected[u]] for u in sorted(expected)]
    assert appended.last_times.tolist() == [expected[u][-1][1]
                                            for u in sorted(expected)]

    grown_users = _encoding.grown(encoder.users, appended.new_users)
    grown_history, last_times = _encoding.extend_history(
        history, encoder.last_times, len(grown_users), appended)
    old = _groups(history) + [[] for _ in new_users]
    assert grown_history.user_codes.tolist() == list(range(len(users)))
    assert _groups(grown_history) == [
        old[u] + [code for code, _ in expected.get(u, [])]
        for u in range(len(users))]
    assert last_times.tolist() == [
        expected[u][-1][1] if u in expected else encoder.last_times[u]
        for u in range(len(users))]


@pytest.mark.parametrize("seed", range(5))
def test_continuations_equal_a_loop(seed):
    rng = np.random.default_rng(seed)
    encoder, _ = _encoder(_events(rng, 50, ["u", "v", "w"], [1, 2, 3, 4]))
    X = _events(rng, 30, ["u", "v", "z"], [1, 2, 3, 4, 5], times=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = encoder.continuations(X)
    classes, users = encoder.classes.tolist(), encoder.users.tolist()
    frame_users = list(dict.fromkeys(X["user"]))  # first appearance order
    sequences = encoded.sequences
    assert sequences.user_codes.tolist() == [
        users.index(u) if u in users else -1 for u in frame_users]
    rows = list(X.itertuples(index=False))
    for g, user in enumerate(frame_users):
        mine = _by_time((t, i, item) for i, (u, item, t) in enumerate(rows)
                        if u == user)
        known = [classes.index(item) for _, _, item in mine if item in classes]
        assert _groups(sequences)[g] == known
        before = 0
        for _, i, item in mine:
            assert encoded.row_groups[i] == g
            assert encoded.row_items[i] == (classes.index(item)
                                            if item in classes else -1)
            assert encoded.row_prefixes[i] == sequences.prefix_start[g] + before
            before += item in classes


def test_unknowns_follow_handle_unknown():
    X = pd.DataFrame({"user": ["a", "b"], "item": [1, 2], "timestamp": [0, 1]})
    # "d" has only an unknown item: left out, it is no new user
    late = pd.DataFrame({"user": ["a", "c", "d"], "item": [3, 1, 3],
                         "timestamp": [5, 5, 5]})
    strict, _ = _encoder(X, handle_unknown="error")
    with pytest.raises(ValueError, match=r"2 row\(s\) of X have items unknown"):
        strict.appended(late)
    with pytest.raises(ValueError, match=r"1 user\(s\) unknown to the model"):
        strict.user_codes(np.array(["a", "c"], dtype=object))
    lenient, _ = _encoder(X)
    with pytest.warns(UserWarning, match="left out of the users' histories"):
        appended = lenient.appended(late)
    assert appended.new_users.tolist() == ["c"]
    with pytest.warns(UserWarning, match="recommended from an empty history"):
        assert lenient.user_codes(np.array(["c", "b"], dtype=object)).tolist() == [-1, 1]


def test_order_and_time_kind_are_checked():
    X = pd.DataFrame({"user": ["a", "b"], "item": [1, 2], "timestamp": [4, 1]})
    encoder, _ = _encoder(X)
    early = pd.DataFrame({"user": ["a", "b", "c"], "item": [1, 1, 1],
                          "timestamp": [3, 1, 0]})
    with pytest.raises(ValueError, match=r"^1 row\(s\) of X are earlier than "
                       r"their user's last event seen so far \(users e.g. \['a'\]\)"):
        encoder.appended(early)
    dated = early.assign(timestamp=pd.to_datetime(early["timestamp"]))
    with pytest.raises(TypeError, match="holds datetime times, but the model "
                       "was fitted with numeric times"):
        encoder.appended(dated)
    # without last times or a time kind, any order and kind goes
    free = _encoding.Encoder(encoder.classes, encoder.users, COLUMNS, "ignore")
    assert free.appended(dated).sequences.n_groups == 3


def test_grown_keeps_the_labels_or_makes_them_objects():
    labels = np.array([1, 2])
    assert _encoding.grown(labels, np.array([], dtype=object)) is labels
    assert _encoding.grown(labels, np.array([3])).tolist() == [1, 2, 3]
    mixed = _encoding.grown(labels, np.array(["x"], dtype=object))
    assert mixed.dtype == object and mixed.tolist() == [1, 2, "x"]


def test_encoding_imports_nothing_above_events():
    source = Path(_encoding.__file__).read_text()
    imported = {node.module for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.level}
    assert imported <= {"_events"}
