"""A skcrnn recommender that wraps one of Cornac's next-item models.

Benchmark-only (``benchmarks/sasrec_comparison.py``): Cornac is not a
dependency of skcrnn. Install it with ``benchmarks/requirements-cornac.txt``.

:class:`CornacRecommender` derives :class:`skcrnn.BaseRecommender`, so that a
Cornac model is fitted on an event frame and scored by skcrnn's own
definitions, unchanged: ``model.score(test)`` (minus the paper's error),
:func:`skcrnn.metrics.recall_at_k` and :func:`skcrnn.metrics.mrr`.

Training. The encoded training sequences that skcrnn's ``fit`` builds (each
user's events in time order, ties in row order) become one Cornac session per
user (``SequentialDataset`` in the ``USIT`` layout: the user, the session, the
item, the event's position as its time), so Cornac sees exactly the order
that skcrnn scores.

Scoring. The history of a prefix is the user's training events followed by
the prefix of the scored continuation (the user's earlier held-out rows). The
Cornac model scores it with its own ``score(user_idx, history_items)``, which
returns one unnormalised score (a logit) per item of the whole catalogue;
the log-probabilities are the log-softmax of these scores, in float64,
reordered from Cornac's item indices to skcrnn's item codes. An empty history
gets Cornac's answer to it (all ones: the uniform distribution). For GRU4Rec,
whose ``score`` runs the whole history through the network on every call,
the same steps are taken once per user and the output after each requested
prefix is kept (equal to calling ``score`` per prefix).
"""

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.utils._param_validation import StrOptions

from skcrnn import BaseRecommender

#: Cornac classes this adapter knows, by name.
CORNAC_MODELS = ("SASRec", "GRU4Rec", "FPMC")


class CornacRecommender(BaseRecommender):
    """A Cornac next-item model behind skcrnn's estimator API.

    Parameters
    ----------
    model : {"SASRec", "GRU4Rec", "FPMC"}, default="SASRec"
        The class of ``cornac.models``.
    model_params : dict or None, default=None
        Keyword arguments of that class (Cornac's defaults for the others).
    user_col, item_col, time_col, handle_unknown
        As in every skcrnn recommender.

    Attributes
    ----------
    cornac_model_ : cornac.models.NextItemRecommender
        The fitted Cornac model.
    cornac_items_ : ndarray of shape (n_items,)
        Cornac's item index of each skcrnn item code.
    cornac_users_ : ndarray of shape (n_users,)
        Cornac's user index of each skcrnn user code.
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "model": [StrOptions(set(CORNAC_MODELS))],
        "model_params": [dict, None],
    }

    def __init__(self, model="SASRec", model_params=None, *, user_col="user",
                 item_col="item", time_col="timestamp", handle_unknown="ignore"):
        self.model = model
        self.model_params = model_params
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    # ------------------------------------------------------------------ fit
    def _fit_sequences(self, sequences):
        import cornac.models
        from cornac.data import SequentialDataset

        users = sequences.group_of_event  # group g is user code g
        # USIT rows: user, session (one per user), item, time (its position)
        data = list(zip(users.tolist(), users.tolist(), sequences.items.tolist(),
                        range(len(sequences.items))))
        train_set = SequentialDataset.build(data, fmt="USIT")
        cornac_model = getattr(cornac.models, self.model)(
            **(self.model_params or {}))
        cornac_model.fit(train_set)
        self.cornac_model_ = cornac_model
        self.cornac_items_ = np.array(
            [train_set.iid_map[code] for code in range(self.n_items_)],
            dtype=np.int64)
        self.cornac_users_ = np.array(
            [train_set.uid_map[code] for code in range(self.n_users_)],
            dtype=np.int64)

    # -------------------------------------------------------------- scoring
    def _log_proba(self, sequences, prefixes, targets=None):
        prefixes = np.asarray(prefixes, dtype=np.int64)
        starts = sequences.prefix_start
        group = np.searchsorted(starts, prefixes, side="right") - 1
        position = prefixes - starts[group]
        full = targets is None
        out = np.empty((len(prefixes), self.n_items_) if full else len(prefixes))
        for g in np.unique(group):
            rows = np.flatnonzero(group == g)
            user = int(sequences.user_codes[g])
            if user >= 0:
                history = self._history.items[
                    self._history.indptr[user]:self._history.indptr[user + 1]]
                cornac_user = int(self.cornac_users_[user])
            else:
                history = np.empty(0, dtype=np.int64)
                cornac_user = -1
            continuation = sequences.items[sequences.indptr[g]:sequences.indptr[g + 1]]
            items = self.cornac_items_[np.concatenate([history, continuation])]
            lengths = len(history) + position[rows]
            for row, scores in zip(rows, self._cornac_scores(cornac_user, items,
                                                             lengths)):
                scores = np.asarray(scores, dtype=np.float64)
                log_proba = (scores - logsumexp(scores))[self.cornac_items_]
                out[row] = log_proba if full else log_proba[targets[row]]
        return out

    def _cornac_scores(self, user, items, lengths):
        """Cornac's scores (all items, Cornac's order) after ``items[:n]``,
        for each ``n`` in ``lengths``."""
        model = self.cornac_model_
        if self.model == "GRU4Rec":
            yield from _gru4rec_scores(model, items, lengths)
            return
        for n in lengths:
            yield model.score(user, items[:n].tolist())


def _gru4rec_scores(model, items, lengths):
    """``model.score(., items[:n])`` for each ``n``, in one pass over ``items``.

    Cornac's GRU4Rec ``score`` starts from zero states and steps the network
    over the whole history (``cornac.models.gru4rec.gru4rec.score``); this
    takes the same steps once and keeps the output after each requested
    prefix.
    """
    wanted = {}
    for index, n in enumerate(lengths):
        wanted.setdefault(int(n), []).append(index)
    answers = [None] * len(lengths)
    uniform = np.ones(model.total_items)
    for index in wanted.get(0, []):
        answers[index] = uniform
    network = model.model
    network.eval()
    hidden = [torch.zeros((1, size), dtype=torch.float32, device=model.device)
              for size in model.layers]
    with torch.no_grad():
        for step, item in enumerate(items.tolist(), start=1):
            output = network.forward(
                torch.tensor([item], device=model.device), hidden, None,
                training=False)
            if step in wanted:
                scores = output.squeeze().cpu().numpy()[:model.total_items]
                for index in wanted[step]:
                    answers[index] = scores
            if step >= max(wanted):
                break
    return answers
