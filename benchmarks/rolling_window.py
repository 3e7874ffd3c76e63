"""Rolling window: ``partial_fit`` on each new slice against refitting on everything.

Issue 15's benchmark. The log (after the paper's filters, ``EventFilter``)
is cut into ``--slices`` slices of consecutive time with equal numbers of
events. For each ``t``, model A is refit on slices ``0..t``; model B was fit
on slice 0 and has since called ``partial_fit`` on each new slice. Both are
scored on slice ``t + 1`` (the mean over users of their mean negative
log-likelihood, nats; items first seen in that slice are left out, users
first seen there start from the fallback). Prints both errors and both fit
times per step, then the means and the ratio of total fit times. Goal: B
within 0.1 nats of A, at most a fifth of A's time.

    python benchmarks/rolling_window.py foursquare
    python benchmarks/rolling_window.py generated
    python benchmarks/rolling_window.py foursquare --model bigram
    python benchmarks/rolling_window.py foursquare --partial-epochs 10
    python benchmarks/rolling_window.py foursquare --copy-decay 0.97
    python benchmarks/rolling_window.py foursquare --copy-decay 0.97 --replay-epochs 4

``--replay-epochs R``: each ``partial_fit`` call, after its pass over the new
slice, also trains ``R`` epochs over every stored history (rehearsal,
``replay_epochs``), so that the model does not forget the old slices.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone

from skcrnn import BigramRecommender, CollaborativeGRURecommender
from skcrnn.datasets import load_snap_checkins, make_sequences
from skcrnn.model_selection import EventFilter

FOURSQUARE = (Path(__file__).resolve().parents[2] / "shared" / "data"
              / "foursquare-checkins" / "checkins.tsv.gz")
PAPER_BRIGHTKITE = dict(hidden_size=32, learning_rate=0.0075, rho=0.997,
                        chunk_size=64, batch_size=20)


def load(name, args):
    if name == "foursquare":
        events = load_snap_checkins(args.data)
        return EventFilter(min_entropy=2.5).fit_transform(events)
    return make_sequences(200, 80, 40_000, random_state=args.seed)


def time_slices(events, n_slices):
    """Slices of consecutive time with about equal numbers of events."""
    ordered = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    bounds = np.linspace(0, len(ordered), n_slices + 1).astype(int)
    return [ordered.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def model_for(name, args):
    if name == "bigram":
        return BigramRecommender(alpha=100)
    copy = {} if args.copy_decay is None else dict(copy_history=True,
                                                   copy_decay=args.copy_decay)
    return CollaborativeGRURecommender(**PAPER_BRIGHTKITE, max_epochs=args.max_epochs,
                                       partial_epochs=args.partial_epochs,
                                       replay_epochs=args.replay_epochs,
                                       device="cpu", n_jobs=args.threads,
                                       random_state=args.seed, **copy)


def error(model, events):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # items and users first seen in the slice
        return -model.score(events)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_set", choices=["foursquare", "generated"])
    parser.add_argument("--model", choices=["c-gru", "bigram"], default="c-gru")
    parser.add_argument("--data", default=str(FOURSQUARE))
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--partial-epochs", type=int, default=1,
                        help="the recurrent model's passes over each new slice")
    parser.add_argument("--replay-epochs", type=int, default=0,
                        help="the recurrent model's passes over every stored "
                             "history in each partial_fit call")
    parser.add_argument("--copy-decay", type=float, default=None,
                        help="the recurrent model with copy_history=True and "
                             "this copy_decay")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    slices = time_slices(load(args.data_set, args), args.slices)
    prototype = model_for(args.model, args)
    print(f"{args.data_set}: {sum(len(s) for s in slices):,} events in "
          f"{args.slices} slices; {prototype!r}")
    print("| t | refit error | partial_fit error | refit s | partial_fit s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    streamed = clone(prototype)
    rows = []
    for t in range(args.slices - 1):
        started = time.perf_counter()
        refit = clone(prototype).fit(pd.concat(slices[:t + 1], ignore_index=True))
        refit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        streamed.partial_fit(slices[t])
        partial_seconds = time.perf_counter() - started
        row = (t, error(refit, slices[t + 1]), error(streamed, slices[t + 1]),
               refit_seconds, partial_seconds)
        rows.append(row)
        print("| {} | {:.3f} | {:.3f} | {:.1f} | {:.1f} |".format(*row), flush=True)
    rows = np.array(rows)
    print(f"\nmean next-slice error: refit {rows[:, 1].mean():.3f}, partial_fit "
          f"{rows[:, 2].mean():.3f} (difference {rows[:, 2].mean() - rows[:, 1].mean():+.3f})")
    print(f"total fit time: refit {rows[:, 3].sum():.1f} s, partial_fit "
          f"{rows[:, 4].sum():.1f} s ({rows[:, 4].sum() / rows[:, 3].sum():.2f} of refit)")


if __name__ == "__main__":
    main()
