"""The repeat bias: a scoring-time offset on the logits of items already seen.

With ``repeat_bias=b`` every item of the user's history (stored events and
the continuation's events before the predicted one) has ``b`` added to its
logit, and the distribution is normalised again::

    p'(i) = p(i) exp(b s(i)) / (1 - P_seen + exp(b) P_seen),

with ``s(i) = 1`` for a seen item and ``P_seen`` the probability the model
gave to the seen items. A negative ``b`` moves probability from items the
user has had to new ones (a ratings log, where nobody rates a film twice),
a positive one toward repeats. Training never sees it, so a fitted model can
be tuned with ``set_params(repeat_bias=...)`` and no refit.
"""

import math
from numbers import Real

import numpy as np
from scipy.special import logsumexp


def check_repeat_bias(value):
    """``value`` as a float; ``ValueError``/``TypeError`` unless a finite real."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"repeat_bias must be a real number; got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"repeat_bias must be finite; got {value!r}.")
    return float(value)


def ragged_items(items, starts, lengths):
    """``(row, item)`` pairs: row ``r`` holds ``items[starts[r]:starts[r] + lengths[r]]``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, items[np.repeat(np.asarray(starts, dtype=np.int64), lengths) + within]


def seen_mask(history, sequences, prefixes, n_items):
    """Boolean ``(len(prefixes), n_items)``: the items each prefix's user has had.

    Parameters
    ----------
    history : Sequences
        The stored histories, group ``u`` being user ``u``.
    sequences : Sequences
        Continuations of them (``user_codes`` -1 for an unknown user, who has
        no stored history).
    prefixes : ndarray of int64
        Prefix ids of ``sequences`` (see ``Sequences.prefix_start``).
    n_items : int
    """
    prefixes = np.asarray(prefixes, dtype=np.int64)
    group = sequences.group_of(prefixes)
    position = prefixes - sequences.prefix_start[group]
    users = sequences.user_codes[group]
    known = users >= 0
    stored_starts = np.where(known, history.indptr[np.maximum(users, 0)], 0)
    stored_lengths = np.where(known, history.lengths[np.maximum(users, 0)], 0)
    mask = np.zeros((len(prefixes), n_items), dtype=bool)
    for items, starts, lengths in ((history.items, stored_starts, stored_lengths),
                                   (sequences.items, sequences.indptr[group], position)):
        rows, seen = ragged_items(items, starts, lengths)
        mask[rows, seen] = True
    return mask


def with_repeat_bias(log_proba, mask, bias):
    """Log-probabilities ``(N, V)`` with ``bias`` on the ``mask``'s logits, renormalised.

    Exact at any finite magnitude of ``bias``: each kind of item is
    normalised by its own shifted constant, ``log_norm - bias`` for the seen
    ones and ``log_norm`` for the others, so ``bias`` is never added to a
    log-probability and subtracted again (which, at ``|bias|`` of 1e15 and
    more, rounds the log-probabilities away). As ``bias`` grows, the rows
    tend to the model's distribution restricted to the seen items (to the
    unseen ones as it falls), and they sum to 1 all the way.
    """
    log_seen = logsumexp(np.where(mask, log_proba, -np.inf), axis=1)
    log_unseen = logsumexp(np.where(mask, -np.inf, log_proba), axis=1)
    norm_unseen = np.logaddexp(log_unseen, bias + log_seen)
    norm_seen = np.logaddexp(log_unseen - bias, log_seen)
    return log_proba - np.where(mask, norm_seen[:, None], norm_unseen[:, None])
