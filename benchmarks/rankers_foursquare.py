"""Full-catalogue ranking on Foursquare: the copy gate against the personal unigram.

The data are ``checkins.tsv.gz`` (SNAP check-in layout) split with
``preprocess_like_paper(events, "brightkite")``; every model ranks the whole
catalogue for each held-out event. The table gives recall@10, MRR and the
paper's error (nats) of:

- the count baselines, their smoothing chosen on a validation split carved
  from the training events (each user's last events, ``suffix_split`` of the
  training part), then refitted on all training events; the personal
  unigram at ``beta=20`` is also shown (the issue's reference row);
- C-GRU, C-tanh and P-GRU with the paper's Brightkite settings (early
  stopping on the last 10 % of each user's training events, then a refit);
- C-GRU with ``copy_history=True``, ``copy_decay`` chosen among
  ``--decays`` by the validation loss of its own early stopping (training
  events only).

The test suffix is scored once per model, at the end; nothing is tuned on
it. Run (about 15 minutes on 2 cores):

    nice python benchmarks/rankers_foursquare.py [--data PATH] [--threads 1]
"""

import argparse
import time

import numpy as np

from skcrnn import (BigramRecommender, CollaborativeGRURecommender,
                    PersonalUnigramRecommender, UnigramRecommender)
from skcrnn.metrics import mrr, recall_at_k
from skcrnn.model_selection import preprocess_like_paper, suffix_split

from rnn_foursquare import DEFAULT_DATA, PAPER_BRIGHTKITE, load_events

COUNT_GRIDS = {
    "unigram": (UnigramRecommender, "alpha", [0.1, 1.0, 10.0]),
    "personal unigram": (PersonalUnigramRecommender, "beta", [1.0, 5.0, 20.0, 50.0]),
    "bigram": (BigramRecommender, "alpha", [10.0, 100.0, 1000.0]),
}
RNN_VARIANTS = {
    "C-GRU": dict(),
    "C-tanh": dict(cell="tanh"),
    "P-GRU": dict(recurrent_weights="shared"),
}


def evaluate(model, test):
    return -model.score(test), recall_at_k(model, test, 10), mrr(model, test)


def tuned_count_model(name, train, validation_split):
    """The count model refitted on ``train`` with the smoothing best on validation."""
    estimator, parameter, grid = COUNT_GRIDS[name]
    inner, valid = validation_split
    losses = [-estimator(**{parameter: value}).fit(inner).score(valid) for value in grid]
    best = grid[int(np.argmin(losses))]
    return estimator(**{parameter: best}).fit(train), f"{parameter}={best:g}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--threads", type=int, default=1,
                        help="the RNNs' n_jobs (torch CPU threads)")
    parser.add_argument("--decays", type=float, nargs="+", default=[1.0, 0.99, 0.97, 0.9])
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, test = preprocess_like_paper(load_events(args.data), "brightkite")
    print(f"{train['user'].nunique():,} users, {train['item'].nunique():,} items, "
          f"{len(train):,} training and {len(test):,} held-out events", flush=True)
    validation_split = suffix_split(train, 0.1, 1, 500)

    rows = []
    for name in COUNT_GRIDS:
        start = time.perf_counter()
        model, params = tuned_count_model(name, train, validation_split)
        rows.append((name, params, *evaluate(model, test),
                     time.perf_counter() - start))
        print(rows[-1], flush=True)
    reference = PersonalUnigramRecommender(beta=20.0).fit(train)
    rows.append(("personal unigram (issue's reference)", "beta=20",
                 *evaluate(reference, test), float("nan")))

    def fit_rnn(**params):
        model = CollaborativeGRURecommender(
            **PAPER_BRIGHTKITE, **params, max_epochs=args.max_epochs, device="cpu",
            n_jobs=args.threads, random_state=args.seed)
        start = time.perf_counter()
        model.fit(train)
        return model, time.perf_counter() - start

    for name, params in RNN_VARIANTS.items():
        model, seconds = fit_rnn(**params)
        described = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
        rows.append((name, f"{described}; best epoch {model.best_epoch_}",
                     *evaluate(model, test), seconds))
        print(rows[-1], flush=True)

    candidates = []
    for decay in args.decays:
        model, seconds = fit_rnn(copy_history=True, copy_decay=decay)
        valid = min(entry["valid_loss"] for entry in model.history_)
        print(f"copy_decay={decay}: validation loss {valid:.4f} "
              f"(best epoch {model.best_epoch_})", flush=True)
        candidates.append((valid, decay, model, seconds))
    valid, decay, model, seconds = min(candidates, key=lambda c: c[0])
    rows.append(("C-GRU + copy gate", f"copy_history=True, copy_decay={decay:g} "
                 f"(validation {valid:.4f}); best epoch {model.best_epoch_}",
                 *evaluate(model, test), seconds))

    print()
    print("| model | parameters | error (nats) | recall@10 | MRR | fit s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, params, error, recall, rank, seconds in rows:
        print(f"| {name} | {params} | {error:.3f} | {recall:.4f} | {rank:.4f} | "
              f"{seconds:.0f} |")
    errors = {row[0]: row[2] for row in rows}
    order = errors["C-GRU"] < errors["C-tanh"] < errors["P-GRU"]
    print(f"\npaper's order C-GRU < C-tanh < P-GRU in error: "
          f"{'holds' if order else 'does not hold'}")


if __name__ == "__main__":
    main()
