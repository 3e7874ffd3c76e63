"""Each model's training epoch as a multiple of the output layer's floor (issue 28).

Every trained event pays at least for the full-softmax output layer: three
matrix products of ``2·H·I`` flops (the logits, the gradient of the state,
the gradient of the output weights) and ``I`` exponentials, with ``H`` the
hidden size and ``I`` the catalogue. In one run this script

1. measures this machine's one-thread rates (``torch.set_num_threads(1)``,
   restored afterwards): the float32 matmul rate of the three products at
   the shapes the output layer runs them, ``(B, H) x (H, I)``,
   ``(B, I) x (I, H)`` and ``(H, B) x (B, I)``, with ``B`` the rows of one
   output-layer block (the model's rows per optimizer step cut into blocks
   of equal size of at most ``skcrnn._torch.output.BLOCK_CELLS["cpu"] /
   I`` rows); and the ``exp`` rate
   over a ``(B, I)`` tensor. Each figure is the median of repeated timings
   after warm-up (``torch.utils.benchmark.Timer``); each product is timed
   with its operands row-major and as transposed views, and the fastest
   layout counts. The rates are measured before the fits and again after
   them; the floor uses each timing's faster measurement, and the largest
   change between the two is printed (more than 10 %: not a quiet machine);
2. computes the output-layer floor of an epoch on a log::

       floor_seconds = n_train_events * (3 * 2 * H * I / matmul_rate + I / exp_rate)

   where ``3 * 2 * H * I / matmul_rate`` is the sum of the three products'
   measured times per row (the combined rate printed is their total flops
   over their total time);
3. fits each model at its defaults (``CollaborativeGRURecommender()``,
   hidden 32; ``SelfAttentionRecommender()``, hidden 64), on the CPU, one
   thread (``n_jobs=None``), ``random_state=0``, a fixed number of epochs
   without validation or early stopping (``validation_fraction=0.0``: every
   epoch trains on all training events), and prints seconds per epoch (the
   median of ``history_`` over the epochs after the first; the only epoch
   with ``--epochs 1``), training events per second, the held-out error
   after those epochs, and **epoch / floor**.

Logs:

``movielens-shape``
    ``make_sequences(n_users=6040, n_items=3416, n_events=990_350,
    random_state=0)`` then ``suffix_split``: MovieLens-1M's shape, about
    963,000 training events. ``--events N`` generates ``N`` events instead,
    over proportionally fewer users (the same events per user and the same
    catalogue).
``foursquare``
    ``../shared/data/foursquare-checkins/checkins.tsv.gz`` under
    ``preprocess_like_paper(..., "brightkite")``.

``--contention`` fits each model twice, idle and then beside one competing
CPU-bound process (pure Python arithmetic, as ``rnn_speed.py``), and prints
both with their ratio; the floor is the idle machine's. ``--quick`` is a
smoke check: a generated log of 20,000 events (122 users, 3,416 items), one
epoch, shorter rate timings; a figure from it is not a measurement.

Time it on a machine where nothing else runs (the load average is printed
at the start and the end)::

    python benchmarks/roofline.py
    python benchmarks/roofline.py --logs movielens-shape --models c-gru --epochs 3
    python benchmarks/roofline.py --contention
    python benchmarks/roofline.py --quick
    python benchmarks/roofline.py --n-jobs 2   # the fits on two threads

``--set NAME=VALUE`` fits the models with that parameter instead of its
default (for instance ``--set train_stride=50 --set batch_size=13``, the
attention model's windows without overlap). ``--n-jobs N`` fits with
``n_jobs=N`` (the output layer's products on ``N`` threads, the
recurrence's small steps on one); the floor stays one thread's, so that
the ratio shows what the threads buy.
"""

import argparse
import ast
import multiprocessing
import os
import platform
import statistics
from pathlib import Path

import torch
from torch.utils import benchmark

from skcrnn import CollaborativeGRURecommender, SelfAttentionRecommender
from skcrnn._torch.output import BLOCK_CELLS, _block_rows
from skcrnn.datasets import load_snap_checkins, make_sequences
from skcrnn.model_selection import preprocess_like_paper, suffix_split

FOURSQUARE = (Path(__file__).resolve().parents[2] / "shared" / "data"
              / "foursquare-checkins" / "checkins.tsv.gz")
#: MovieLens-1M's shape: users, items, and the events that leave about
#: 963,000 for training after ``suffix_split``.
MOVIELENS_SHAPE = (6040, 3416, 990_350)
QUICK_EVENTS = 20_000
#: Epochs when ``--epochs`` is not given.
DEFAULT_EPOCHS = {"movielens-shape": 2, "foursquare": 4}
MODELS = {"c-gru": CollaborativeGRURecommender,
          "self-attention": SelfAttentionRecommender}


# ---------------------------------------------------------------- the logs

def load(log, args):
    """(description, train, test) of a log."""
    if log == "foursquare":
        train, test = preprocess_like_paper(load_snap_checkins(args.data), "brightkite")
        return "foursquare", train, test
    n_users, n_items, n_events = MOVIELENS_SHAPE
    if args.events is not None:
        n_events = min(n_events, args.events)
    if n_events < MOVIELENS_SHAPE[2]:
        n_users = max(1, round(n_users * n_events / MOVIELENS_SHAPE[2]))
    events = make_sequences(n_users=n_users, n_items=n_items, n_events=n_events,
                            random_state=args.seed)
    train, test = suffix_split(events)
    name = log if n_events == MOVIELENS_SHAPE[2] else f"{log} ({n_events:,} events)"
    return name, train, test


# ------------------------------------------------------------- the rates

class one_thread:
    """torch on one CPU thread inside the block; the caller's count restored."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def _median_seconds(stmt, variables, min_run_time):
    """Median seconds of ``stmt`` over repeated blocks, after warm-up."""
    exec(stmt, {}, variables)  # warm-up: first-call costs, pages touched
    timer = benchmark.Timer(stmt=stmt, globals=variables, num_threads=1)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _layouts(rows, cols, generator):
    """A ``(rows, cols)`` float32 operand: row-major, and as a transposed view."""
    return [torch.randn(rows, cols, generator=generator),
            torch.randn(cols, rows, generator=generator).T]


def matmul_seconds(left_shape, right_shape, min_run_time):
    """Fastest median seconds of one product over its operands' layouts."""
    generator = torch.Generator().manual_seed(0)
    best = float("inf")
    for left in _layouts(*left_shape, generator):
        for right in _layouts(*right_shape, generator):
            out = torch.empty(left_shape[0], right_shape[1])
            best = min(best, _median_seconds(
                "torch.mm(left, right, out=out)",
                {"torch": torch, "left": left, "right": right, "out": out},
                min_run_time))
    return best


def exp_seconds(rows, items, min_run_time):
    """Median seconds of ``exp`` over ``(rows, items)`` logits minus their max."""
    generator = torch.Generator().manual_seed(0)
    logits = -10 * torch.rand(rows, items, generator=generator)
    out = torch.empty_like(logits)
    return _median_seconds("torch.exp(logits, out=out)",
                           {"torch": torch, "logits": logits, "out": out},
                           min_run_time)


def measure_rates(rows, hidden, items, min_run_time):
    """This machine's one-thread output-layer rates at ``(B, H, I)``: seconds per call."""
    with one_thread():
        return {
            "(B,H)x(H,I)": matmul_seconds((rows, hidden), (hidden, items), min_run_time),
            "(B,I)x(I,H)": matmul_seconds((rows, items), (items, hidden), min_run_time),
            "(H,B)x(B,I)": matmul_seconds((hidden, rows), (rows, items), min_run_time),
            "exp": exp_seconds(rows, items, min_run_time),
        }


def as_rates(rows, hidden, items, seconds):
    """Flop/s of each product, the combined matmul rate, and exponentials/s."""
    flops = 2 * rows * hidden * items
    products = {name: t for name, t in seconds.items() if name != "exp"}
    return {"products": {name: flops / t for name, t in products.items()},
            "matmul": len(products) * flops / sum(products.values()),
            "exp": rows * items / seconds["exp"]}


#: (B, H, I) -> the seconds of each timing, once per measurement
_TIMINGS = {}


def rates(rows, hidden, items, min_run_time):
    """The rates at ``(B, H, I)``: measured at the first call, the best so far after."""
    key = (rows, hidden, items)
    if key not in _TIMINGS:
        _TIMINGS[key] = [measure_rates(rows, hidden, items, min_run_time)]
    timings = _TIMINGS[key]
    best = {name: min(t[name] for t in timings) for name in timings[0]}
    return as_rates(rows, hidden, items, best)


def remeasure_rates(min_run_time):
    """Measure every shape's rates again (after the fits); the largest change in %.

    The floor then uses each timing's faster measurement: on a quiet machine
    the two agree, and a large change says the machine was not quiet.
    """
    change = 0.0
    for key, timings in _TIMINGS.items():
        again = measure_rates(*key, min_run_time)
        change = max(change, *(100 * abs(again[name] / timings[0][name] - 1)
                               for name in again))
        timings.append(again)
    return change


def floor_seconds(n_events, hidden, items, measured):
    """The output layer's floor of one epoch over ``n_events`` trained events."""
    return n_events * (3 * 2 * hidden * items / measured["matmul"]
                       + items / measured["exp"])


def block_rows(model, items):
    """``B``: rows of one output-layer block in the model's training on the CPU."""
    if isinstance(model, CollaborativeGRURecommender):
        per_step = model.batch_size * model.chunk_size
    else:
        stride = model.train_stride or max(1, model.max_history // 5)
        per_step = model.batch_size * stride
    return _block_rows(per_step, items, BLOCK_CELLS["cpu"])


# ------------------------------------------------------------- the fits

def _spin(stop):
    """A competing CPU-bound process: pure Python arithmetic until told to stop."""
    value = 0
    while not stop.is_set():
        for i in range(100_000):
            value = (value * 31 + i) % 1_000_003


def fit(name, train, test, epochs, seed, n_jobs=None, params=None):
    """Seconds per epoch, all epochs' seconds and the held-out error of a fit."""
    model = MODELS[name](max_epochs=epochs, validation_fraction=0.0, device="cpu",
                         n_jobs=n_jobs, random_state=seed, **(params or {}))
    model.fit(train)
    seconds = [entry["seconds"] for entry in model.history_]
    return {"s/epoch": statistics.median(seconds[1:] or seconds),
            "epochs": seconds,
            "error": -model.score(test)}


def busy_fit(name, train, test, epochs, seed, n_jobs=None, params=None):
    """:func:`fit` beside one competing CPU-bound process."""
    stop = multiprocessing.Event()
    rival = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    rival.start()
    try:
        return fit(name, train, test, epochs, seed, n_jobs, params)
    finally:
        stop.set()
        rival.join()


# ------------------------------------------------------------- the table

def print_table(rows, contention):
    columns = [("log", "s"), ("model", "s"), ("H", "d"), ("I", "d"), ("B", "d"),
               ("train events", ",d"), ("epochs", "d"), ("s/epoch", ".2f"),
               ("events/s", ",.0f"), ("floor s", ".2f"), ("epoch/floor", ".2f"),
               ("held-out err", ".4f")]
    if contention:
        columns += [("busy s/epoch", ".2f"), ("busy/idle", ".2f"),
                    ("busy/floor", ".2f")]
    cells = [[format(row[name], spec) for name, spec in columns] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells))
              for i, (name, _) in enumerate(columns)]

    def line(values):
        return "  ".join(value.ljust(width) if i < 2 else value.rjust(width)
                         for i, (value, width) in enumerate(zip(values, widths)))
    print(line([name for name, _ in columns]))
    print(line(["-" * width for width in widths]))
    for values in cells:
        print(line(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", nargs="+", choices=["movielens-shape", "foursquare"],
                        default=None,
                        help="default: both (with --quick: the generated log only)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of each fit (default: 2 on movielens-shape, "
                             "4 on foursquare, 1 with --quick)")
    parser.add_argument("--events", type=int, default=None,
                        help="cap the generated log at N events (fewer users, "
                             "the same catalogue)")
    parser.add_argument("--contention", action="store_true",
                        help="also fit each model beside one competing CPU-bound "
                             "process")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke check: a {QUICK_EVENTS:,}-event generated log, "
                             f"1 epoch, short rate timings")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="the fits' n_jobs (default None: one thread); the "
                             "floor stays one thread's")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of the fitted models instead of its "
                             "default (a Python literal; repeatable), e.g. "
                             "--set train_stride=50")
    parser.add_argument("--data", default=str(FOURSQUARE))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = {}
    for assignment in args.set:
        name, _, value = assignment.partition("=")
        params[name.strip()] = ast.literal_eval(value.strip())
    logs = args.logs or (["movielens-shape"] if args.quick
                         else ["movielens-shape", "foursquare"])
    if args.quick:
        args.events = min(args.events or QUICK_EVENTS, QUICK_EVENTS)
    min_run_time = 0.05 if args.quick else 0.5

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs; rates on 1 torch thread, fits with "
          f"n_jobs={args.n_jobs}"
          + "".join(f", {name}={value!r}" for name, value in params.items()))
    print("load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.quick:
        print("--quick: a smoke check, not a measurement")

    table = []
    for log in logs:
        description, train, test = load(log, args)
        items = train["item"].nunique()
        n_events = len(train)
        epochs = args.epochs or (1 if args.quick else DEFAULT_EPOCHS[log])
        print(f"\n{description}: {train['user'].nunique():,} users, {items:,} items, "
              f"{n_events:,} training events, {len(test):,} held out; "
              f"{epochs} epoch(s) per fit")
        for name in args.models:
            defaults = MODELS[name](**params)
            hidden, rows = defaults.hidden_size, block_rows(defaults, items)
            measured = rates(rows, hidden, items, min_run_time)
            floor = floor_seconds(n_events, hidden, items, measured)
            print(f"  {name}: B={rows} H={hidden} I={items}: "
                  + ", ".join(f"{p} {r / 1e9:.1f}"
                              for p, r in measured["products"].items())
                  + f" Gflop/s (combined {measured['matmul'] / 1e9:.1f}); "
                  f"exp {measured['exp'] / 1e9:.3f} G/s; floor {floor:.2f} s/epoch "
                  f"(before the fits)")
            idle = fit(name, train, test, epochs, args.seed, args.n_jobs, params)
            print("    idle: epochs " + " ".join(f"{s:.2f}" for s in idle["epochs"])
                  + f" s; {idle['s/epoch'] / floor:.2f}x that floor")
            row = {"log": description, "model": name, "H": hidden, "I": items,
                   "B": rows, "train events": n_events, "epochs": epochs,
                   "s/epoch": idle["s/epoch"],
                   "events/s": n_events / idle["s/epoch"], "floor s": floor,
                   "epoch/floor": idle["s/epoch"] / floor,
                   "held-out err": idle["error"]}
            if args.contention:
                busy = busy_fit(name, train, test, epochs, args.seed, args.n_jobs,
                                params)
                print("    beside a CPU-bound process: epochs "
                      + " ".join(f"{s:.2f}" for s in busy["epochs"]) + " s")
                row.update({"busy s/epoch": busy["s/epoch"],
                            "busy/idle": busy["s/epoch"] / idle["s/epoch"],
                            "busy/floor": busy["s/epoch"] / floor})
            table.append(row)

    change = remeasure_rates(min_run_time)
    print(f"\nrates measured again after the fits: the largest change of a timing "
          f"is {change:.0f} %" + (" (the machine was not quiet)" if change > 10 else "")
          + "; the table's floors use each timing's faster measurement")
    for row in table:
        measured = rates(row["B"], row["H"], row["I"], min_run_time)
        row["floor s"] = floor_seconds(row["train events"], row["H"], row["I"], measured)
        row["epoch/floor"] = row["s/epoch"] / row["floor s"]
        if args.contention:
            row["busy/floor"] = row["busy s/epoch"] / row["floor s"]
    print("load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print("s/epoch: median of history_ over the epochs after the first; floor: "
          "n_train_events * (3*2*H*I / matmul rate + I / exp rate), one thread\n")
    print_table(table, args.contention)


if __name__ == "__main__":
    main()
