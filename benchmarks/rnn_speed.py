"""Training speed of the collaborative GRU: seconds per epoch, events/s, memory.

Three benchmarks (issue 6), each printing its figures:

``foursquare``
    ``../shared/data/foursquare-checkins`` under
    ``preprocess_like_paper(..., "brightkite")`` with the paper's Brightkite
    settings (hidden 32, learning rate 0.0075, chunks of 64, 20 users per
    batch), a fixed number of epochs without early stopping; also reports
    the held-out error after those epochs. ``--path both`` runs the fast
    (fused) path and the plain autograd path with the same seed, side by
    side, and prints the difference of their errors (the quality guard).
``brightkite-scale``
    generated data of the paper's Brightkite size after preprocessing: 1,679
    users, 23,243 items, 600,000 events, hidden 32.
``lastfm-scale``
    generated data of the paper's Last.fm size: 954 users, 48,188 items,
    4,300,000 events, hidden 128, learning rate 0.01, at most 80 chunks of
    64 events per user in training. ``--users`` keeps that many users (the
    same per-user lengths and vocabulary) where a full epoch would take too
    long; the full-size epoch is then extrapolated from the events per
    second, and printed as such.

The fused path compiles the recurrence's C++ loops on its first run on a
machine (about half a minute, before the first epoch); ``SKCRNN_NATIVE=0``
(or ``--loops python``) runs the same fused path with the loops in Python
instead, and ``--products torch`` its output layer with torch's own products.

Every figure comes from ``CollaborativeGRURecommender.history_`` (training
seconds of each epoch, validation excluded since there is none); seconds
per epoch is the median over the epochs after the first (the first pays for
warm-up). Peak host memory is the process's maximum resident set size; peak
GPU memory is ``torch.cuda.max_memory_allocated``. Run one benchmark per
process so that peaks are not mixed::

    python benchmarks/rnn_speed.py foursquare --path both --epochs 5
    python benchmarks/rnn_speed.py brightkite-scale --epochs 3
    python benchmarks/rnn_speed.py lastfm-scale --device cuda --epochs 3
"""

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._rnn import _fused, _native, _training
from skcrnn.datasets import load_snap_checkins, make_sequences
from skcrnn.model_selection import preprocess_like_paper, suffix_split

FOURSQUARE = (Path(__file__).resolve().parents[2] / "shared" / "data"
              / "foursquare-checkins" / "checkins.tsv.gz")
BRIGHTKITE = dict(hidden_size=32, learning_rate=0.0075, rho=0.997, chunk_size=64,
                  batch_size=20)
LASTFM = dict(hidden_size=128, learning_rate=0.01, rho=0.997, chunk_size=64,
              batch_size=20, max_train_chunks=80)
SHAPES = {"brightkite-scale": (1679, 23243, 600_000),
          "lastfm-scale": (954, 48188, 4_300_000)}


def load(benchmark, args):
    """(train, test or None, settings) of a benchmark."""
    if benchmark == "foursquare":
        train, test = preprocess_like_paper(load_snap_checkins(args.data), "brightkite")
        return train, test, BRIGHTKITE
    n_users, n_items, n_events = SHAPES[benchmark]
    events = make_sequences(n_users, n_items, n_events, random_state=args.seed)
    if args.users is not None:
        keep = np.sort(events["user"].unique())[:args.users]
        events = events[events["user"].isin(keep)]
    train, test = suffix_split(events)
    settings = BRIGHTKITE if benchmark == "brightkite-scale" else LASTFM
    return train, test, settings


def training_events(train, settings):
    """Events an epoch trains on: each user's last ``max_train_chunks`` chunks."""
    lengths = train.groupby("user").size()
    if settings.get("max_train_chunks") is not None:
        lengths = lengths.clip(upper=settings["max_train_chunks"] * settings["chunk_size"])
    return int(lengths.sum())


def run(train, test, settings, args, fused):
    """Fit with the fused or the autograd path; the figures of the run."""
    _training.FUSED = fused
    model = CollaborativeGRURecommender(
        **settings, max_epochs=args.epochs, validation_fraction=0.0,
        device=args.device, random_state=args.seed, verbose=args.verbose)
    if model.device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model.fit(train)
    wall = time.perf_counter() - started
    seconds = [entry["seconds"] for entry in model.history_]
    steady = seconds[1:] or seconds
    events = training_events(train, settings)
    figures = {
        "path": "fused" if fused else "autograd",
        "device": model.device_,
        "dtype": str(model.network_.item_input.dtype).replace("torch.", ""),
        "epochs": len(seconds),
        "s/epoch (median)": statistics.median(steady),
        "s/epoch (all)": " ".join(f"{s:.2f}" for s in seconds),
        "training events": events,
        "events/s": events / statistics.median(steady),
        "fit wall s": wall,
        "final train loss": model.history_[-1]["train_loss"],
    }
    if test is not None:
        figures["held-out error"] = -model.score(test)
    if model.device_.startswith("cuda"):
        figures["peak GPU MiB"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["foursquare", *SHAPES])
    parser.add_argument("--path", choices=["fused", "autograd", "both"],
                        default="fused")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--users", type=int, default=None,
                        help="generated benchmarks: keep this many users")
    parser.add_argument("--data", default=str(FOURSQUARE))
    parser.add_argument("--loops", choices=["compiled", "python"], default="compiled",
                        help="fused path: the recurrence's loops compiled (C++) "
                             "or in Python")
    parser.add_argument("--products", choices=["onednn", "torch"], default="onednn",
                        help="fused path on CPU: float32 output-layer products "
                             "through oneDNN or torch.mm (MKL)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    _native.ENABLED = args.loops == "compiled"
    _fused.ONEDNN = args.products == "onednn"
    _native.load()  # compile (first run on a machine) before anything is timed

    train, test, settings = load(args.benchmark, args)
    print(f"{args.benchmark}: {train['user'].nunique():,} users, "
          f"{train['item'].nunique():,} items, {len(train):,} training events; "
          f"settings {settings}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"{platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"recurrence loops: {_native.status()}; CPU float32 output products: "
          f"{'oneDNN' if _fused.ONEDNN and _fused._ONEDNN_LINEAR else 'torch.mm'}; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    paths = {"fused": [True], "autograd": [False], "both": [True, False]}[args.path]
    results = [run(train, test, settings, args, fused) for fused in paths]
    results[-1]["peak host MiB (process)"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for figures in results:
        print()
        for name, value in figures.items():
            shown = f"{value:,.4f}" if isinstance(value, float) else value
            print(f"  {name:>24}: {shown}")
    if len(results) == 2:
        fast, plain = results
        print(f"\nspeed-up fused / autograd: "
              f"{plain['s/epoch (median)'] / fast['s/epoch (median)']:.2f}x")
        if "held-out error" in fast:
            print(f"held-out error difference (fused - autograd): "
                  f"{fast['held-out error'] - plain['held-out error']:+.4f}")
    if args.users is not None:
        n_users, _, n_events = SHAPES[args.benchmark]
        scale = n_users / train["user"].nunique()
        full = results[0]["training events"] * scale
        print(f"\nEXTRAPOLATED to all {n_users} users (~{full:,.0f} training events): "
              f"{full / results[0]['events/s']:,.1f} s/epoch at the measured "
              f"events/s (not measured)")


if __name__ == "__main__":
    main()
