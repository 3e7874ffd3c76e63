"""Fit and score the MF and HMM recommenders on 1,000,000 generated events.

The events come from ``make_sequences(n_users=1000, n_items=20000,
n_events=1_000_000)``. Each model runs in its own process so that the peak
resident memory (``resource.getrusage``) is its own; the figures printed are
the seconds to ``fit`` on all events, to ``score_samples`` all events (as
continuations of the users' histories), and to ``recommend`` 10 items to
every user (the full-distribution path), with events/s for fit and scoring.
Run:

    python benchmarks/mf_hmm_scale.py [--n-events 1000000] [--hmm-iter 20]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def run_one(args):
    from skcrnn import HMMRecommender, MatrixFactorizationRecommender
    from skcrnn.datasets import make_sequences

    events = make_sequences(n_users=args.n_users, n_items=args.n_items,
                            n_events=args.n_events, random_state=0)
    if args.model == "mf":
        model = MatrixFactorizationRecommender(n_factors=32, random_state=0)
    else:
        model = HMMRecommender(n_states=20, n_iter=args.hmm_iter, tol=-np.inf,
                               random_state=0)
    start = time.perf_counter()
    model.fit(events)
    fitted = time.perf_counter()
    scores = model.score_samples(events)
    scored = time.perf_counter()
    model.recommend(model.users_, k=10)
    recommended = time.perf_counter()
    assert np.isfinite(scores).all()
    print(json.dumps({
        "model": repr(model).replace("\n", " "),
        "n_items": int(model.n_items_),
        "fit_s": fitted - start,
        "score_s": scored - fitted,
        "recommend_s": recommended - scored,
        "mean_log_proba": float(scores.mean()),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-events", type=int, default=1_000_000)
    parser.add_argument("--n-users", type=int, default=1_000)
    parser.add_argument("--n-items", type=int, default=20_000)
    parser.add_argument("--hmm-iter", type=int, default=20,
                        help="EM iterations of the 20-state HMM (all run)")
    parser.add_argument("--model", choices=["mf", "hmm"],
                        help="run one model in this process (used internally)")
    args = parser.parse_args()
    if args.model:
        return run_one(args)
    print(f"{args.n_events:,} events, {args.n_users:,} users, up to "
          f"{args.n_items:,} items; each model in its own process")
    print(f"{'model':<6} {'fit s':>7} {'fit ev/s':>10} {'score s':>8} "
          f"{'score ev/s':>11} {'recommend s':>12} {'peak MiB':>9}")
    for name in ("mf", "hmm"):
        child = subprocess.run([sys.executable, __file__, "--model", name,
                                *sys.argv[1:]], check=True, capture_output=True,
                               text=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        n = args.n_events
        print(f"{name:<6} {result['fit_s']:7.1f} {n / result['fit_s']:10,.0f} "
              f"{result['score_s']:8.2f} {n / result['score_s']:11,.0f} "
              f"{result['recommend_s']:12.2f} {result['peak_mib']:9,.0f}   "
              f"{result['model']}")


if __name__ == "__main__":
    main()
