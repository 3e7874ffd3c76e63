"""Fit and score the count baselines on 1,000,000 generated events.

Prints, for each model, the seconds to fit and to score (``score_samples``
over all events) and the scoring throughput. Run:

    .venv/bin/python benchmarks/count_baselines.py [--n-events 1000000]
"""

import argparse
import time

import numpy as np
import pandas as pd

from skcrnn import (BigramRecommender, PersonalUnigramRecommender,
                    UniformRecommender, UnigramRecommender)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-events", type=int, default=1_000_000)
    parser.add_argument("--n-users", type=int, default=1_000)
    parser.add_argument("--n-items", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # Zipf-like popularity so that counts look like a real log
    popularity = 1.0 / np.arange(1, args.n_items + 1)
    events = pd.DataFrame({
        "user": rng.integers(0, args.n_users, args.n_events),
        "item": rng.choice(args.n_items, args.n_events, p=popularity / popularity.sum()),
        "timestamp": pd.Timestamp("2020-01-01")
        + pd.to_timedelta(rng.integers(0, 10 ** 8, args.n_events), unit="s"),
    })
    print(f"{args.n_events:,} events, {args.n_users:,} users, "
          f"{events['item'].nunique():,} items")
    print(f"{'model':<40} {'fit s':>8} {'score s':>8} {'events/s':>12}")
    for model in (UniformRecommender(), UnigramRecommender(),
                  PersonalUnigramRecommender(), BigramRecommender()):
        start = time.perf_counter()
        model.fit(events)
        fitted = time.perf_counter()
        scores = model.score_samples(events)
        scored = time.perf_counter()
        assert np.isfinite(scores).all()
        print(f"{model!r:<40} {fitted - start:8.2f} {scored - fitted:8.2f} "
              f"{len(events) / (scored - fitted):12,.0f}")


if __name__ == "__main__":
    main()
