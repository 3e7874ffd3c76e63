"""``python -m skcrnn fit``: fit a recommender on an event file and save it.

In one process it is an ordinary ``fit``. Launched by ``torchrun`` (the
environment has ``WORLD_SIZE``), the torch models train across the launched
processes (:func:`skcrnn.fit_distributed`) and rank 0 saves the model::

    torchrun --nproc_per_node=2 -m skcrnn fit --data events.csv \\
        --set hidden_size=64 --set random_state=0 --output model.skcrnn
"""

import ast
import importlib
import os
from pathlib import Path

import pandas as pd

#: ``--model`` name -> (module, class), imported only when a fit runs.
ESTIMATORS = {
    "c-gru": ("skcrnn._rnn", "CollaborativeGRURecommender"),
    "self-attention": ("skcrnn._attention", "SelfAttentionRecommender"),
}
FORMATS = ("csv", "tsv", "snap", "lastfm", "movielens")


def add_parser(commands):
    """Register the ``fit`` subcommand on ``commands`` (argparse subparsers)."""
    fit = commands.add_parser(
        "fit", help="fit a recommender on an event file and save it (also under "
                    "torchrun, across processes)",
        description=__doc__.splitlines()[0])
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="the event file")
    source.add_argument("--generated", type=int, nargs=3,
                        metavar=("USERS", "ITEMS", "EVENTS"),
                        help="generated events (skcrnn.datasets.make_sequences)")
    fit.add_argument("--format", choices=FORMATS, default="csv",
                     help="layout of --data: csv/tsv with user, item and "
                          "timestamp columns, or a loader of skcrnn.datasets "
                          "(default: csv)")
    fit.add_argument("--time-format", metavar="FORMAT",
                     help="strftime layout of a csv/tsv's timestamp strings, e.g. "
                          "'%%d/%%m/%%Y %%H:%%M' (default: numbers as they are, "
                          "strings as ISO 8601 dates)")
    fit.add_argument("--model", choices=sorted(ESTIMATORS), default="c-gru")
    fit.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="an estimator parameter (a Python literal; repeat)")
    fit.add_argument("--output", type=Path, required=True,
                     help="where rank 0 saves the fitted model")
    fit.add_argument("--timeout", type=float, default=300.0,
                     help="seconds a process waits for the others at each "
                          "collective operation under torchrun (default: 300)")
    fit.add_argument("--seed", type=int, default=0,
                     help="seed of --generated (default: 0)")
    return fit


def parse_settings(pairs):
    """``["a=1", "b='x'"]`` -> ``{"a": 1, "b": "x"}`` (values as Python literals)."""
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {pair!r}: expected NAME=VALUE")
        try:
            settings[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[name.strip()] = value  # a bare string
    return settings


def load_events(args):
    from .. import datasets
    if args.generated is not None:
        n_users, n_items, n_events = args.generated
        return datasets.make_sequences(n_users=n_users, n_items=n_items,
                                       n_events=n_events, random_state=args.seed)
    if args.format in ("csv", "tsv"):
        events = pd.read_csv(args.data, sep="," if args.format == "csv" else "\t")
        return parsed_times(events, args.time_format, args.data)
    if args.time_format is not None:
        raise ValueError(f"--time-format is for csv/tsv files; the {args.format} "
                         f"loader reads its own times.")
    loader = {"snap": "load_snap_checkins", "lastfm": "load_lastfm_1k",
              "movielens": "load_movielens"}[args.format]
    return getattr(datasets, loader)(args.data)


def parsed_times(events, time_format, path, column="timestamp"):
    """``events`` with its ``column`` of date strings as UTC datetimes.

    Numbers and a missing column are left to the estimator's checks. Strings
    are parsed with ``time_format`` (strftime codes), or as ISO 8601 dates
    (offsets converted to UTC) when it is None.

    Raises
    ------
    ValueError
        If a string does not match the layout, naming the column, an example
        and ``--time-format``.
    """
    if column not in events or (time_format is None
                                and pd.api.types.is_numeric_dtype(events[column])):
        return events
    layout = "ISO8601" if time_format is None else time_format
    try:
        times = pd.to_datetime(events[column], format=layout, utc=True)
    except (ValueError, TypeError) as error:  # pandas' message is pages long
        example = events[column].iloc[0]
        hint = ("give their layout with --time-format, e.g. --time-format "
                "'%d/%m/%Y %H:%M'" if time_format is None else
                f"check --time-format {time_format!r}")
        raise ValueError(f"{path}: column {column!r} holds times that are not "
                         f"{'ISO 8601 dates' if time_format is None else 'in that layout'}"
                         f" (the first is {example!r}); {hint}.") from error
    return events.assign(**{column: times})


def run(args):
    from .._files import check_writable
    from .._torch.launch import fit_distributed
    module, name = ESTIMATORS[args.model]
    estimator = getattr(importlib.import_module(module), name)(
        **parse_settings(args.set))
    # every path before any work: a run is never lost to an unwritable output
    check_writable(args.output)
    if args.data is not None and not args.data.is_file():
        raise FileNotFoundError(f"--data {args.data}: no such file.")
    events = load_events(args)
    if "WORLD_SIZE" in os.environ:
        fitted = fit_distributed(estimator, events, timeout=args.timeout)
    else:
        fitted = estimator.fit(events)
    if fitted is not None:  # rank 0, or a single process
        fitted.save(args.output)
        print(f"saved {type(fitted).__name__} ({fitted.n_users_} users, "
              f"{fitted.n_items_} items) to {args.output}")
