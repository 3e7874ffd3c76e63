"""Refit, ``warm_start`` and ``partial_fit`` side by side: half-and-half and rolling windows.

Issue 26. Two experiments, each printing one table per data set with every
way's error (nats, the mean over users of their mean negative
log-likelihood, ``-model.score``) and its seconds of training:

``half``
    Under the paper's protocol (``preprocess_like_paper``: filters, then
    each user's last events held out as the test), the training events are
    cut at the middle of their time span. *refit*: one fit on all training
    events. *warm_start*: the model of the first half, ``fit`` again on all
    training events with ``warm_start=True``. *partial_fit*: the model of
    the first half, then ``partial_fit`` on the second half. Seconds are
    the call's alone (the model of the first half exists already in a live
    system) and, in the last column, the first half's fit plus the call.
    Goal for ``partial_fit`` at its defaults: within 0.15 nats of the refit,
    in at most 2/3 of its time.
``rolling``
    As ``rolling_window.py``: the log cut into ``--slices`` slices of
    consecutive time with equal numbers of events; at each step ``t``,
    *refit* fits slices ``0..t`` from scratch, *warm_start* fits them
    starting from its model of the previous step, *partial_fit* calls
    ``partial_fit`` on slice ``t`` (the first call is a fit); all are scored
    on slice ``t + 1``. Prints the means over the steps and the total
    training time. Goal for ``partial_fit``: within 0.1 nats of the refits,
    in at most 1/5 of their time.

The C-GRU runs with the paper's Brightkite settings and ``random_state=0``,
on the CPU with one torch thread. ``--partial`` adds ``partial_fit`` rows
for other ``partial_epochs,replay_epochs`` pairs (``auto`` or a count), each
from its own copy of the same model::

    nice python benchmarks/live_three_ways.py half foursquare generated \\
        --partial defaults auto,auto,norefit auto,0 1,4 1,0
    nice python benchmarks/live_three_ways.py rolling foursquare generated \\
        --copy-decay 0.97 --partial defaults 1,4
"""

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import load_snap_checkins, make_sequences
from skcrnn.model_selection import EventFilter, preprocess_like_paper, suffix_split

FOURSQUARE = (Path(__file__).resolve().parents[2] / "shared" / "data"
              / "foursquare-checkins" / "checkins.tsv.gz")
PAPER_BRIGHTKITE = dict(hidden_size=32, learning_rate=0.0075, rho=0.997,
                        chunk_size=64, batch_size=20)


def prototype(args):
    copy_gate = {} if args.copy_decay is None else dict(copy_history=True,
                                                        copy_decay=args.copy_decay)
    return CollaborativeGRURecommender(**PAPER_BRIGHTKITE, random_state=0, n_jobs=1,
                                       device="cpu", **copy_gate)


def variants(args):
    """``(label, params)`` of each ``partial_fit`` row."""
    rows = []
    for spec in args.partial:
        if spec == "defaults":
            rows.append(("partial_fit (defaults)", {}))
            continue
        fields = spec.split(",")
        values = [value if value == "auto" else int(value) for value in fields[:2]]
        params = dict(partial_epochs=values[0], replay_epochs=values[1])
        label = f"partial_fit ({values[0]}, {values[1]}"
        if fields[2:] == ["norefit"]:
            params["refit"] = False
            label += ", refit=False"
        rows.append((label + ")", params))
    return rows


def quiet(call, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # items and users unknown to a model
        return call(*args)


def timed(call, *args):
    started = time.perf_counter()
    quiet(call, *args)
    return time.perf_counter() - started


def error(model, events):
    return quiet(lambda: -model.score(events))


def cached_fit(base, events, args, key):
    """A fit of ``base`` on ``events`` and its seconds, read from ``--cache`` if there."""
    if args.cache is None:
        model = copy.deepcopy(base)
        return model, timed(model.fit, events)
    path = Path(args.cache) / f"{key}-{args.copy_decay}.pt"
    if path.exists():
        return type(base).load(path), json.loads(path.with_suffix(".json").read_text())
    model = copy.deepcopy(base)
    seconds = timed(model.fit, events)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps(seconds))
    return model, seconds


def first_half(train):
    times = train["timestamp"]
    cut = times.min() + (times.max() - times.min()) / 2
    return train[times <= cut], train[times > cut]


def passes(model):
    """Passes of the last partial_fit call: ``new(best)+replay(best)``."""
    entry = model.partial_history_[-1]

    def stage(epochs, best):
        return f"{len(epochs)}" + ("" if best is None else f"({best})")
    return (stage(entry["epochs"], entry.get("best_epoch")) + "+"
            + stage(entry["replay_epochs"], entry.get("replay_best_epoch"))
            + "+" * bool(entry.get("refit_epochs")) + "1" * bool(entry.get("refit_epochs")))


def half(name, args):
    if name == "foursquare":
        train, test = preprocess_like_paper(load_snap_checkins(args.data), "brightkite")
    else:
        train, test = suffix_split(make_sequences(200, 80, 40_000,
                                                  random_state=args.seed))
    first, second = first_half(train)
    base = prototype(args)
    print(f"\n{name}, half and half: {len(train)} training events ({len(first)} "
          f"in the first half), {train['user'].nunique()} users, "
          f"{train['item'].nunique()} items; {len(test)} test events; {base!r}")
    print("| way | error (nats) | vs refit | s (call) | s (with first half) "
          "| / refit | epochs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    refit, refit_seconds = cached_fit(base, train, args, f"{name}-refit")
    refit_error = error(refit, test)

    def row(label, nats, seconds, total, epochs):
        print(f"| {label} | {nats:.3f} | {nats - refit_error:+.3f} | {seconds:.1f} "
              f"| {total:.1f} | {total / refit_seconds:.2f} | {epochs} |", flush=True)
    row("refit on all", refit_error, refit_seconds, refit_seconds,
        f"{refit.best_epoch_}/{refit.n_iter_}")
    halfway, half_seconds = cached_fit(base, first, args, f"{name}-half")
    row("first half only", error(halfway, test), half_seconds, half_seconds,
        f"{halfway.best_epoch_}/{halfway.n_iter_}")
    warm = copy.deepcopy(halfway).set_params(warm_start=True)
    seconds = timed(warm.fit, train)
    row("warm_start fit on all", error(warm, test), seconds, half_seconds + seconds,
        f"{warm.best_epoch_}/{warm.n_iter_}")
    for label, params in variants(args):
        streamed = copy.deepcopy(halfway).set_params(**params)
        seconds = timed(streamed.partial_fit, second)
        row(label, error(streamed, test), seconds, half_seconds + seconds,
            passes(streamed))
    print("(epochs: fit: best/run with validation; partial_fit: passes over the new "
          "events + over every history, the best pass in parentheses for 'auto')")


def time_slices(events, n_slices):
    ordered = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    bounds = np.linspace(0, len(ordered), n_slices + 1).astype(int)
    return [ordered.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def rolling(name, args):
    if name == "foursquare":
        events = EventFilter(min_entropy=2.5).fit_transform(load_snap_checkins(args.data))
    else:
        events = make_sequences(200, 80, 40_000, random_state=args.seed)
    slices = time_slices(events, args.slices)
    base = prototype(args)
    print(f"\n{name}, rolling windows: {len(events)} events in {args.slices} "
          f"slices; {base!r}")
    labels = ["refit", "warm_start"] + [label for label, _ in variants(args)]
    models = [None, None] + [copy.deepcopy(base).set_params(**params)
                             for _, params in variants(args)]
    errors = np.zeros((args.slices - 1, len(labels)))
    seconds = np.zeros_like(errors)
    for t in range(args.slices - 1):
        seen = pd.concat(slices[:t + 1], ignore_index=True)
        models[0] = copy.deepcopy(base)
        seconds[t, 0] = timed(models[0].fit, seen)
        if models[1] is None:
            models[1] = copy.deepcopy(base).set_params(warm_start=True)
        seconds[t, 1] = timed(models[1].fit, seen)
        for j in range(2, len(labels)):
            seconds[t, j] = timed(models[j].partial_fit, slices[t])
        errors[t] = [error(model, slices[t + 1]) for model in models]
        print(f"t={t}: " + ", ".join(f"{label} {e:.3f} ({s:.1f} s)" for label, e, s
                                     in zip(labels, errors[t], seconds[t])), flush=True)
    print("| way | mean next-slice error | vs refit | training s | / refit |")
    print("| --- | ---: | ---: | ---: | ---: |")
    mean, total = errors.mean(axis=0), seconds.sum(axis=0)
    for j, label in enumerate(labels):
        print(f"| {label} | {mean[j]:.3f} | {mean[j] - mean[0]:+.3f} | {total[j]:.1f} "
              f"| {total[j] / total[0]:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["half", "rolling", "both"])
    parser.add_argument("datasets", nargs="*", default=["foursquare", "generated"],
                        choices=["foursquare", "generated"])
    parser.add_argument("--partial", nargs="+", default=["defaults"],
                        help="partial_fit rows: 'defaults' or "
                             "partial_epochs,replay_epochs (each 'auto' or a count)")
    parser.add_argument("--copy-decay", type=float, default=None,
                        help="the C-GRU with copy_history=True and this copy_decay")
    parser.add_argument("--cache", default=None,
                        help="half: a folder where the refit and the first half's "
                             "model (and their seconds) are saved, and read back "
                             "by the next run")
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--data", default=FOURSQUARE,
                        help="the Foursquare check-ins (SNAP layout)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random_state of the generated log")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.datasets:
        if args.experiment in ("half", "both"):
            half(name, args)
        if args.experiment in ("rolling", "both"):
            rolling(name, args)


if __name__ == "__main__":
    main()
