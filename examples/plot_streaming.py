"""
Following a growing log: refit, ``warm_start`` or ``partial_fit``
=================================================================

Activity logs never stop growing. When a new slice of events arrives, a
neural recommender can follow it in three ways:

- **refit**: ``fit`` on every event so far, from scratch (the reference,
  and the most expensive);
- **warm_start**: ``fit`` on every event so far with ``warm_start=True``,
  starting from the model's current network and optimizer statistics
  (the same validation split, early stopping and refit as any ``fit``);
- **partial_fit**: :meth:`~skcrnn.CollaborativeGRURecommender.partial_fit`
  on the new slice only: it adds the new users and items, appends the
  events to the users' histories and continues learning from where it
  stands. With its defaults (``partial_epochs="auto"``,
  ``replay_epochs="auto"``) it decides how long to train: passes over the
  new events, then over every stored history, each until the loss of the
  held-out last events of the new slice stops improving.

(:meth:`~skcrnn.CollaborativeGRURecommender.update` only appends events,
without learning, which is what serving does between trainings.)

Here a generated log is cut into eight slices of consecutive time. After
each slice, the three models predict the next slice.
"""

import time
import warnings

import matplotlib.pyplot as plt
import pandas as pd

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import make_sequences

events = make_sequences(n_users=40, n_items=40, n_events=8000, random_state=2)
events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
slices = [events.iloc[i * 1000:(i + 1) * 1000] for i in range(8)]
settings = dict(hidden_size=16, learning_rate=0.03, max_epochs=8, random_state=0)

warm = CollaborativeGRURecommender(**settings, warm_start=True)
streamed = CollaborativeGRURecommender(**settings)
rows = []


def timed(call, *args):
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


for t in range(len(slices) - 1):
    seen = pd.concat(slices[:t + 1], ignore_index=True)
    refit = CollaborativeGRURecommender(**settings)
    seconds = {"refit": timed(refit.fit, seen), "warm_start": timed(warm.fit, seen),
               "partial_fit": timed(streamed.partial_fit, slices[t])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # users or items first seen next
        rows.append({"slice": t + 1, "refit": -refit.score(slices[t + 1]),
                     "warm_start": -warm.score(slices[t + 1]),
                     "partial_fit": -streamed.score(slices[t + 1]),
                     **{f"{way} s": s for way, s in seconds.items()}})
results = pd.DataFrame(rows).set_index("slice")
print(results.round(3).to_string())

# %%
# The next slice's error (nats, lower is better) and each way's total
# training time. On this small log the two incremental ways stay close to
# the refits at about half of their time (refits of a larger log run many
# more epochs, and the gap in time grows); ``partial_fit`` trains on the
# new slice (and rehearses the stored histories) only as long as the
# held-out last events of the slice improve. For a fixed cost per call
# instead, set ``partial_epochs`` and ``replay_epochs`` to counts. The
# live-models page has the same comparison on Foursquare.
fig, ax = plt.subplots(figsize=(6, 3.5))
results[["refit", "warm_start", "partial_fit"]].plot(ax=ax, marker="o")
ax.set_xlabel("next slice")
ax.set_ylabel("held-out error (nats)")
ax.set_title(", ".join(f"{way} {results[f'{way} s'].sum():.1f} s"
                       for way in ("refit", "warm_start", "partial_fit")),
             fontsize=10)
fig.tight_layout()
print(results[["refit", "warm_start", "partial_fit"]].mean().round(3).to_string())
