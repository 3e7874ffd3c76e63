"""``warm_start``: fit on the first half, then a warm fit on everything, against a cold fit.

Issue 26, part 1. Under the paper's protocol (``preprocess_like_paper``:
filters, then each user's last events held out), the training events are
cut at the middle of their time span. Model W is fit on the events before
the cut, then, with ``warm_start=True``, ``fit`` on all training events
(starting from W's network and optimizer statistics); model C is fit on all
training events from scratch. Both are scored on the held-out events (the
paper's error, nats: ``-model.score(test)``). Prints a table with each
fit's error and seconds. Goal: the warm fit within 0.05 nats of the cold
fit, in at most half of its time (the warm fit alone: in a live system the
model of the first half already exists; the table also gives half + warm).

The C-GRU runs with the paper's Brightkite settings and ``random_state=0``,
on the CPU with one torch thread (``n_jobs=1``).

    nice python benchmarks/warm_start.py foursquare generated
"""

import argparse
import time
import warnings
from pathlib import Path

import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import load_snap_checkins, make_sequences
from skcrnn.model_selection import preprocess_like_paper, suffix_split

FOURSQUARE = (Path(__file__).resolve().parents[2] / "shared" / "data"
              / "foursquare-checkins" / "checkins.tsv.gz")
PAPER_BRIGHTKITE = dict(hidden_size=32, learning_rate=0.0075, rho=0.997,
                        chunk_size=64, batch_size=20)


def load(name, args):
    """``(train, test)`` of the paper's protocol."""
    if name == "foursquare":
        return preprocess_like_paper(load_snap_checkins(args.data), "brightkite")
    events = make_sequences(200, 80, 40_000, random_state=args.seed)
    return suffix_split(events)


def first_half(train):
    """The training events of the first half of the training period."""
    times = train["timestamp"]
    cut = times.min() + (times.max() - times.min()) / 2
    return train[times <= cut]


def timed_fit(model, events):
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(events)
    return time.perf_counter() - started


def error(model, test):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return -model.score(test)


def run(name, args):
    train, test = load(name, args)
    half = first_half(train)
    params = dict(PAPER_BRIGHTKITE, random_state=0, n_jobs=1, device="cpu")

    cold = CollaborativeGRURecommender(**params)
    cold_seconds = timed_fit(cold, train)
    warm = CollaborativeGRURecommender(**params, warm_start=True)
    half_seconds = timed_fit(warm, half)
    half_error = error(warm, test)
    half_epochs = (warm.best_epoch_, warm.n_iter_)
    warm_seconds = timed_fit(warm, train)

    print(f"\n{name}: {len(train)} training events ({len(half)} in the first half), "
          f"{train['user'].nunique()} users, {train['item'].nunique()} items; "
          f"{len(test)} held-out events")
    print(f"{'fit':<34}{'error (nats)':>14}{'seconds':>10}{'epochs':>10}")
    rows = [
        ("cold, all training events", error(cold, test), cold_seconds,
         (cold.best_epoch_, cold.n_iter_)),
        ("first half only", half_error, half_seconds, half_epochs),
        ("warm_start, all training events", error(warm, test), warm_seconds,
         (warm.best_epoch_, warm.n_iter_)),
    ]
    for label, nats, seconds, (best, n_iter) in rows:
        print(f"{label:<34}{nats:>14.3f}{seconds:>10.1f}{f'{best}/{n_iter}':>10}")
    gap = rows[2][1] - rows[0][1]
    print(f"warm - cold: {gap:+.3f} nats; warm fit / cold fit time: "
          f"{warm_seconds / cold_seconds:.2f} (half + warm: "
          f"{(half_seconds + warm_seconds) / cold_seconds:.2f}); goal: within "
          f"0.05 nats in <= 0.5 of the time: "
          f"{'met' if gap <= 0.05 and warm_seconds <= cold_seconds / 2 else 'NOT met'}")
    print("(epochs: best epoch / epochs of the run with validation; the refit "
          "then trains best-epoch epochs on all events)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=["foursquare", "generated"],
                        choices=["foursquare", "generated"])
    parser.add_argument("--data", default=FOURSQUARE,
                        help="the Foursquare check-ins (SNAP layout)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random_state of the generated log")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.datasets:
        run(name, args)


if __name__ == "__main__":
    main()
