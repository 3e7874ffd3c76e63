"""Decayed counts of each user's past items: the history a model can copy from.

For a sequence ``x_0, x_1, ...`` and a decay ``0 < lambda <= 1``, the
weight of item ``i`` before position ``k`` and the total weight are::

    w_k(i) = sum_{j < k, x_j = i} lambda ** (k - 1 - j)
    Z_k    = sum_{j < k} lambda ** (k - 1 - j)

(plain counts and the sequence's length when ``lambda = 1``), so that
``w_k / Z_k`` is a distribution over the items seen before ``k`` that puts
more weight on recent ones as ``lambda`` decreases.

Everything here is vectorized numpy over :class:`~skcrnn._events.Sequences`
(no loop over users or events). The events are sorted by (group, item,
position), and each event gets ``E = w(its item)`` just after it, by the
recursion ``E_m = 1 + lambda ** gap * E_{m-1}`` along the occurrences of an
item, solved as a parallel scan in ``log2`` of the longest run rounds. Its
closed form, ``exp(-mu p_m) * sum_{m' <= m} exp(mu p_{m'})`` with
``mu = -log(lambda)``, is not used: it overflows on long sequences, and a
segmented cumulative sum loses short runs' digits next to long ones.
"""

import numpy as np
import scipy.sparse as sp

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
