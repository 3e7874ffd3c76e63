"""A catalogue of bad inputs: each gets its exact exception and a message that
names the problem, and the caller's DataFrame is never modified.

Cases are ``(id, call, exception, message regex)`` where ``call`` receives a
fresh copy of a small valid events frame; the exception must be of exactly
that type (scikit-learn's parameter validation raises
``InvalidParameterError``, a ``ValueError``), and the frame passed in is
compared with an untouched copy afterwards.
"""

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

import skcrnn._base as base_module
from skcrnn import (BigramRecommender, CollaborativeGRURecommender,
                    PersonalUnigramRecommender, UniformRecommender,
                    UnigramRecommender)
from skcrnn.metrics import entropy_bins, recall_at_k
from skcrnn.model_selection import (EventFilter, UserSuffixSplit,
                                    preprocess_like_paper, suffix_split)

from .conftest import TINY_RNN, random_events
from .estimators import ALL_ESTIMATORS


def _set(frame, column, index, value):
    """``frame`` with one cell replaced (on a copy with an object column)."""
    out = frame.copy()
    out[column] = out[column].astype(object)
    out.loc[out.index[index], column] = value
    return out


def fit(frame, model=None):
    return (model or UnigramRecommender()).fit(frame)


def rnn(**params):
    """A tiny recurrent model with ``params`` changed."""
    return CollaborativeGRURecommender(**{**TINY_RNN, **params})


def datetime_objects(frame, zones=(None,)):
    """``frame`` with Python datetime objects as times (object column), the
    row ``i`` one in ``zones[i % len(zones)]`` (None: without a zone)."""
    times = [(t if zone is None else t.tz_localize(zone)).to_pydatetime()
             for t, zone in zip(frame["timestamp"], itertools.cycle(zones))]
    return frame.assign(timestamp=pd.Series(times, index=frame.index, dtype=object))


def mixed_timezones(frame):
    out = frame.copy()
    zurich = frame["timestamp"].dt.tz_localize("Europe/Zurich")
    tokyo = frame["timestamp"].dt.tz_localize("Asia/Tokyo")
    out["timestamp"] = pd.Series([z if i % 2 else t for i, (z, t) in
                                  enumerate(zip(zurich, tokyo))], dtype=object)
    return out


FRAME_CASES = [
    ("missing-user", lambda e: fit(e.drop(columns="user")), ValueError,
     r"missing the column\(s\) \['user'\]"),
    ("missing-item", lambda e: fit(e.drop(columns="item")), ValueError,
     r"missing the column\(s\) \['item'\]"),
    ("missing-time", lambda e: fit(e.drop(columns="timestamp")), ValueError,
     r"missing the column\(s\) \['timestamp'\]"),
    ("renamed-columns", lambda e: fit(e.rename(columns={"user": "User"})), ValueError,
     "Rename them or pass user_col"),
    ("duplicated-item-column", lambda e: fit(pd.concat([e, e[["item"]]], axis=1)),
     ValueError, r"duplicated column\(s\) \['item'\]"),
    ("same-column-twice", lambda e: fit(e, UnigramRecommender(item_col="user")),
     ValueError, "three different columns"),
    ("nan-user", lambda e: fit(_set(e, "user", 3, np.nan)), ValueError,
     r"X\['user'\] has 1 missing value"),
    ("none-user", lambda e: fit(_set(e, "user", 0, None)), ValueError,
     r"X\['user'\] has 1 missing value"),
    ("nan-item", lambda e: fit(_set(e, "item", 5, np.nan)), ValueError,
     r"X\['item'\] has 1 missing value"),
    ("none-item", lambda e: fit(_set(e, "item", 1, None)), ValueError,
     r"X\['item'\] has 1 missing value"),
    ("nat-time", lambda e: fit(e.assign(timestamp=e["timestamp"].where(e.index != 2))),
     ValueError, r"X\['timestamp'\] has 1 missing time"),
    ("nan-numeric-time", lambda e: fit(e.assign(timestamp=np.where(
        e.index == 4, np.nan, np.arange(len(e), dtype=float)))), ValueError,
     "missing time"),
    ("inf-time", lambda e: fit(e.assign(timestamp=np.where(
        e.index == 4, np.inf, np.arange(len(e), dtype=float)))), ValueError,
     "infinite time"),
    ("mixed-type-users", lambda e: fit(_set(e, "user", 0, "alice")), TypeError,
     r"X\['user'\] must hold labels of one kind"),
    ("mixed-type-items", lambda e: fit(_set(e, "item", 0, 7)), TypeError,
     r"X\['item'\] must hold labels of one kind"),
    ("empty-frame", lambda e: fit(e.iloc[:0]), ValueError, "has no rows"),
    ("list-input", lambda e: fit(e.to_numpy().tolist()), TypeError,
     "must be a pandas DataFrame.*got list"),
    ("numpy-input", lambda e: fit(e.to_numpy()), TypeError,
     "must be a pandas DataFrame.*got ndarray"),
    ("series-input", lambda e: fit(e["item"]), TypeError,
     "must be a pandas DataFrame.*got Series"),
    ("dict-input", lambda e: fit(e.to_dict()), TypeError,
     "must be a pandas DataFrame.*got dict"),
    ("string-times", lambda e: fit(e.assign(timestamp=e["timestamp"].astype(str))),
     TypeError, "must be numeric or datetime64.*pandas.to_datetime"),
    ("mixed-timezone-times", lambda e: fit(mixed_timezones(e)), TypeError,
     r"a mix of time zones \(Asia/Tokyo, Europe/Zurich\).*utc=True"),
    ("mixed-timezone-datetime-objects", lambda e: fit(datetime_objects(
        e, ["Asia/Tokyo", "UTC", "Asia/Tokyo"])), TypeError,
     r"datetime objects in a mix of time zones \(Asia/Tokyo, UTC\)"),
    # one zone or none is no mix: the objects only need pandas.to_datetime
    ("naive-datetime-objects", lambda e: fit(datetime_objects(e)), TypeError,
     r"^(?!.*mix).*holds Python datetime objects without a time zone \(object "
     r"dtype\)\. Convert it with pandas\.to_datetime"),
    ("one-zone-datetime-objects", lambda e: fit(datetime_objects(
        e, ["Europe/Zurich"])), TypeError,
     r"^(?!.*mix).*holds Python datetime objects in one time zone, "
     r"Europe/Zurich \(object dtype\)\. Convert it with pandas\.to_datetime"
     r"\(\.\.\., utc=True\)"),
    ("naive-and-aware-datetime-objects", lambda e: fit(datetime_objects(
        e, [None, "Europe/Zurich"])), TypeError,
     "datetime objects, some with a time zone and some without"),
    ("bool-times", lambda e: fit(e.assign(timestamp=e.index % 2 == 0)), TypeError,
     "must be numeric or datetime64"),
    ("score-before-fit-frame-check", lambda e: fit(e).score_samples(e.values),
     TypeError, "must be a pandas DataFrame"),
    ("score-missing-column", lambda e: fit(e).score(e.drop(columns="timestamp")),
     ValueError, "missing the column"),
    ("unknown-items-error", lambda e: fit(
        e, UnigramRecommender(handle_unknown="error")).score_samples(
        _set(e, "item", 0, "zzz")), ValueError, "1 row.* items unknown to the model"),
    ("unknown-users-error", lambda e: fit(
        e, BigramRecommender(handle_unknown="error")).score(e.assign(user=-1)),
     ValueError, "user.* unknown to the model"),
    ("all-items-unknown", lambda e: _quiet(lambda: fit(e).score(
        e.assign(item="zzz"))), ValueError, "No row of X could be scored"),
    ("update-before-fit", lambda e: UnigramRecommender().update(e), NotFittedError,
     "not fitted"),
    ("update-missing-column", lambda e: fit(e).update(e.drop(columns="user")),
     ValueError, r"missing the column\(s\) \['user'\]"),
    ("update-out-of-order", lambda e: fit(e).update(e.iloc[:3]), ValueError,
     "earlier than their user's last event"),
    ("partial-fit-out-of-order", lambda e: fit(e).partial_fit(e.iloc[:3]),
     ValueError, "earlier than their user's last event"),
    ("update-times-of-another-kind", lambda e: fit(e).update(e.assign(
        timestamp=np.arange(len(e), dtype=float))), TypeError,
     "numeric times, but the model was fitted with datetime times"),
    ("update-unknown-items-error", lambda e: fit(
        e, UnigramRecommender(handle_unknown="error")).update(_set(
            e.assign(timestamp=e["timestamp"] + pd.Timedelta(days=1)), "item", 0,
            "zzz")), ValueError, "items unknown to the model.*partial_fit"),
    ("partial-fit-bad-parameter", lambda e: fit(e).set_params(alpha=-1).partial_fit(
        e.assign(timestamp=e["timestamp"] + pd.Timedelta(days=1))),
     InvalidParameterError, "alpha"),
    ("recommend-k-zero", lambda e: fit(e).recommend([100], k=0), ValueError,
     "k must be between 1 and"),
    ("recommend-k-negative", lambda e: fit(e).recommend([100], k=-3), ValueError,
     "k must be between 1 and"),
    ("recommend-k-too-large", lambda e: fit(e).recommend([100], k=10 ** 6), ValueError,
     r"k must be between 1 and the number of known items \(8\)"),
    ("recommend-k-float", lambda e: fit(e).recommend([100], k=2.0), TypeError,
     "k must be an integer"),
    ("recommend-exclude-seen-string", lambda e: fit(e).recommend(
        [100], k=2, exclude_seen="no"), TypeError,
     "exclude_seen must be True or False; got str"),
    ("recommend-exclude-seen-int", lambda e: fit(e).recommend(
        [100], k=2, exclude_seen=1), TypeError,
     "exclude_seen must be True or False; got int"),
    ("recommend-exclude-seen-none", lambda e: fit(e).recommend(
        [100], k=2, exclude_seen=None), TypeError,
     "exclude_seen must be True or False; got NoneType"),
    ("recommend-unknown-user-error", lambda e: fit(
        e, UnigramRecommender(handle_unknown="error")).recommend(["nobody"], k=2),
     ValueError, r"1 user\(s\) unknown to the model"),
    ("recommend-no-users", lambda e: fit(e).recommend([], k=2), ValueError,
     "users is empty"),
    ("recommend-nan-user", lambda e: fit(e).recommend([100, np.nan], k=2), ValueError,
     "users contains missing values"),
    ("recommend-2d-users", lambda e: fit(e).recommend([[100, 101]], k=2), ValueError,
     "one-dimensional"),
    ("unigram-negative-alpha", lambda e: fit(e, UnigramRecommender(alpha=-1)),
     InvalidParameterError, "'alpha' parameter of UnigramRecommender must be"),
    ("bigram-zero-alpha", lambda e: fit(e, BigramRecommender(alpha=0)),
     InvalidParameterError, "'alpha' parameter of BigramRecommender must be"),
    ("personal-string-beta", lambda e: fit(e, PersonalUnigramRecommender(beta="big")),
     InvalidParameterError, "'beta' parameter of PersonalUnigramRecommender must be"),
    ("rnn-zero-hidden-size", lambda e: fit(e, rnn(hidden_size=0)),
     InvalidParameterError, "'hidden_size' parameter of CollaborativeGRURecommender "
     r"must be an int in the range \[1, inf\)"),
    ("rnn-float-hidden-size", lambda e: fit(e, rnn(hidden_size=2.5)),
     InvalidParameterError, "'hidden_size' parameter .* Got 2.5"),
    ("rnn-negative-learning-rate", lambda e: fit(e, rnn(learning_rate=-0.1)),
     InvalidParameterError, r"'learning_rate' parameter .* range \(0.0, inf\)"),
    ("rnn-zero-learning-rate", lambda e: fit(e, rnn(learning_rate=0)),
     InvalidParameterError, "'learning_rate' parameter .* Got 0 instead"),
    ("rnn-zero-chunk-size", lambda e: fit(e, rnn(chunk_size=0)),
     InvalidParameterError, "'chunk_size' parameter of CollaborativeGRURecommender"),
    ("rnn-device-gpu7", lambda e: fit(e, rnn(device="gpu7")), ValueError,
     "device='gpu7' is not a device name; use 'auto', 'cpu', 'cuda'"),
    ("rnn-device-tpu", lambda e: fit(e, rnn(device="tpu")), ValueError,
     "device='tpu' is not a device name"),
    ("rnn-device-missing-gpu", lambda e: fit(e, rnn(device="cuda:7")), ValueError,
     "device='cuda:7' but (CUDA is not available|this machine has)"),
    ("rnn-device-not-a-string", lambda e: fit(e, rnn(device=3)),
     InvalidParameterError, "'device' parameter .* instance of 'str'"),
    ("rnn-cell-lstm", lambda e: fit(e, rnn(cell="lstm")), InvalidParameterError,
     "'cell' parameter of CollaborativeGRURecommender must be a str among"),
    ("rnn-recurrent-weights", lambda e: fit(e, rnn(recurrent_weights="per_item")),
     InvalidParameterError, "'recurrent_weights' parameter .* Got 'per_item'"),
    ("rnn-recurrent-weights-none", lambda e: fit(e, rnn(recurrent_weights=None)),
     InvalidParameterError, "'recurrent_weights' parameter .* Got None"),
    ("rnn-negative-replay-epochs", lambda e: fit(e, rnn(replay_epochs=-1)),
     InvalidParameterError, "'replay_epochs' parameter of CollaborativeGRURecommender"),
    ("rnn-nan-repeat-bias", lambda e: fit(e, rnn(repeat_bias=float("nan"))),
     InvalidParameterError, "'repeat_bias' parameter of CollaborativeGRURecommender"),
    ("rnn-infinite-repeat-bias-after-fit",
     lambda e: fit(e, rnn()).set_params(repeat_bias=float("-inf")).score_samples(e),
     ValueError, "repeat_bias must be finite"),
    ("rnn-string-repeat-bias-after-fit",
     lambda e: fit(e, rnn()).set_params(repeat_bias="-1").score_samples(e),
     TypeError, "repeat_bias must be a real number"),
    ("bad-handle-unknown", lambda e: fit(e, UniformRecommender(handle_unknown="skip")),
     InvalidParameterError, "'handle_unknown' parameter"),
    ("filter-negative-count", lambda e: EventFilter(min_item_count=-1).fit(e),
     InvalidParameterError, "'min_item_count' parameter of EventFilter"),
    ("filter-transform-list", lambda e: EventFilter(1, 1).fit(e).transform([1, 2]),
     TypeError, "must be a pandas DataFrame"),
    ("split-test-size-zero", lambda e: suffix_split(e, test_size=0),
     InvalidParameterError, "'test_size' parameter of suffix_split"),
    ("split-bounds-crossed", lambda e: suffix_split(e, min_test=9, max_test=2),
     ValueError, r"min_test \(9\) must not exceed max_test \(2\)"),
    ("split-array-input", lambda e: suffix_split(e.to_numpy()),
     InvalidParameterError, "'X' parameter of suffix_split must be an instance of"),
    ("cv-zero-splits", lambda e: next(UserSuffixSplit(n_splits=0).split(e)), ValueError,
     "n_splits must be a positive integer"),
    ("paper-unknown-dataset", lambda e: preprocess_like_paper(e, "gowalla"),
     InvalidParameterError, "'dataset' parameter of preprocess_like_paper"),
    ("paper-nothing-passes", lambda e: preprocess_like_paper(e, "brightkite"),
     ValueError, "No event passes the paper's filters"),
    ("bins-more-than-users", lambda e: entropy_bins(e, n_bins=50), ValueError,
     r"n_bins=50 is more than the 6 users"),
    ("recall-k-zero", lambda e: recall_at_k(fit(e), e, k=0), ValueError,
     "k must be a positive integer"),
    ("recall-not-a-recommender", lambda e: recall_at_k(EventFilter().fit(e), e),
     TypeError, "EventFilter is not a skcrnn recommender"),
    # issue 24: call sequences that let wrong answers through
    # (tests/test_call_sequences.py and test_params_after_fit.py for the rest)
    ("times-beyond-nanoseconds", lambda e: fit(e.assign(timestamp=pd.Series(
        np.array(["1500-01-01"] * len(e), dtype="datetime64[s]"), index=e.index))),
     ValueError, "outside the range that nanoseconds hold"),
    ("update-bool-item-on-strings", lambda e: _quiet(lambda: fit(e).update(
        e.iloc[:1].assign(item=True, timestamp=e["timestamp"].max()))),
     TypeError, r"X\['item'\] holds boolean labels, but the model's items are "
                r"string"),
    ("partial-fit-string-user-on-integers", lambda e: fit(e).partial_fit(
        e.iloc[:1].assign(user="7", timestamp=e["timestamp"].max())),
     TypeError, r"X\['user'\] holds string labels, but the model's users are "
                r"numeric"),
    ("fit-time-parameter-set-after-fit", lambda e: _quiet(lambda: fit(e).set_params(
        alpha=5.0).score(e)), ValueError,
     r"alpha=5.0 was set after fit, but the model was fitted with alpha=1.0"),
    ("copy-history-set-after-fit-then-save", lambda e: rnn().fit(e).set_params(
        copy_history=True).save("/nonexistent/model.skcrnn"), ValueError,
     "copy_history=True was set after fit"),
    ("negative-power-beyond-one", lambda e: rnn(loss="sampled", n_negatives=2,
                                                negative_power=200.0).fit(e),
     InvalidParameterError, "'negative_power' parameter"),
    ("initial-state-beyond-the-cells-range", lambda e: rnn(initial_state=1e39).fit(e),
     InvalidParameterError, "'initial_state' parameter"),
]


def _quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


@pytest.mark.parametrize("case, call, error, message", FRAME_CASES,
                         ids=[c[0] for c in FRAME_CASES])
def test_bad_input_is_rejected_clearly(case, call, error, message):
    events = random_events()
    untouched = events.copy()
    with pytest.raises(error, match=message) as raised:
        call(events)
    assert type(raised.value) is error
    pd.testing.assert_frame_equal(events, untouched)


def test_catalogue_is_large_enough():
    assert len(FRAME_CASES) >= 40


def test_predict_proba_refuses_huge_requests(monkeypatch):
    events = random_events()
    model = fit(events)
    monkeypatch.setattr(base_module, "MAX_PREDICT_PROBA_CELLS", 100)
    with pytest.raises(ValueError, match="use score_samples.*recommend"):
        model.predict_proba(events)


# ---------------------------------------------------------------- must work
@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=lambda e: type(e).__name__)
def test_one_user_one_event(estimator):
    events = pd.DataFrame({"user": ["u"], "item": ["i"], "timestamp": [0]})
    model = type(estimator)(**estimator.get_params()).fit(events)
    np.testing.assert_allclose(model.predict_proba(events), [[1.0]])
    assert model.score(events) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=lambda e: type(e).__name__)
def test_duplicate_timestamps_keep_row_order(estimator):
    events = pd.DataFrame({"user": 1, "item": ["a", "b", "a", "c", "b", "a"] * 3,
                           "timestamp": 5})
    model = type(estimator)(**estimator.get_params()).fit(events)
    probe = pd.DataFrame({"user": [1, 1, 1], "item": ["c", "a", "b"],
                          "timestamp": [9, 9, 9]})
    for rows in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        tied = probe.iloc[rows]
        # ties are resolved by row order: as if times increased down the frame
        ticked = tied.assign(timestamp=[9, 10, 11])
        np.testing.assert_array_equal(model.score_samples(tied),
                                      model.score_samples(ticked))


def test_recommend_accepts_numpy_booleans():
    model = fit(random_events())
    for flag in (False, True):
        pd.testing.assert_frame_equal(
            model.recommend([100, 101], k=3, exclude_seen=np.bool_(flag)),
            model.recommend([100, 101], k=3, exclude_seen=flag))


@pytest.mark.parametrize("ids", [[-5, -1, -7], [2 ** 62, 2 ** 62 + 1, -(2 ** 62)]])
def test_negative_and_huge_integer_ids(ids):
    events = random_events(str_items=False)
    events["user"] = np.asarray(ids)[events["user"].to_numpy() % 3]
    events["item"] = events["item"].astype(np.int64) * 2 ** 40 - 3
    model = BigramRecommender().fit(events)
    assert set(model.users_) == set(ids)
    recs = model.recommend(ids[:1], k=2)
    assert recs["user"].tolist() == [ids[0]] * 2
    assert np.isfinite(model.score_samples(events)).all()


@pytest.mark.parametrize("handle_unknown", ["ignore", "error"])
def test_unknown_users_and_items_under_both_policies(handle_unknown):
    events = random_events()
    model = BigramRecommender(handle_unknown=handle_unknown).fit(events)
    odd = pd.DataFrame({"user": [100, -1], "item": ["zzz", "i1"], "timestamp": [1, 2]})
    if handle_unknown == "error":
        with pytest.raises(ValueError, match="unknown to the model"):
            model.score_samples(odd)
        return
    with pytest.warns(UserWarning) as record:
        scores = model.score_samples(odd)
    messages = " ".join(str(w.message) for w in record)
    assert "items unknown" in messages and "user(s) unknown" in messages
    assert np.isnan(scores[0]) and np.isfinite(scores[1])


def test_unknown_user_warning_counts_users_and_their_rows():
    model = BigramRecommender().fit(random_events())
    odd = pd.DataFrame({"user": [-1, -1, -1, -2, -2, 100], "item": "i1",
                        "timestamp": range(6)})
    with pytest.warns(UserWarning, match=r"^2 user\(s\) unknown to the model "
                      r"\(e\.g\. \[-1, -2\]\) hold 5 row\(s\) of X; "):
        model.score_samples(odd)
    with pytest.warns(UserWarning, match=r"^2 user\(s\) unknown to the model "
                      r"\(e\.g\. \[-1, -2\]\); they are recommended from an empty"):
        model.recommend([-1, 100, -2], k=2)
