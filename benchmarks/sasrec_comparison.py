"""Cornac's SASRec (and GRU4Rec, FPMC) against skcrnn, scored by skcrnn's metrics.

Issue 18, part 4. For each data set (MovieLens latest-small and the
Foursquare check-ins, both split by ``preprocess_like_paper(events,
"brightkite")``) every model is fitted on the training events and scored on
the held-out suffix with skcrnn's own definitions:

- error: ``-model.score(test)``, the mean over users of the mean negative
  log-likelihood (nats) of each held-out event given the user's history (the
  training events and the user's earlier held-out rows), softmax over the
  whole catalogue;
- ``skcrnn.metrics.recall_at_k(model, test, k=10)`` and
  ``skcrnn.metrics.mrr(model, test)`` (ranks by the full next-item
  distribution, ties shared uniformly).

The Cornac models are wrapped by ``CornacRecommender``
(``benchmarks/_cornac_adapter.py``), a ``skcrnn.BaseRecommender`` that
log-softmaxes Cornac's own ``score(user_idx, history_items)`` (its logits over
every item), so that the three metrics run unchanged. Cornac is a
benchmark-only dependency, installed in its own virtual environment:

    python3 -m venv .venv-cornac
    .venv-cornac/bin/pip install -c requirements/constraints.txt torch==2.13.0
    .venv-cornac/bin/pip install -r benchmarks/requirements-cornac.txt
    .venv-cornac/bin/pip install -c requirements/constraints.txt --no-deps -e .

Run (SASRec only, both data sets; about 25 minutes per data set on one
core):

    OMP_NUM_THREADS=1 nice .venv-cornac/bin/python benchmarks/sasrec_comparison.py

Options: ``--datasets movielens foursquare``, ``--cornac-models SASRec GRU4Rec
FPMC`` (none with ``--cornac-models`` and no name), ``--skcrnn-models
personal-unigram c-gru ...`` (rows of skcrnn estimators from
``_skcrnn_models``; these run in the project's ``.venv`` too, without Cornac;
the ``-repeat`` rows choose ``repeat_bias`` on a validation suffix of the
training events, see ``RepeatBiasOnValidation``),
``--epochs``, ``--seed``, ``--threads``, ``--save-dir DIR`` (pickles the
fitted models). On MovieLens the SASRec row is
compared with issue 18's (6.538 nats, recall@10 0.1195, MRR 0.0417): the
check passes within 0.02 nats.
"""

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

from sklearn.base import clone

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "movielens": ("movielens-latest-small/ratings.csv", "load_movielens"),
    "foursquare": ("foursquare-checkins/checkins.tsv.gz", "load_snap_checkins"),
}
#: Issue 18's settings of Cornac's SASRec (the others are Cornac's defaults).
SASREC = dict(embedding_dim=100, num_blocks=2, max_len=50)
#: Issue 18's MovieLens row of Cornac's SASRec: error, recall@10, MRR.
ISSUE_MOVIELENS_SASREC = (6.538, 0.1195, 0.0417)
ERROR_TOLERANCE = 0.02
#: The paper's Brightkite settings of the collaborative RNNs.
PAPER_BRIGHTKITE = dict(hidden_size=32, learning_rate=0.0075, rho=0.997,
                        chunk_size=64, batch_size=20)


def _skcrnn_models():
    """Name -> factory ``f(seed, threads)`` of a skcrnn estimator.

    Add rows here (the exact parameters are printed with the table).
    """
    from skcrnn import (BigramRecommender, CollaborativeGRURecommender,
                        PersonalUnigramRecommender)

    def rnn(**params):
        return lambda seed, threads: CollaborativeGRURecommender(
            **PAPER_BRIGHTKITE, device="cpu", n_jobs=threads,
            random_state=seed, **params)

    return {
        "personal-unigram": lambda seed, threads: PersonalUnigramRecommender(beta=20),
        "bigram": lambda seed, threads: BigramRecommender(alpha=100),
        "c-gru": rnn(),
        "p-gru-128": rnn(recurrent_weights="shared", hidden_size=128),
        "c-gru-copy": rnn(copy_history=True, copy_decay=0.97),
        "self-attention": attention,
        "self-attention-repeat": RepeatBiasOnValidation(attention),
        "c-gru-copy-repeat": RepeatBiasOnValidation(rnn(copy_history=True,
                                                        copy_decay=0.97)),
    }


def attention(seed, threads):
    from skcrnn import SelfAttentionRecommender
    return SelfAttentionRecommender(device="cpu", n_jobs=threads, random_state=seed)


#: Candidate ``repeat_bias`` values of the ``-repeat`` rows.
REPEAT_BIASES = (0.0, -0.5, -1.0, -2.0, -3.0, -5.0, -10.0, 0.5, 1.0)


class RepeatBiasOnValidation:
    """A factory whose model has ``repeat_bias`` chosen on the training events.

    The training events are split like the paper's test split
    (``suffix_split(train, 0.025, 3, 500)``: each user's last events); the
    model is fitted on the rest, each candidate ``repeat_bias`` (a scoring
    parameter: no refit) scores the validation block, and the one with the
    lowest error is kept. The row's model is then fitted on all training
    events with it. The test suffix is never looked at.
    """

    def __init__(self, make):
        self.make = make

    def __call__(self, seed, threads):
        return _RepeatBiasTuned(self.make(seed, threads))


class _RepeatBiasTuned:
    def __init__(self, model):
        self.model = model

    def fit(self, train):
        from skcrnn.model_selection import suffix_split
        fit_part, validation = suffix_split(train, 0.025, 3, 500)
        probe = clone(self.model).fit(fit_part)
        errors = {bias: -probe.set_params(repeat_bias=bias).score(validation)
                  for bias in REPEAT_BIASES}
        self.validation_errors_ = errors
        best = min(errors, key=errors.get)
        print("    repeat_bias on validation: " + ", ".join(
            f"{bias:g}: {error:.4f}" for bias, error in errors.items())
            + f" -> {best:g}", flush=True)
        self.model = clone(self.model).set_params(repeat_bias=best).fit(train)
        return self

    def __repr__(self):
        return f"{self.model!r} (repeat_bias chosen on validation)"

    def __getattr__(self, name):  # score, _rank_statistics, ... of the model
        if "model" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["model"], name)


SKCRNN_MODEL_NAMES = ("personal-unigram", "bigram", "c-gru", "p-gru-128",
                      "c-gru-copy", "self-attention", "self-attention-repeat",
                      "c-gru-copy-repeat")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DATA_DIR),
                        help="the shared data folder (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS),
                        choices=list(DATASETS))
    parser.add_argument("--cornac-models", nargs="*", default=["SASRec"],
                        choices=["SASRec", "GRU4Rec", "FPMC"],
                        help="Cornac models (default: SASRec; none: no name)")
    parser.add_argument("--skcrnn-models", nargs="*", default=[],
                        choices=SKCRNN_MODEL_NAMES,
                        help="skcrnn rows (default: none)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="n_epochs of the Cornac models (default: 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="Cornac's seed and skcrnn's random_state")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--save-dir", default=None,
                        help="pickle each fitted model there (for diagnostics)")
    return parser.parse_args(argv)


def cornac_model(name, epochs, seed):
    from _cornac_adapter import CornacRecommender
    params = dict(SASREC) if name == "SASRec" else {}
    params.update(n_epochs=epochs, seed=seed)
    return CornacRecommender(name, params)


def evaluate(model, train, test, k):
    from skcrnn.metrics import mrr, recall_at_k
    start = time.perf_counter()
    model.fit(train)
    fitted = time.perf_counter()
    error = -model.score(test)
    recall = recall_at_k(model, test, k=k)
    reciprocal = mrr(model, test)
    scored = time.perf_counter()
    return dict(error=error, recall=recall, mrr=reciprocal,
                fit_s=fitted - start, score_s=scored - fitted)


def save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(model, file)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    torch.set_num_threads(args.threads)
    if args.cornac_models:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    import skcrnn.datasets
    from skcrnn.model_selection import preprocess_like_paper
    factories = _skcrnn_models()

    rows, described = [], {}
    for dataset in args.datasets:
        relative, loader = DATASETS[dataset]
        events = getattr(skcrnn.datasets, loader)(Path(args.data_dir) / relative)
        train, test = preprocess_like_paper(events, "brightkite")
        print(f"{dataset}: {train['user'].nunique():,} users, "
              f"{train['item'].nunique():,} items, {len(train):,} training / "
              f"{len(test):,} held-out events", flush=True)
        models = [(f"Cornac {name}", cornac_model(name, args.epochs, args.seed))
                  for name in args.cornac_models]
        models += [(f"skcrnn {name}", factories[name](args.seed, args.threads))
                   for name in args.skcrnn_models]
        for label, model in models:
            described[label] = repr(model)
            result = evaluate(model, train, test, args.k)
            if args.save_dir is not None:
                save(model, Path(args.save_dir)
                     / f"{dataset}-{label.replace(' ', '-')}-seed{args.seed}.pkl")
            rows.append((dataset, label, result))
            print(f"  {label}: error {result['error']:.4f}, recall@{args.k} "
                  f"{result['recall']:.4f}, MRR {result['mrr']:.4f}, fit "
                  f"{result['fit_s']:.1f} s", flush=True)

    print()
    print(f"| data | model | error (nats) | recall@{args.k} | MRR | fit s | "
          f"score s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for dataset, label, r in rows:
        print(f"| {dataset} | {label} | {r['error']:.4f} | {r['recall']:.4f} | "
              f"{r['mrr']:.4f} | {r['fit_s']:.1f} | {r['score_s']:.1f} |")
    print()
    for label, text in described.items():
        print(f"{label}: {text}")
    print(f"(torch threads {args.threads}, seed {args.seed}; score s: the "
          f"error, recall@{args.k} and MRR together)")

    status = 0
    for dataset, label, r in rows:
        if (dataset, label) == ("movielens", "Cornac SASRec") and \
                args.epochs == 10 and args.k == 10:
            error, recall, reciprocal = ISSUE_MOVIELENS_SASREC
            ok = abs(r["error"] - error) <= ERROR_TOLERANCE
            print(f"\nMovieLens SASRec against issue 18: error {r['error']:.4f} "
                  f"vs {error} (difference {r['error'] - error:+.4f}, "
                  f"{'within' if ok else 'NOT within'} {ERROR_TOLERANCE}); "
                  f"recall@10 {r['recall']:.4f} vs {recall}; MRR "
                  f"{r['mrr']:.4f} vs {reciprocal}")
            status = 0 if ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
