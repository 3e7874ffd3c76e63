"""Train C-GRU, C-tanh and P-GRU on Foursquare check-ins under the paper's protocol.

The data are ``checkins.tsv.gz`` (SNAP check-in layout) split with
``preprocess_like_paper(events, "brightkite")``. Every model uses the paper's
Brightkite settings (hidden size 32, learning rate 0.0075, RMSProp decay
0.997, chunks of 64 events, 20 users per batch) and its own early stopping on
a validation suffix carved from the training events (then a refit on all
training events for the best number of epochs): the test suffix is only
scored at the end. Prints a table of the held-out error
(``-model.score(test)``, nats), the best epoch, the epochs run and the
seconds per epoch. Run:

    nice python benchmarks/rnn_foursquare.py [--data PATH] [--threads 2]

The compact per-user weights (``recurrent_weights="basis"``, ``rank`` = K
shared directions) are run on request::

    nice python benchmarks/rnn_foursquare.py --threads 1 --models "basis K=16"
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skcrnn import CollaborativeGRURecommender, UnigramRecommender
from skcrnn.model_selection import preprocess_like_paper

DEFAULT_DATA = (Path(__file__).resolve().parents[2] / "shared" / "data"
                / "foursquare-checkins" / "checkins.tsv.gz")

VARIANTS = {
    "C-GRU (tanh candidate)": dict(cell="gru", recurrent_weights="per_user",
                                   candidate_activation="tanh"),
    "C-GRU (sigmoid candidate)": dict(cell="gru", recurrent_weights="per_user",
                                      candidate_activation="sigmoid"),
    "C-tanh": dict(cell="tanh", recurrent_weights="per_user"),
    "P-GRU (tanh candidate)": dict(cell="gru", recurrent_weights="shared",
                                   candidate_activation="tanh"),
    "P-GRU (sigmoid candidate)": dict(cell="gru", recurrent_weights="shared",
                                      candidate_activation="sigmoid"),
    "low rank r=1": dict(cell="gru", recurrent_weights="low_rank", rank=1,
                         candidate_activation="sigmoid"),
    "low rank r=4": dict(cell="gru", recurrent_weights="low_rank", rank=4,
                         candidate_activation="sigmoid"),
    # the compact per-user weights (issue 27): K shared directions, K floats a user
    "basis K=8": dict(cell="gru", recurrent_weights="basis", rank=8,
                      candidate_activation="sigmoid"),
    "basis K=16": dict(cell="gru", recurrent_weights="basis", rank=16,
                       candidate_activation="sigmoid"),
    "basis K=32": dict(cell="gru", recurrent_weights="basis", rank=32,
                       candidate_activation="sigmoid"),
    "basis K=64": dict(cell="gru", recurrent_weights="basis", rank=64,
                       candidate_activation="sigmoid"),
    "basis K=128": dict(cell="gru", recurrent_weights="basis", rank=128,
                        candidate_activation="sigmoid"),
    "basis K=256": dict(cell="gru", recurrent_weights="basis", rank=256,
                        candidate_activation="sigmoid"),
    "basis K=333": dict(cell="gru", recurrent_weights="basis", rank=333,
                        candidate_activation="sigmoid"),
}
#: run by default: the paper's variants (low rank and basis on request, --models)
DEFAULT_MODELS = [name for name in VARIANTS if not name.startswith(("basis", "low"))]
PAPER_BRIGHTKITE = dict(hidden_size=32, learning_rate=0.0075, rho=0.997,
                        chunk_size=64, batch_size=20)


def load_events(path):
    try:
        from skcrnn.datasets import load_snap_checkins
    except ImportError:
        load_snap_checkins = None
    if load_snap_checkins is not None:
        return load_snap_checkins(path)
    events = pd.read_csv(path, sep="\t", header=None,
                         names=["user", "timestamp", "lat", "lon", "item"],
                         dtype={"item": str})
    events["timestamp"] = pd.to_datetime(events["timestamp"])
    return events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--threads", type=int, default=2,
                        help="the estimators' n_jobs (torch CPU threads)")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        choices=list(VARIANTS), metavar="MODEL")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args()

    train, test = preprocess_like_paper(load_events(args.data), "brightkite")
    print(f"{train['user'].nunique():,} users, {train['item'].nunique():,} items, "
          f"{len(train):,} training and {len(test):,} held-out events")
    unigram = UnigramRecommender(alpha=1.0).fit(train)
    print(f"{unigram!r}: held-out error {-unigram.score(test):.3f}")

    rows = []
    for name in args.models:
        model = CollaborativeGRURecommender(
            **PAPER_BRIGHTKITE, **VARIANTS[name], max_epochs=args.max_epochs,
            device="cpu", n_jobs=args.threads, random_state=args.seed,
            verbose=args.verbose)
        start = time.perf_counter()
        model.fit(train)
        fit_seconds = time.perf_counter() - start
        error = -model.score(test)
        epochs = model.history_ + (model.refit_history_ or [])
        seconds = np.median([entry["seconds"] for entry in epochs])
        refit_epochs = len(model.refit_history_ or [])
        rows.append((name, error, model.best_epoch_, model.n_iter_, refit_epochs,
                     seconds, fit_seconds))
        print(f"{name}: held-out error {error:.3f} (best epoch {model.best_epoch_}, "
              f"{model.n_iter_} + {refit_epochs} epochs, {seconds:.1f} s/epoch)",
              flush=True)
        for entry in model.history_:
            print(f"  epoch {entry['epoch']:2d}  train {entry['train_loss']:.4f}  "
                  f"valid {entry['valid_loss']:.4f}  {entry['seconds']:.1f} s")

    print()
    print("| model | held-out error | best epoch | epochs run (+ refit) | "
          "s/epoch (median) | fit s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, error, best, n_epochs, refit_epochs, seconds, fit_seconds in rows:
        print(f"| {name} | {error:.3f} | {best} | {n_epochs} (+ {refit_epochs}) | "
              f"{seconds:.1f} | {fit_seconds:.0f} |")


if __name__ == "__main__":
    main()
