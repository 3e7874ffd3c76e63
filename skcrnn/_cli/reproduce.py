"""``python -m skcrnn reproduce``: the paper's comparison on one data set.

Loads events (a real log, or generated data with one of the paper's data
sets' numbers of users and events, scaled), applies the paper's protocol,
fits every model with the paper's settings for that data set, and prints (and
optionally writes) the table of held-out errors.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .._counts import (BigramRecommender, PersonalUnigramRecommender,
                       UniformRecommender, UnigramRecommender)
from .._hmm import HMMRecommender
from .._mf import MatrixFactorizationRecommender
from .._rnn import CollaborativeGRURecommender
from ..metrics import entropy_bins
from ..model_selection import preprocess_like_paper
from .report import (error_by_bin, markdown, per_user_errors, plot_error_by_bin,
                     plot_learning_curves, write_table)

#: Shape of the paper's data sets after preprocessing (users, items, events).
PAPER_SHAPES = {"brightkite": (1679, 23243, 600_000),
                "lastfm": (954, 48188, 4_300_000)}

#: Baseline settings per protocol, chosen on a validation suffix of the
#: Foursquare training events (docs/results_baselines.md); the Last.fm ones
#: are lighter because that data set is seven times larger.
MF_SETTINGS = {
    "brightkite": dict(n_factors=128, algorithm="bpr", n_iterations=400,
                       learning_rate=0.05),
    "lastfm": dict(n_factors=64, algorithm="als"),
}
HMM_SETTINGS = {
    "brightkite": dict(n_states=20, n_iter=50, emission_smoothing=0.05),
    "lastfm": dict(n_states=20, n_iter=20, emission_smoothing=0.05),
}

#: The paper's settings of the recurrent models (Section 5).
RNN_SETTINGS = {
    "brightkite": dict(hidden_size=32, learning_rate=0.0075),
    "lastfm": dict(hidden_size=128, learning_rate=0.01, max_train_chunks=80),
}

#: The process of the generated data sets (:func:`skcrnn.datasets.make_sequences`);
#: users and events are the paper's times ``--scale``. A small catalogue (16
#: topics of 5 items) keeps the within-topic popularity from drowning the
#: dynamics; the shared dynamics favour a few successors of each topic (what
#: a bigram, an HMM and a shared-weights RNN can learn) and half of each
#: user's transition matrix is the user's own permutation of the topics (what
#: only per-user recurrent weights can learn). The settings and what they give
#: are in docs/results.rst.
GENERATED_PROCESS = {
    "brightkite": dict(n_topics=16, items_per_topic=5, user_heterogeneity=0.5,
                       memory=0.0, noise=0.02, shared_concentration=0.1),
    "lastfm": dict(n_topics=16, items_per_topic=5, user_heterogeneity=0.5,
                   memory=0.0, noise=0.02, shared_concentration=0.1),
}

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
        ModelSpec("mf", "baselines",
                  lambda protocol, args: MatrixFactorizationRecommender(
                      **MF_SETTINGS[protocol], random_state=args.seed)),
        ModelSpec("hmm", "baselines",
                  lambda protocol, args: HMMRecommender(
                      **HMM_SETTINGS[protocol], random_state=args.seed)),
        ModelSpec("p-gru", "rnn", _rnn_factory(recurrent_weights="shared")),
        ModelSpec("c-tanh", "rnn", _rnn_factory(cell="tanh")),
        ModelSpec("c-gru", "rnn", _rnn_factory()),
    ]


def _rnn_factory(**variant):
    """A factory of the recurrent model with the paper's settings."""
    def make(protocol, args):
        return CollaborativeGRURecommender(
            **RNN_SETTINGS[protocol], **variant, max_epochs=args.max_epochs,
            device=args.device, random_state=args.seed, verbose=int(args.verbose))
    return make


def load_events(args):
    """The events the command runs on, from a file or generated."""
    from .. import datasets

    if args.data is not None:
        if args.format is None:
            raise SystemExit("--format is needed with --data (snap, lastfm or movielens)")
        return getattr(datasets, LOADERS[args.format])(args.data)
    n_users, _, n_events = PAPER_SHAPES[args.generated]
    process = dict(GENERATED_PROCESS[args.generated])
    n_items = process["n_topics"] * process.pop("items_per_topic")
    return datasets.make_sequences(
        n_users=max(20, round(n_users * args.scale)), n_items=n_items,
        n_events=max(2000, round(n_events * args.scale)), **process,
        random_state=args.seed)


def run(args, out=sys.stdout):
    """Run the comparison, write the tables and plots; return the results."""
    events = load_events(args)
    protocol = args.protocol or (args.generated if args.data is None else "brightkite")
    train, test = preprocess_like_paper(events, protocol)
    print(f"{len(events):,} events -> protocol {protocol!r}: "
          f"{train['user'].nunique():,} users, {train['item'].nunique():,} items, "
          f"{len(train):,} training and {len(test):,} held-out events", file=out)
    wanted = set(args.models) if args.models else None
    rows, errors, histories = [], {}, {}
    for spec in model_specs():
        if wanted is not None and spec.name not in wanted:
            continue
        print(f"  {spec.name:<18}", end=" ", file=out, flush=True)
        model = spec.make(protocol, args)
        start = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - start
        errors[spec.name] = per_user_errors(model, test)
        if hasattr(model, "history_"):
            histories[spec.name] = model.history_
        rows.append({"model": spec.name, "table": spec.table,
                     "error": float(errors[spec.name].mean()),
                     "fit_seconds": seconds})
        print(f"error {rows[-1]['error']:.3f}  ({seconds:.1f} s)", file=out, flush=True)
    results = pd.DataFrame(rows)
    bins = entropy_bins(train, n_bins=3)
    by_bin = error_by_bin(errors, bins).rename_axis("model")
    counts = bins.value_counts().sort_index()
    by_bin.columns = [f"{c} ({n} users)" for c, n in zip(by_bin.columns, counts)]
    for table, frame in results.groupby("table", sort=False):
        print(f"\n{TABLE_TITLES[table]}\n" + markdown(frame.drop(columns="table")),
              file=out)
    print("\nHeld-out error by entropy bin of the users' training items\n"
          + markdown(by_bin, index=True), file=out)
    if args.out is not None:
        write_outputs(args.out, results, by_bin, histories, protocol)
        print(f"\ntables and plots written to {args.out}/", file=out)
    return results, by_bin


TABLE_TITLES = {"baselines": "Baselines (held-out error, nats)",
                "rnn": "Recurrent models (held-out error, nats)"}


def write_outputs(out_dir, results, by_bin, histories, protocol):
    """Markdown and CSV tables, the entropy-bin plot and the learning curves."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for table, frame in results.groupby("table", sort=False):
        write_table(frame.drop(columns="table"), out_dir, table)
    write_table(by_bin, out_dir, "entropy_bins", index=True)
    plot_error_by_bin(by_bin, out_dir / "entropy_bins.png",
                      f"Error by user entropy ({protocol} protocol)")
    if histories:
        plot_learning_curves(histories, out_dir / "learning_curves.png",
                             f"Recurrent models ({protocol} protocol)")


def add_parser(commands):
    """Register the ``reproduce`` subcommand on ``commands`` (argparse subparsers)."""
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
                           help="generated data with this data set's users "
                                "and events times --scale, and its protocol "
                                "(used when --data is not given)")
    reproduce.add_argument("--scale", type=float, default=0.15,
                           help="users and events of the generated data "
                                "relative to the paper's data set (default: 0.15)")
    reproduce.add_argument("--models", nargs="+", metavar="NAME",
                           help="run only these models")
    reproduce.add_argument("--out", type=Path, default=Path("reproduce_out"),
                           help="folder for the tables and plots "
                                "(default: reproduce_out)")
    reproduce.add_argument("--device", default="auto",
                           help="device of the recurrent models: auto, cpu, cuda, "
                                "cuda:N (default: auto)")
    reproduce.add_argument("--max-epochs", type=int, default=30,
                           help="most epochs of the recurrent models, which stop "
                                "early on a validation suffix (default: 30)")
    reproduce.add_argument("--verbose", action="store_true",
                           help="progress bars while the recurrent models train")
    reproduce.add_argument("--seed", type=int, default=0)
    return reproduce


def check_args(args):
    """Refuse what the parser cannot: unknown ``--models`` names."""
    known = {spec.name for spec in model_specs()}
    if args.models and set(args.models) - known:
        raise SystemExit(f"unknown model(s) {sorted(set(args.models) - known)}; "
                         f"choose from {sorted(known)}")
