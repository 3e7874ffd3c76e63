"""The copy gate: the softmax mixed with the user's own past items.

With ``copy_history=True`` the next-item distribution of
:class:`~skcrnn.CollaborativeGRURecommender` after a state ``h`` is::

    P(i | past) = (1 - g) softmax(W_out h + b)_i + g w(i) / Z
    g = sigmoid(v . h + a log Z + c)

with ``v``, ``a`` and ``c`` the network's ``gate_weight`` (``[v, a]``) and
``gate_bias`` (:mod:`.network`), and no copy (``g = 0``) for an empty past.
Everything the gate needs lives here:

- the history it reads, the decayed counts of each user's past items
  (:class:`PastWeights`, :func:`total_weight`, :func:`scaled_rows`);
- the gate (:func:`gate_logits`) and the mixture of a batch of rows
  (:class:`Copy`, built by :func:`mixture`), with its exact
  log-probability (:func:`mixed_log_proba`), which the output layer
  applies in training and scoring (an *adjustment* of
  :mod:`skcrnn._torch.output`);
- what the estimator asks of it (:func:`copy_gate`): each event's past for
  training and validation, the past of scored prefixes, and the per-user
  cache ``history_weights_`` (set after ``fit``, advanced by ``update`` and
  ``partial_fit``, saved and loaded); :class:`NoCopy` answers the same
  calls without the gate.

**Decayed counts.** For a sequence ``x_0, x_1, ...`` and a decay
``0 < lambda <= 1`` (``copy_decay``), the weight of item ``i`` before
position ``k`` and the total weight are::

    w_k(i) = sum_{j < k, x_j = i} lambda ** (k - 1 - j)
    Z_k    = sum_{j < k} lambda ** (k - 1 - j)

(plain counts and the sequence's length when ``lambda = 1``), so that
``w_k / Z_k`` is a distribution over the items seen before ``k`` that puts
more weight on recent ones as ``lambda`` decreases.

They are vectorized numpy over :class:`~skcrnn._events.Sequences`
(no loop over users or events). The events are sorted by (group, item,
position), and each event gets ``E = w(its item)`` just after it, by the
recursion ``E_m = 1 + lambda ** gap * E_{m-1}`` along the occurrences of an
item, solved as a parallel scan in ``log2`` of the longest run rounds. Its
closed form, ``exp(-mu p_m) * sum_{m' <= m} exp(mu p_{m'})`` with
``mu = -log(lambda)``, is not used: it overflows on long sequences, and a
segmented cumulative sum loses short runs' digits next to long ones.
"""

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .. import _persistence
from .._sparse import dense_rows, lookup
from .._torch.batching import window_mask


# ------------------------------------------------------------ decayed counts
def total_weight(lengths, decay):
    """``Z_k`` for each ``k`` of ``lengths`` (an array of counts of past events)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if decay == 1.0:
        return lengths
    log_decay = np.log(decay)
    return np.expm1(lengths * log_decay) / np.expm1(log_decay)


def scaled_rows(matrix, factors):
    """``diag(factors) @ matrix`` of a CSR matrix, as a new matrix."""
    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.data *= np.repeat(np.asarray(factors, dtype=np.float64),
                             np.diff(matrix.indptr))
    return matrix


class PastWeights:
    """The decayed counts ``w_k`` of every group of ``sequences``.

    Parameters
    ----------
    sequences : Sequences
    decay : float
        ``lambda``, in ``(0, 1]``.
    n_items : int
        The item vocabulary's size (items are codes below it).
    """

    def __init__(self, sequences, decay, n_items):
        self.decay = float(decay)
        self.n_items = int(n_items)
        self.n_groups = sequences.n_groups
        self.lengths = sequences.lengths
        keys = sequences.group_of_event * self.n_items + sequences.items
        order = np.argsort(keys, kind="stable")  # positions stay ascending
        self._keys = keys[order]
        self._positions = sequences.position_of_event[order]
        #: each sorted event's ``w(item)`` just after it
        self._after = self._weights_after()
        self._order = order
        # searchable (key, position) pairs: rank of the key, then position
        self._unique_keys, key_rank = np.unique(self._keys, return_inverse=True)
        self._stride = int(self.lengths.max(initial=0)) + 1
        self._ranked = key_rank.astype(np.int64) * self._stride + self._positions

    def _weights_after(self):
        # E_m = a_m * E_{m-1} + 1 along each item's occurrences, with
        # a_m = lambda ** gap (0 at an item's first occurrence): an inclusive
        # scan of affine maps, composed over windows that double each round
        keys, positions = self._keys, self._positions
        decay_factor = np.zeros(len(keys))
        repeat = np.flatnonzero(keys[1:] == keys[:-1]) + 1
        decay_factor[repeat] = self.decay ** (positions[repeat] - positions[repeat - 1])
        after = np.ones(len(keys))
        shift = 1
        while shift < len(keys) and decay_factor[shift:].any():
            after[shift:] = decay_factor[shift:] * after[:-shift] + after[shift:]
            decay_factor[shift:] = decay_factor[shift:] * decay_factor[:-shift]
            shift *= 2
        return after

    def _last_before(self, groups, lengths, items):
        """Sorted index of the last occurrence of each item before each prefix, or -1."""
        query = groups * self.n_items + items
        rank = np.searchsorted(self._unique_keys, query)
        found = rank < len(self._unique_keys)
        found[found] = self._unique_keys[rank[found]] == query[found]
        index = np.full(len(query), -1, dtype=np.int64)
        bound = rank[found] * self._stride + lengths[found]
        last = np.searchsorted(self._ranked, bound) - 1
        same_key = last >= 0
        same_key[same_key] = self._keys[last[same_key]] == query[found][same_key]
        index[np.flatnonzero(found)[same_key]] = last[same_key]
        return index

    def _decayed(self, index, lengths):
        """``w`` of the events at sorted ``index`` (>= 0), seen from prefix ``lengths``."""
        return self._after[index] * self.decay ** (lengths - 1 - self._positions[index])

    def at(self, groups, lengths, items):
        """``w_k(i)`` of group ``groups[j]``, ``k = lengths[j]``, ``i = items[j]``."""
        groups = np.asarray(groups, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        index = self._last_before(groups, lengths, np.asarray(items, dtype=np.int64))
        weights = np.zeros(len(index))
        hit = index >= 0
        weights[hit] = self._decayed(index[hit], lengths[hit])
        return weights

    def rows(self, groups, lengths):
        """The weights ``w_k`` of ``(groups[j], lengths[j])`` as a CSR matrix.

        One row per query, ``n_items`` columns; only the items that each
        group holds are looked up, so the work is bounded by the rows'
        nonzeros.
        """
        groups = np.asarray(groups, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        first, last = np.searchsorted(self._unique_keys,
                                      [groups * self.n_items,
                                       (groups + 1) * self.n_items])
        n_keys = last - first
        query = np.repeat(np.arange(len(groups)), n_keys)
        key_index = (np.repeat(first - np.cumsum(n_keys) + n_keys, n_keys)
                     + np.arange(int(n_keys.sum())))
        items = self._unique_keys[key_index] - groups[query] * self.n_items
        weights = self.at(groups[query], lengths[query], items)
        matrix = sp.csr_matrix((weights, (query, items)),
                               shape=(len(groups), self.n_items))
        matrix.eliminate_zeros()
        matrix.sort_indices()
        return matrix

    def final(self):
        """``w`` after each group's last event, as a CSR matrix (groups x items)."""
        return self.rows(np.arange(self.n_groups), self.lengths)


# ---------------------------------------------------------------- the gate
def gate_logits(network, states, log_mass):
    """The copy gate's logits, ``-inf`` (no copy) where there is no past.

    Parameters
    ----------
    network : CollaborativeRNN
        With ``copy_history``: its ``gate_weight`` and ``gate_bias``.
    states : Tensor of shape (N, H)
        The states that predict the next items.
    log_mass : Tensor of shape (N,)
        ``log Z`` of the user's past items before each of them, ``-inf``
        for an empty past.

    Returns
    -------
    Tensor of shape (N,), in the type of ``states``
    """
    has_past = torch.isfinite(log_mass)
    weight = network.gate_weight.to(states.dtype)
    logits = (states @ weight[:-1]
              + torch.where(has_past, log_mass, 0.0).to(states.dtype) * weight[-1]
              + network.gate_bias.to(states.dtype))
    return torch.where(has_past, logits, float("-inf"))


def mixed_log_proba(log_softmax, copy):
    """``log((1 - g) exp(log_softmax) + g c)``, and the softmax's share of it.

    Parameters
    ----------
    log_softmax : Tensor of shape (N,) or (N, V)
    copy : Copy
        Of the same shape as ``log_softmax``.

    Returns
    -------
    log_mixed : Tensor
    softmax_share : Tensor
        ``(1 - g) p / mixed``, the responsibility of the softmax.
    """
    gate = copy.gate_logits
    if log_softmax.dim() == 2:
        gate = gate[:, None]
    from_softmax = F.logsigmoid(-gate) + log_softmax
    log_mixed = torch.logaddexp(from_softmax, F.logsigmoid(gate) + copy.log_proba)
    return log_mixed, torch.exp(from_softmax - log_mixed)


class Copy(NamedTuple):
    """The copy component of a next-item distribution, per row.

    The distribution is ``(1 - g) softmax(logits) + g c``, where ``c`` is a
    distribution over the user's past items and ``g = sigmoid(gate_logits)``
    (``-inf`` where the user has no past: the softmax alone). It is an
    adjustment of the output layer (:mod:`skcrnn._torch.output`): pass it
    as ``adjust`` to ``summed_cross_entropy`` (training) and ``log_proba``
    (scoring).

    Attributes
    ----------
    gate_logits : Tensor of shape (N,)
    log_proba : Tensor of shape (N,) or (N, V)
        ``log c`` of each row's target (training, scoring of targets), or of
        every item (whole distributions); ``-inf`` for items not in the past.
    """

    gate_logits: torch.Tensor
    log_proba: torch.Tensor

    @property
    def row_values(self):
        """The gate's logits: what training differentiates besides the softmax."""
        return self.gate_logits

    def adjusted(self, log_softmax, rows):
        """The mixture's log-probabilities of ``rows``, in the type of ``log_softmax``."""
        dtype = log_softmax.dtype
        return mixed_log_proba(log_softmax, Copy(self.gate_logits[rows].to(dtype),
                                                 self.log_proba[rows].to(dtype)))[0]

    def target_loss(self, log_softmax, rows):
        """``-log`` of the mixture at the targets of ``rows``, and its derivatives.

        The derivative with respect to the target's log-softmax is the
        softmax's share ``r``; with respect to the gate's logit, ``g - (1 -
        r)``.
        """
        gate = self.gate_logits[rows]
        log_mixed, share = mixed_log_proba(log_softmax, Copy(gate, self.log_proba[rows]))
        return -log_mixed, share, torch.sub(torch.sigmoid(gate) + share, 1.0)


def mixture(network, states, past):
    """The :class:`Copy` of ``states`` given the arrays of their ``past``.

    Parameters
    ----------
    network : CollaborativeRNN
    states : Tensor of shape (N, H)
    past : dict or None
        ``log_copy`` and ``log_mass`` of each row (see
        :meth:`HistoryCopy.past`), arrays or tensors; None (no copy gate):
        no mixture.

    Returns
    -------
    Copy or None
    """
    if past is None:
        return None

    def as_tensor(values):
        return torch.as_tensor(values, dtype=states.dtype, device=states.device)
    return Copy(gate_logits(network, states, as_tensor(past["log_mass"])),
                as_tensor(past["log_copy"]))


# ------------------------------------------------------- the estimator's part
def copy_gate(model):
    """The copy gate's part of a fitting or fitted ``model``.

    A :class:`HistoryCopy` with ``model.copy_history``, else :class:`NoCopy`;
    either answers the estimator's calls, so that the estimator does not
    branch on ``copy_history``. Built on demand (it keeps nothing of its
    own: the cache is the model's ``history_weights_``).
    """
    return HistoryCopy(model) if model.copy_history else NoCopy()


class HistoryCopy:
    """The copy gate of a :class:`~skcrnn.CollaborativeGRURecommender`.

    Reads the model's ``copy_decay``, vocabularies (``n_users_``,
    ``n_items_``), stored histories (``_history``) and cache
    ``history_weights_``: the decayed counts ``w`` of each user's items at
    the end of the user's history, which it sets.

    Parameters
    ----------
    model : CollaborativeGRURecommender
    """

    def __init__(self, model):
        self.model = model
        self.decay = float(model.copy_decay)

    # ------------------------------------------------- what the gate reads
    def event_past(self, sequences, start, stop, continuation=False,
                   dtype=np.float64):
        """:meth:`past` of each event of ``sequences`` at positions ``start <= k < stop``.

        The past of an event is its group's earlier events (also those
        before ``start``), after, when the sequences are a ``continuation``
        (``partial_fit``), the user's stored history before them (the
        model's ``_history`` holds them already).

        Returns
        -------
        dict
            ``log_copy`` and ``log_mass`` of the kept events, of ``dtype``
            (training batches: float32).
        """
        history_lengths = None
        if continuation:
            history_lengths = (self.model._history.lengths[sequences.user_codes]
                               - sequences.lengths)
        past = self.past(sequences, sequences.group_of_event,
                         sequences.position_of_event, sequences.items,
                         history_lengths)
        keep = window_mask(sequences, start, stop)
        return {name: values[keep].astype(dtype, copy=False)
                for name, values in past.items()}

    def prefix_past(self, sequences, prefixes, targets=None):
        """:meth:`past` of scored prefixes: the user's stored history, then the group's events.

        Users of ``sequences`` without a stored history (``-1``, unknown)
        start from an empty past.
        """
        groups = sequences.group_of(prefixes)
        users = sequences.user_codes
        history_lengths = np.where(
            users >= 0, self.model._history.lengths[np.maximum(users, 0)], 0)
        return self.past(sequences, groups, prefixes - sequences.prefix_start[groups],
                         targets, history_lengths)

    def past(self, sequences, groups, lengths, targets=None, history_lengths=None):
        """The copy component's inputs at prefixes of ``sequences``.

        Parameters
        ----------
        sequences : Sequences
        groups, lengths : ndarray of int
            The prefixes: the first ``lengths[j]`` items of group ``groups[j]``.
        targets : ndarray of int, optional
            One item per prefix; without them, every item.
        history_lengths : ndarray of int, optional
            Events of each group's user before the sequence, whose weights
            are the model's ``history_weights_``; None: the sequences start
            the histories.

        Returns
        -------
        dict
            ``log_copy``: ``log(w(i) / Z)`` of each prefix's target (shape
            ``(n,)``) or of every item (``(n, n_items)``), ``-inf`` where
            ``w(i) = 0``; ``log_mass``: ``log Z`` (shape ``(n,)``), ``-inf``
            for an empty past.
        """
        decay = self.decay
        within = PastWeights(sequences, decay, self.model.n_items_)
        mass = total_weight(lengths, decay)
        if targets is not None:
            weights = within.at(groups, lengths, targets)
        else:
            weights = within.rows(groups, lengths).toarray()
        if history_lengths is not None:
            users = sequences.user_codes[groups]
            scale = decay ** np.asarray(lengths, dtype=np.float64)
            mass = mass + scale * total_weight(history_lengths[groups], decay)
            cache = self._cache()
            if targets is not None:
                weights = weights + scale * lookup(cache, users, targets)
            else:
                weights = weights + scale[:, None] * dense_rows(cache, users)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mass = np.log(mass)
            denominator = log_mass if targets is not None else log_mass[:, None]
            log_copy = np.where(np.isfinite(denominator),
                                np.log(weights) - denominator, -np.inf)
        return {"log_copy": log_copy, "log_mass": log_mass}

    # ------------------------------------------------------ the cache
    def after_fit(self, sequences):
        """``history_weights_``: ``w`` at the end of each user's fitted events."""
        model = self.model
        model.history_weights_ = PastWeights(sequences, self.decay,
                                             model.n_items_).final()
        model.history_weights_decay_ = self.decay

    def append(self, continuation):
        """``history_weights_`` after the events of ``continuation`` (``update``).

        The old weights decayed by as many events, plus the new events' own.
        """
        model = self.model
        codes = continuation.user_codes
        decay = np.ones(model.n_users_)
        decay[codes] = self.decay ** continuation.lengths
        to_users = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                                 shape=(model.n_users_, len(codes)))
        weights = scaled_rows(self._cache(), decay) + (
            to_users @ PastWeights(continuation, self.decay, model.n_items_).final())
        weights.sort_indices()  # for _sparse.lookup
        model.history_weights_ = weights
        model.history_weights_decay_ = self.decay

    def _cache(self):
        """``history_weights_`` at ``copy_decay``, grown (zero rows, columns) to the vocabularies.

        ``copy_decay`` is a scoring-time parameter: set after fit, the cache
        of another decay (``history_weights_decay_``; None for a pickle of an
        earlier version) is recomputed from the stored histories, once.
        """
        model = self.model
        if model.history_weights_decay_ != self.decay:
            model.history_weights_ = PastWeights(model._history, self.decay,
                                                 model.n_items_).final()
            model.history_weights_decay_ = self.decay
        cache = model.history_weights_
        if cache.shape == (model.n_users_, model.n_items_):
            return cache
        return sp.csr_matrix((cache.data, cache.indices, np.append(
            cache.indptr, np.full(model.n_users_ - cache.shape[0], cache.indptr[-1]))),
            shape=(model.n_users_, model.n_items_))

    def fitted_state(self):
        """The saved file's entries: ``history_weights`` (at the saved ``copy_decay``)."""
        return {"history_weights": _persistence.to_saved(self._cache())}

    def restore(self, record):
        """``history_weights_`` from a saved file's ``record``."""
        model = self.model
        model.history_weights_ = _persistence.from_saved(
            record["history_weights"], ("n_users", "n_items"),
            {"n_users": model.n_users_, "n_items": model.n_items_}, "history_weights")
        model.history_weights_decay_ = self.decay  # saved with the file's decay


class NoCopy:
    """:class:`HistoryCopy`'s calls without a copy gate: no past, no cache."""

    def event_past(self, sequences, start, stop, continuation=False, dtype=None):
        return None

    def prefix_past(self, sequences, prefixes, targets=None):
        return None

    def after_fit(self, sequences):
        pass

    def append(self, continuation):
        pass

    def fitted_state(self):
        return {}

    def restore(self, record):
        pass
