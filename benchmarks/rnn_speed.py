"""Training speed of the collaborative GRU: seconds per epoch, events/s, memory.

Three benchmarks (issue 6), each printing its figures:

``foursquare``
    ``../shared/data/foursquare-checkins`` under
    ``preprocess_like_paper(..., "brightkite")`` with the paper's Brightkite
    settings (hidden 32, learning rate 0.0075, chunks of 64, 20 users per
    batch), a fixed number of epochs without early stopping; also reports
    the held-out error after those epochs. ``--path both`` runs the fast
    (hand-written BPTT) path and the plain autograd path with the same seed, side by
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

``--bptt autograd`` trains with autograd through the cell's step instead of
the hand-written back-propagation through time (the quality guard of
``--path both``); ``--compile-step`` wraps the cell's step and derivative in
``torch.compile`` (measured for the record: it is not a package option).
``--threads N`` sets the estimator's ``n_jobs`` (default 1, the package's
default); ``--contention`` runs the same fit twice, idle and beside one
competing CPU-bound process, and prints both.

Every figure comes from ``CollaborativeGRURecommender.history_`` (training
seconds of each epoch, validation excluded since there is none); seconds
per epoch is the median over the epochs after the first (the first pays for
warm-up). Peak host memory is the process's maximum resident set size; peak
GPU memory is ``torch.cuda.max_memory_allocated``. Run one benchmark per
process so that peaks are not mixed::

    python benchmarks/rnn_speed.py foursquare --path both --epochs 5
    python benchmarks/rnn_speed.py foursquare --epochs 4 --contention
    python benchmarks/rnn_speed.py brightkite-scale --epochs 3
    python benchmarks/rnn_speed.py lastfm-scale --device cuda --epochs 3
"""

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn._rnn import cells
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


def run(train, test, settings, args, bptt):
    """Fit with hand-written or autograd BPTT; the figures of the run."""
    os.environ["SKCRNN_BPTT"] = bptt
    model = CollaborativeGRURecommender(
        **settings, max_epochs=args.epochs, validation_fraction=0.0,
        device=args.device, n_jobs=args.threads, random_state=args.seed,
        verbose=args.verbose)
    if model.device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model.fit(train)
    wall = time.perf_counter() - started
    seconds = [entry["seconds"] for entry in model.history_]
    steady = seconds[1:] or seconds
    events = training_events(train, settings)
    figures = {
        "bptt": bptt,
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


def _spin(stop):
    """A competing CPU-bound process: pure Python arithmetic until told to stop."""
    value = 0
    while not stop.is_set():
        for i in range(100_000):
            value = (value * 31 + i) % 1_000_003


def compile_steps():
    """Wrap every cell's step and derivative in ``torch.compile``."""
    for cell in (cells.GRUCell, cells.TanhCell):
        for name in ("step", "backward_step"):
            function = getattr(cell, name)
            if isinstance(cell.__dict__[name], staticmethod):
                setattr(cell, name, staticmethod(torch.compile(function, dynamic=True)))
            else:
                setattr(cell, name, torch.compile(function, dynamic=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["foursquare", *SHAPES])
    parser.add_argument("--path", choices=["fused", "autograd", "both"],
                        default="fused")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="the estimator's n_jobs: torch CPU threads "
                             "(default: the package's, 1)")
    parser.add_argument("--users", type=int, default=None,
                        help="generated benchmarks: keep this many users")
    parser.add_argument("--data", default=str(FOURSQUARE))
    parser.add_argument("--bptt", choices=["manual", "autograd"], default="manual",
                        help="hand-written back-propagation through time or "
                             "autograd through the cell's step")
    parser.add_argument("--compile-step", action="store_true",
                        help="torch.compile the cell's step and derivative")
    parser.add_argument("--contention", action="store_true",
                        help="also run beside one competing CPU-bound process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()
    if args.compile_step:
        compile_steps()

    train, test, settings = load(args.benchmark, args)
    print(f"{args.benchmark}: {train['user'].nunique():,} users, "
          f"{train['item'].nunique():,} items, {len(train):,} training events; "
          f"settings {settings}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"{platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"step {'compiled by torch.compile' if args.compile_step else 'eager'}")
    paths = {"fused": [args.bptt], "autograd": ["autograd"],
             "both": ["manual", "autograd"]}[args.path]
    results = [run(train, test, settings, args, bptt) for bptt in paths]
    if args.contention:
        stop = multiprocessing.Event()
        rival = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
        rival.start()
        try:
            busy = run(train, test, settings, args, paths[0])
        finally:
            stop.set()
            rival.join()
        busy["bptt"] += " (beside a CPU-bound process)"
        results.append(busy)
    results[-1]["peak host MiB (process)"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for figures in results:
        print()
        for name, value in figures.items():
            shown = f"{value:,.4f}" if isinstance(value, float) else value
            print(f"  {name:>24}: {shown}")
    if args.contention:
        idle, busy = results[0], results[-1]
        print(f"\ncontention: {busy['s/epoch (median)']:.3f} s/epoch beside a "
              f"CPU-bound process, {idle['s/epoch (median)']:.3f} idle: "
              f"{busy['s/epoch (median)'] / idle['s/epoch (median)']:.2f}x")
    elif len(results) == 2:
        fast, plain = results
        print(f"\nspeed-up manual / autograd BPTT: "
              f"{plain['s/epoch (median)'] / fast['s/epoch (median)']:.2f}x")
        if "held-out error" in fast:
            print(f"held-out error difference (manual - autograd): "
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
