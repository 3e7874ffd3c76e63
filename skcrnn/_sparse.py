"""Vectorized look-ups in count tables (no Python loop over queries)."""

import numpy as np
import scipy.sparse as sp


def count_matrix(rows, cols, shape):
    """CSR matrix of how often each ``(row, col)`` pair occurs."""
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def lookup(matrix, rows, cols):
    """``matrix[rows[j], cols[j]]`` for every ``j``; rows < 0 give 0."""
    n_cols = matrix.shape[1]
    row_of_entry = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    keys = row_of_entry * n_cols + matrix.indices
    values = np.zeros(len(rows))
    valid = rows >= 0
    query = rows[valid] * n_cols + cols[valid]
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    found = keys[pos] == query if len(keys) else np.zeros(len(query), bool)
    values[np.flatnonzero(valid)[found]] = matrix.data[pos[found]]
    return values


def dense_rows(matrix, rows):
    """Dense copies of ``matrix[rows]``; rows < 0 give zero rows."""
    out = np.zeros((len(rows), matrix.shape[1]))
    valid = np.flatnonzero(rows >= 0)
    if len(valid):
        out[valid] = matrix[rows[valid]].toarray()
    return out


def count_in_prefix(sequences, groups, lengths, targets):
    """How often ``targets[j]`` occurs among the first ``lengths[j]`` items of
    group ``groups[j]`` of ``sequences``."""
    n_items = int(max(sequences.items.max(initial=-1), targets.max(initial=-1))) + 1
    event_keys = sequences.group_of_event * n_items + sequences.items
    order = np.argsort(event_keys, kind="stable")  # positions stay ascending
    sorted_keys = event_keys[order]
    unique_keys, key_rank = np.unique(sorted_keys, return_inverse=True)
    stride = len(sequences.items) + 1
    ranked = key_rank * stride + order  # increasing: by key, then by position
    query_keys = groups * n_items + targets
    rank = np.searchsorted(unique_keys, query_keys)
    present = (rank < len(unique_keys)) & (
        unique_keys[np.minimum(rank, len(unique_keys) - 1)] == query_keys
        if len(unique_keys) else False)
    counts = np.zeros(len(groups), dtype=np.int64)
    q = np.flatnonzero(present)
    bound = sequences.indptr[groups[q]] + lengths[q]
    counts[q] = (np.searchsorted(ranked, rank[q] * stride + bound)
                 - np.searchsorted(ranked, rank[q] * stride))
    return counts


def prefix_count_rows(sequences, groups, lengths, n_items):
    """Dense item counts of the first ``lengths[j]`` items of ``groups[j]``."""
    out = np.zeros((len(groups), n_items))
    # one-hot of each group's events, accumulated along the group
    for_groups = np.unique(groups)
    sub = sequences.subset(for_groups)
    local = np.searchsorted(for_groups, groups)
    onehot_cumsum = np.zeros((len(sub.items) + sub.n_groups, n_items))
    prefix_after = sub.prefix_start[sub.group_of_event] + sub.position_of_event + 1
    onehot_cumsum[prefix_after, sub.items] = 1.0
    onehot_cumsum = np.cumsum(onehot_cumsum, axis=0)
    base = onehot_cumsum[sub.prefix_start]  # rows of empty prefixes: cumsum before
    out[:] = (onehot_cumsum[sub.prefix_start[local] + lengths] - base[local])
    return out
