"""Latency of a live model: ``update`` with new events, then ``recommend``.

Issue 15's latency check: a fitted C-GRU receives 10 new events for each of
1,000 users (``update``: each user's cached state advances over its 10
events, no replay of the history), then ``recommend(k=10)`` for those users
(from the cached states). Both are timed at two history lengths, to show
that neither depends on how long the histories are. The model is trained for
one epoch only: the latency does not depend on how well it predicts. Prints
the median of ``--repeats`` timings of each call (the first call of each
kind is a warm-up). Run::

    python benchmarks/live_updates.py [--users 1000] [--items 2000]
        [--lengths 50 500] [--threads 1]
"""

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import make_sequences


def fitted_model(n_users, n_items, length, args):
    events = make_sequences(n_users, n_items, n_users * length,
                            random_state=args.seed)
    model = CollaborativeGRURecommender(
        hidden_size=args.hidden, max_epochs=1, validation_fraction=0.0,
        device="cpu", n_jobs=args.threads, random_state=args.seed)
    return model.fit(events), events


def new_events(events, n_new, round_, seed):
    """``n_new`` events per user, after everything seen so far."""
    rng = np.random.default_rng(seed + round_)
    users = np.repeat(np.sort(events["user"].unique()), n_new)
    items = rng.choice(events["item"].unique(), size=len(users))
    start = events["timestamp"].max()
    offsets = np.tile(np.arange(1, n_new + 1), len(users) // n_new)
    step = (pd.Timedelta(seconds=1) if np.issubdtype(events["timestamp"].dtype,
                                                     np.datetime64) else 1)
    times = start + (round_ * n_new + offsets) * step
    return pd.DataFrame({"user": users, "item": items, "timestamp": times})


def timed(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--new-events", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.users} users, {args.items} items, hidden {args.hidden}, "
          f"{args.new_events} new events per user per update, n_jobs={args.threads}")
    print("| history length | update ms (median) | recommend(k=10) ms (median) |")
    print("| ---: | ---: | ---: |")
    for length in args.lengths:
        model, events = fitted_model(args.users, args.items, length, args)
        users = np.sort(events["user"].unique())
        updates, recommends = [], []
        for round_ in range(args.repeats + 1):
            batch = new_events(events, args.new_events, round_, args.seed)
            events = pd.concat([events, batch], ignore_index=True)
            update = timed(lambda: model.update(batch))
            recommend = timed(lambda: model.recommend(users, k=10))
            if round_:  # the first round warms up
                updates.append(update)
                recommends.append(recommend)
        print(f"| {length} | {1e3 * statistics.median(updates):.1f} | "
              f"{1e3 * statistics.median(recommends):.1f} |", flush=True)


if __name__ == "__main__":
    main()
