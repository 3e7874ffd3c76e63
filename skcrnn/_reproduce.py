"""``python -m skcrnn reproduce``: the paper's comparison on one data set.

Loads events (a real log, or generated data shaped like one of the paper's
data sets), applies the paper's protocol, fits every model with the paper's
settings for that data set, and prints (and optionally writes) the table of
held-out errors.
"""

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import (BigramRecommender, PersonalUnigramRecommender, UniformRecommender,
               UnigramRecommender)
from .metrics import sequence_nll
from .model_selection import preprocess_like_paper

#: Shape of the paper's data sets after preprocessing (users, items, events).
PAPER_SHAPES = {"brightkite": (1679, 23243, 600_000),
                "lastfm": (954, 48188, 4_300_000)}

LOADERS = {"snap": "load_snap_checkins", "lastfm": "load_lastfm_1k",
           "movielens": "load_movielens"}


@dataclass
class ModelSpec:
    """A model of the comparison: its name, table and factory."""

    name: str
    table: str  # "baselines" or "rnn"
    make: callable  # (protocol, args) -> estimator


def model_specs():
    """Every model of the comparison, in the paper's order."""
    return [
        ModelSpec("uniform", "baselines", lambda protocol, args: UniformRecommender()),
        ModelSpec("unigram", "baselines",
                  lambda protocol, args: UnigramRecommender(alpha=1.0)),
        ModelSpec("personal-unigram", "baselines",
                  lambda protocol, args: PersonalUnigramRecommender(beta=10.0)),
        ModelSpec("bigram", "baselines",
                  lambda protocol, args: BigramRecommender(alpha=100.0)),
    ]


def load_events(args):
    """The events the command runs on, from a file or generated."""
    from . import datasets

    if args.data is not None:
        if args.format is None:
            raise SystemExit("--format is needed with --data (snap, lastfm or movielens)")
        return getattr(datasets, LOADERS[args.format])(args.data)
    n_users, n_items, n_events = PAPER_SHAPES[args.generated]
    scale = args.scale
    return datasets.make_sequences(
        n_users=max(20, round(n_users * scale)), n_items=max(50, round(n_items * scale)),
        n_events=max(2000, round(n_events * scale)), random_state=args.seed)


def run(args, out=sys.stdout):
    """Run the comparison; return the results table."""
    events = load_events(args)
    protocol = args.protocol or (args.generated if args.data is None else "brightkite")
    train, test = preprocess_like_paper(events, protocol)
    print(f"{len(events):,} events -> protocol {protocol!r}: "
          f"{train['user'].nunique():,} users, {train['item'].nunique():,} items, "
          f"{len(train):,} training and {len(test):,} held-out events", file=out)
    wanted = set(args.models) if args.models else None
    rows = []
    for spec in model_specs():
        if wanted is not None and spec.name not in wanted:
            continue
        model = spec.make(protocol, args)
        start = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - start
        rows.append({"model": spec.name, "table": spec.table,
                     "error": sequence_nll(model, test), "fit_seconds": seconds})
        print(f"  {spec.name:<18} error {rows[-1]['error']:.3f}  "
              f"({seconds:.1f} s)", file=out, flush=True)
    results = pd.DataFrame(rows)
    print("\n" + _markdown(results.drop(columns="table")), file=out)
    if args.out is not None:
        write_tables(results, Path(args.out))
        print(f"\ntables written to {args.out}", file=out)
    return results


def write_tables(results, out_dir):
    """One Markdown and one CSV file per table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for table, rows in results.groupby("table", sort=False):
        rows = rows.drop(columns="table")
        rows.to_csv(out_dir / f"{table}.csv", index=False)
        (out_dir / f"{table}.md").write_text(_markdown(rows) + "\n")


def _markdown(frame):
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(
            f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog="skcrnn")
    commands = parser.add_subparsers(dest="command", required=True)
    reproduce = commands.add_parser(
        "reproduce", help="the paper's comparison of models on one data set",
        description=__doc__.splitlines()[0])
    reproduce.add_argument("--data", type=Path, help="a real event log")
    reproduce.add_argument("--format", choices=sorted(LOADERS),
                           help="layout of --data")
    reproduce.add_argument("--protocol", choices=sorted(PAPER_SHAPES),
                           help="the paper's protocol to apply (default: brightkite, "
                                "or the generated data set's)")
    reproduce.add_argument("--generated", choices=sorted(PAPER_SHAPES),
                           default="brightkite",
                           help="generated data shaped like this data set "
                                "(used when --data is not given)")
    reproduce.add_argument("--scale", type=float, default=0.05,
                           help="size of the generated data relative to the "
                                "paper's data set (default: 0.05)")
    reproduce.add_argument("--models", nargs="+", metavar="NAME",
                           help="run only these models")
    reproduce.add_argument("--out", type=Path, help="write the tables here")
    reproduce.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    known = {spec.name for spec in model_specs()}
    if args.models and set(args.models) - known:
        raise SystemExit(f"unknown model(s) {sorted(set(args.models) - known)}; "
                         f"choose from {sorted(known)}")
    if args.command == "reproduce":
        run(args)
    return 0
