"""Bad inputs get clear errors naming the problem (the basics; see also the
catalogue of hard inputs)."""

import numpy as np
import pandas as pd
import pytest

from skcrnn import BigramRecommender, UnigramRecommender


@pytest.mark.parametrize("bad, error, match", [
    (lambda e: e.values, TypeError, "pandas DataFrame"),
    (lambda e: e["item"], TypeError, "pandas DataFrame"),
    (lambda e: e.drop(columns="item"), ValueError, "missing the column"),
    (lambda e: e.iloc[:0], ValueError, "no rows"),
    (lambda e: e.assign(item=e["item"].where(e.index != 3)), ValueError, "missing value"),
    (lambda e: e.assign(user=e["user"].astype(object).where(e.index != 2, None)),
     ValueError, "missing value"),
    (lambda e: e.assign(timestamp=e["timestamp"].where(e.index != 1)), ValueError,
     "missing time"),
    (lambda e: e.assign(timestamp=e["timestamp"].astype(str)), TypeError,
     "numeric or datetime64"),
    (lambda e: e.assign(item=[1 if i % 2 else "a" for i in range(len(e))]),
     TypeError, "one kind"),
    (lambda e: pd.concat([e, e[["item"]]], axis=1), ValueError, "duplicated"),
])
def test_bad_events_are_rejected_clearly(events, bad, error, match):
    bad_frame = bad(events)
    with pytest.raises(error, match=match):
        UnigramRecommender().fit(bad_frame)


def test_bad_parameters_are_rejected_in_fit(events):
    model = BigramRecommender(alpha=-1)  # __init__ does not validate
    with pytest.raises(ValueError, match="alpha"):
        model.fit(events)
    with pytest.raises(ValueError, match="handle_unknown"):
        UnigramRecommender(handle_unknown="skip").fit(events)


def test_recommend_arguments(events):
    model = UnigramRecommender().fit(events)
    with pytest.raises(ValueError, match="k must be between"):
        model.recommend([100], k=0)
    with pytest.raises(ValueError, match="k must be between"):
        model.recommend([100], k=model.n_items_ + 1)
    with pytest.raises(TypeError, match="k must be an integer"):
        model.recommend([100], k=2.5)
    with pytest.raises(ValueError, match="empty"):
        model.recommend([], k=2)


def test_tz_aware_times_and_huge_ids_work(events):
    events = events.assign(timestamp=events["timestamp"].dt.tz_localize("Europe/Zurich"),
                           user=events["user"].astype(np.int64) * 10 ** 15)
    model = BigramRecommender().fit(events)
    assert np.isfinite(model.score_samples(events)).all()
