"""Every call sequence is right or clearly refused (issue 24): a stateful test.

For each estimator, hypothesis draws sequences of ``fit``, ``update``,
``partial_fit``, ``set_params`` (scoring-time and fit-time parameters),
``save``/``load``, ``clone`` + ``fit``, pickling, and calls that must be
refused (an event earlier than its user's last, labels of another kind, a
fit-time parameter changed after fit). After every step:

- the rows of ``predict_proba`` are finite and sum to 1;
- ``score_samples`` is the log of ``predict_proba`` at the observed item;
- ``recommend(exclude_seen=True)`` returns no item the user has had;
- a refused call changed nothing (the scores are those before it);
- ``save`` then ``load`` (and pickling) give identical scores.

Kept small for CI: a few examples of a few steps per estimator.
"""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)
from sklearn.base import clone

from skcrnn import (BigramRecommender, CollaborativeGRURecommender,
                    HMMRecommender, MatrixFactorizationRecommender,
                    PersonalUnigramRecommender, SelfAttentionRecommender,
                    UniformRecommender, UnigramRecommender)

TINY_TORCH = dict(max_epochs=1, batch_size=4, device="cpu", random_state=0)

#: name -> (estimator, {scoring-time parameter: values}, {fit-time parameter: value})
CASES = {
    "uniform": (UniformRecommender(), {"handle_unknown": ["ignore"]}, {}),
    "unigram": (UnigramRecommender(alpha=1.0), {}, {"alpha": 3.0}),
    "bigram": (BigramRecommender(alpha=2.0),
               {"alpha": [0.5, 2.0]}, {}),
    "matrix-factorization": (MatrixFactorizationRecommender(
        n_factors=2, n_iterations=2, random_state=0),
        {"learning_rate": [0.01, 0.1]}, {"n_factors": 3}),
    "hmm": (HMMRecommender(n_states=2, n_iter=3, random_state=0),
            {"tol": [0.01, 0.1]}, {"n_states": 3}),
    "personal-unigram": (PersonalUnigramRecommender(beta=2.0),
                         {"beta": [0.5, 2.0]}, {}),
    "c-gru": (CollaborativeGRURecommender(hidden_size=3, chunk_size=4, **TINY_TORCH),
              {"repeat_bias": [0.0, -2.0, 1e20]},
              {"hidden_size": 5, "copy_history": True, "deviation_penalty": 1.0}),
    "c-gru-copy": (CollaborativeGRURecommender(hidden_size=3, chunk_size=4,
                                               copy_history=True, copy_decay=0.8,
                                               **TINY_TORCH),
                   {"copy_decay": [0.3, 0.8, 1.0], "repeat_bias": [0.0, -1e16]},
                   {"copy_history": False, "rank": 2}),
    "self-attention": (SelfAttentionRecommender(hidden_size=4, n_heads=2,
                                                max_history=3, **TINY_TORCH),
                       {"repeat_bias": [0.0, 1.5]},
                       {"max_history": 1, "n_heads": 1, "user_embedding": True}),
}

USERS = ["ann", "bob", "cat", "dan"]
ITEMS = ["a", "b", "c", "d", "e"]


def quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unknown users and items
        return call(*args, **kwargs)


def scores_of(model, probe):
    return quiet(model.score_samples, probe)


class CallSequences(RuleBasedStateMachine):
    """One estimator's call sequences; subclasses name the case."""

    case = None

    def __init__(self):
        super().__init__()
        self.estimator, self.scoring, self.fit_time = CASES[self.case]
        self.clock = 0
        self.seen = {}          # user -> items it has had (fit, update, partial_fit)
        self.known_items = set()

    # ------------------------------------------------------------ helpers
    def events(self, rows):
        """Events at the next times of the clock, from ``(user, item)`` pairs."""
        times = self.clock + 1 + np.arange(len(rows))
        self.clock += len(rows)
        users, items = zip(*rows) if rows else ((), ())
        return pd.DataFrame({"user": list(users), "item": list(items),
                             "timestamp": times.astype(np.int64)})

    def remember(self, frame, learn_items):
        for user, item in zip(frame["user"], frame["item"]):
            if learn_items or item in self.known_items:
                self.seen.setdefault(user, set()).add(item)
        if learn_items:
            self.known_items |= set(frame["item"])

    def probe(self):
        """Rows after everything: every known user, known items only."""
        items = sorted(self.known_items)
        rows = [(user, items[i % len(items)]) for i, user in enumerate(sorted(self.seen))]
        frame = pd.DataFrame({"user": [u for u, _ in rows],
                              "item": [i for _, i in rows],
                              "timestamp": self.clock + 1000})
        return frame

    def fitted_scores(self):
        return scores_of(self.model, self.probe())

    # -------------------------------------------------------------- rules
    @initialize(pairs=st.lists(st.tuples(st.sampled_from(USERS[:3]),
                                         st.sampled_from(ITEMS[:4])),
                               min_size=6, max_size=10))
    def fit(self, pairs):
        frame = self.events(pairs + [(u, "a") for u in USERS[:2]])
        self.model = clone(self.estimator).fit(frame)
        self.seen, self.known_items = {}, set()
        self.remember(frame, learn_items=True)

    @rule(pairs=st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS)),
                         min_size=1, max_size=4))
    def update(self, pairs):
        frame = self.events(pairs)
        if not set(frame["item"]) & self.known_items:
            return
        quiet(self.model.update, frame)
        self.remember(frame, learn_items=False)

    @rule(pairs=st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS)),
                         min_size=1, max_size=4))
    def partial_fit(self, pairs):
        frame = self.events(pairs)
        self.model.partial_fit(frame)
        self.remember(frame, learn_items=True)

    @rule(data=st.data())
    def set_scoring_parameter(self, data):
        if not self.scoring:
            return
        name = data.draw(st.sampled_from(sorted(self.scoring)))
        self.model.set_params(**{name: data.draw(st.sampled_from(self.scoring[name]))})

    @precondition(lambda self: bool(self.fit_time))
    @rule(data=st.data())
    def change_a_fit_time_parameter_and_back(self, data):
        name = data.draw(st.sampled_from(sorted(self.fit_time)))
        fitted = self.model.get_params()[name]
        before = self.fitted_scores()
        self.model.set_params(**{name: self.fit_time[name]})
        probe = self.probe()
        for call in (lambda: self.model.score_samples(probe),
                     lambda: self.model.predict_proba(probe),
                     lambda: self.model.recommend(sorted(self.seen)[:1], k=1),
                     lambda: self.model.update(self.events([(USERS[0], ITEMS[0])])),
                     lambda: self.model.partial_fit(self.events([(USERS[0], ITEMS[0])])),
                     lambda: self.model.save("/nonexistent/never-written.skcrnn")):
            with pytest.raises(ValueError, match=name):
                quiet(call)
        self.model.set_params(**{name: fitted})
        np.testing.assert_array_equal(self.fitted_scores(), before)

    @rule()
    def refused_earlier_event(self):
        user = sorted(self.seen)[0]
        before = self.fitted_scores()
        frame = pd.DataFrame({"user": [user], "item": [sorted(self.known_items)[0]],
                              "timestamp": [-1]})
        for method in ("update", "partial_fit"):
            with pytest.raises(ValueError, match="earlier than"):
                quiet(getattr(self.model, method), frame)
        np.testing.assert_array_equal(self.fitted_scores(), before)

    @rule(value=st.sampled_from([True, 7, b"x"]), column=st.sampled_from(["user",
                                                                          "item"]))
    def refused_label_kind(self, value, column):
        before = self.fitted_scores()
        row = {"user": sorted(self.seen)[0], "item": sorted(self.known_items)[0],
               "timestamp": self.clock + 1, column: value}
        with pytest.raises(TypeError, match=column):
            quiet(self.model.partial_fit, pd.DataFrame([row]))
        np.testing.assert_array_equal(self.fitted_scores(), before)

    @rule()
    def save_and_load(self):
        import tempfile
        from pathlib import Path
        before = self.fitted_scores()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.skcrnn"
            self.model.save(path)
            self.model = type(self.model).load(path)
        np.testing.assert_array_equal(self.fitted_scores(), before)

    @rule()
    def pickle_round_trip(self):
        before = self.fitted_scores()
        self.model = pickle.loads(pickle.dumps(self.model))
        np.testing.assert_array_equal(self.fitted_scores(), before)

    @rule()
    def clone_is_unfitted_with_the_same_parameters(self):
        copy = clone(self.model)
        assert copy.get_params() == self.model.get_params()
        assert not hasattr(copy, "classes_")

    # --------------------------------------------------------- invariants
    @invariant()
    def rows_are_distributions_and_scores_their_logs(self):
        probe = self.probe()
        proba = quiet(self.model.predict_proba, probe)
        assert np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
        column = pd.Index(self.model.classes_).get_indexer(probe["item"])
        with np.errstate(divide="ignore"):
            expected = np.log(proba[np.arange(len(probe)), column])
        scores = scores_of(self.model, probe)
        shown = expected > -700  # beyond, predict_proba's row holds a zero
        np.testing.assert_allclose(scores[shown], expected[shown], rtol=1e-5,
                                   atol=1e-6)

    @invariant()
    def recommendations_exclude_what_was_seen(self):
        users = sorted(self.seen)
        top = quiet(self.model.recommend, users, k=len(self.model.classes_),
                    exclude_seen=True)
        for user, items in top.groupby("user")["item"]:
            assert not set(items) & self.seen[user], user


MACHINES = {}
for _name in CASES:
    MACHINES[_name] = type(f"CallSequences_{_name}", (CallSequences,),
                           {"case": _name})


@pytest.mark.parametrize("name", sorted(CASES))
def test_call_sequences(name):
    from hypothesis.stateful import run_state_machine_as_test
    run_state_machine_as_test(
        MACHINES[name],
        settings=settings(max_examples=8, stateful_step_count=6, deadline=None,
                          derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck)))
