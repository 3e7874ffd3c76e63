"""
A Pipeline with EventFilter
===========================

:class:`~skcrnn.model_selection.EventFilter` learns, in ``fit``, which items
and users pass the paper's filters (rare items, short or too predictable
users), and ``transform`` keeps their rows. In a ``Pipeline`` the same
filters then apply to the events being scored.
"""

from sklearn.pipeline import Pipeline

from skcrnn import PersonalUnigramRecommender
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import EventFilter, suffix_split

events = make_sequences(n_users=60, n_items=400, n_events=6000, random_state=2)
train, test = suffix_split(events, test_size=0.1)

pipe = Pipeline([
    ("filter", EventFilter(min_item_count=5, min_user_events=20, min_entropy=1.0)),
    ("model", PersonalUnigramRecommender(beta=10)),
]).fit(train)
kept = pipe.named_steps["filter"]
print(f"{len(kept.items_)} of {train['item'].nunique()} items and "
      f"{len(kept.users_)} of {train['user'].nunique()} users pass the filters")
print(f"held-out error: {-pipe.score(test):.3f} nats")
