"""Cutting, windowing, padding and batching user sequences for training.

Everything here is vectorized numpy over :class:`~skcrnn._events.Sequences`;
there is no loop over users or events.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .._events import Sequences


def validation_sizes(lengths, fraction):
    """How many of each user's last events are held out for validation.

    ``round(fraction * n)`` (half to even), at least 1 when ``fraction > 0``,
    and always leaving at least one training event (so a user with a single
    event has none).

    Parameters
    ----------
    lengths : ndarray of int
        Each user's number of events.
    fraction : float
        Share held out, in ``[0, 1)``.

    Returns
    -------
    ndarray of int64
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if fraction <= 0:
        return np.zeros_like(lengths)
    sizes = np.maximum(np.rint(fraction * lengths).astype(np.int64), 1)
    return np.clip(np.minimum(sizes, lengths - 1), 0, None)


def window(sequences, start, stop):
    """Keep positions ``start[g] <= k < stop[g]`` of each group's items.

    Parameters
    ----------
    sequences : Sequences
    start, stop : ndarray of int
        Per group, with ``0 <= start <= stop <= length``.

    Returns
    -------
    Sequences
        Same groups and user codes, shorter item lists.
    """
    start = np.asarray(start, dtype=np.int64)
    stop = np.asarray(stop, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(stop - start)]).astype(np.int64)
    return Sequences(sequences.user_codes, indptr,
                     sequences.items[window_mask(sequences, start, stop)])


def window_mask(sequences, start, stop):
    """Which events :func:`window` keeps (to window per-event arrays alike)."""
    position = sequences.position_of_event
    group = sequences.group_of_event
    return (position >= np.asarray(start)[group]) & (position < np.asarray(stop)[group])


def length_sorted_batches(lengths, batch_size):
    """Groups with items, longest first, cut into batches of ``batch_size``.

    Users of similar lengths share a batch, which keeps padding small; inside
    a batch the rows are in decreasing length, so the rows still running at
    any step are a prefix of the batch.

    Returns
    -------
    list of ndarray of int64
        Group indices of each batch.
    """
    lengths = np.asarray(lengths)
    groups = np.flatnonzero(lengths > 0)
    groups = groups[np.argsort(-lengths[groups], kind="stable")]
    return [groups[i:i + batch_size] for i in range(0, len(groups), batch_size)]


def pad(sequences, groups, max_length=None, values=None):
    """The groups' items (or per-event ``values``) as a right-padded matrix.

    Parameters
    ----------
    sequences : Sequences
    groups : ndarray of int
        Rows of the matrix, in this order.
    max_length : int or ndarray of int, optional
        Keep only the first ``max_length`` items of each group (per group when
        an array).
    values : ndarray of shape (n_events,), optional
        Pad these, one per event of ``sequences``, instead of the items.

    Returns
    -------
    items : ndarray of shape (len(groups), max(lengths))
        Item codes (int64), or ``values`` in their type, 0 after each row's
        end (padding is never read as data).
    lengths : ndarray of int64 of shape (len(groups),)
    """
    groups = np.asarray(groups, dtype=np.int64)
    lengths = sequences.lengths[groups]
    if max_length is not None:
        lengths = np.minimum(lengths, max_length)
    n_rows = len(groups)
    n_cols = int(lengths.max()) if n_rows else 0
    source = sequences.items if values is None else values
    items = np.zeros((n_rows, n_cols), dtype=source.dtype)
    total = int(lengths.sum())
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items[rows, cols] = source[np.repeat(sequences.indptr[groups], lengths) + cols]
    return items, lengths.astype(np.int64)


@dataclass
class Batch:
    """Padded users of one training batch, on the training device.

    Attributes
    ----------
    users : LongTensor of shape (B,)
    items : LongTensor of shape (B, L)
        Right-padded item codes, rows in decreasing length.
    lengths : ndarray of int64 of shape (B,)
        Real events per row (host memory: it drives the loops).
    event_values : dict of str to Tensor of shape (B, L)
        Per-event arrays padded like ``items`` (see :func:`make_batches`).
    loss_rows : int or None
        The rows a step's loss is divided among (with its chunk size): the
        batch's own rows (None), or those of the global batch that this one
        is a part of (:meth:`restricted`).
    """

    users: torch.Tensor
    items: torch.Tensor
    lengths: np.ndarray
    event_values: dict = field(default_factory=dict)
    loss_rows: int = None

    @property
    def n_events(self):
        return int(self.lengths.sum())

    @property
    def slot_rows(self):
        """The rows a step's loss is divided among (see ``loss_rows``)."""
        return len(self.lengths) if self.loss_rows is None else self.loss_rows

    def restricted(self, local_code):
        """The rows of the users that ``local_code`` maps (codes >= 0), renumbered.

        For multi-process training (:mod:`.cluster`): a rank keeps its
        users' rows of a global batch, their codes replaced by the rank's
        local ones, the padding cut to its longest row, and the global
        batch's ``slot_rows``, so that the ranks' losses add up to the
        global batch's.

        Parameters
        ----------
        local_code : ndarray of int64
            For each global user code, its local code, or -1 (another rank's).

        Returns
        -------
        Batch
        """
        local = local_code[self.users.cpu().numpy()]
        rows = np.flatnonzero(local >= 0)
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        index = torch.as_tensor(rows, device=self.items.device)
        return Batch(
            users=torch.as_tensor(local[rows], device=self.users.device),
            items=self.items.index_select(0, index)[:, :width], lengths=lengths,
            event_values={name: values.index_select(0, index)[:, :width]
                          for name, values in self.event_values.items()},
            loss_rows=self.slot_rows)


def make_batches(sequences, batch_size, device, event_values=None):
    """The training batches of :func:`length_sorted_batches`, padded.

    ``event_values`` (name -> array with one value per event of
    ``sequences``) are padded alongside into each batch's ``event_values``.
    """
    batches = []
    for groups in length_sorted_batches(sequences.lengths, batch_size):
        items, lengths = pad(sequences, groups)
        padded = {name: torch.as_tensor(pad(sequences, groups, values=values)[0],
                                        device=device)
                  for name, values in (event_values or {}).items()}
        batches.append(Batch(
            users=torch.as_tensor(sequences.user_codes[groups], device=device),
            items=torch.as_tensor(items, device=device), lengths=lengths,
            event_values=padded))
    return batches


def window_spans(first, stop, width, lower=0, stride=None):
    """Windows of at most ``width`` positions whose ends cover ``[first, stop)``.

    The windows of group ``g`` are cut from its end: they end at ``stop[g]``,
    ``stop[g] - stride``, ``stop[g] - 2 * stride``, ... and each starts
    ``width`` positions before its end, or at ``lower[g]``, whichever is
    later; only the windows that end after ``first[g]`` are kept. Window
    ``j`` *covers* its positions from ``covered[j] = max(end[j] - stride,
    first[g])`` on; those before are context. So every position of ``[first,
    stop)`` is covered by exactly one window, the latest positions (a
    user's most recent events) by full windows, and with ``stride <
    width`` every covered position has at least ``width - stride`` positions
    of context before it in its window (or all of them, from ``lower``).

    Parameters
    ----------
    first, stop : ndarray of int
        Per group, with ``lower <= first <= stop``.
    width : int
        The longest window.
    lower : int or ndarray of int, default=0
        The first position a window may hold, per group.
    stride : int, optional
        Distance between the ends of consecutive windows, in ``[1,
        width]``; by default ``width`` (windows that do not overlap).

    Returns
    -------
    groups, begin, end, covered : ndarray of int64
        One entry per window, groups in increasing order and, inside a
        group, windows from the last to the first: window ``j`` holds
        positions ``begin[j] <= p < end[j]`` of group ``groups[j]`` and
        covers those from ``covered[j]`` on.
    """
    stride = width if stride is None else stride
    first = np.asarray(first, dtype=np.int64)
    stop = np.asarray(stop, dtype=np.int64)
    lower = np.broadcast_to(np.asarray(lower, dtype=np.int64), stop.shape)
    counts = -(-np.maximum(stop - first, 0) // stride)
    groups = np.repeat(np.arange(len(stop)), counts)
    back = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    end = stop[groups] - back * stride
    begin = np.maximum(end - width, lower[groups])
    covered = np.maximum(end - stride, first[groups])
    return groups, begin, end, covered


def gather_windows(sequences, groups, begin, end, offset=0, fill=-1):
    """The items of windows of groups as a right-padded matrix.

    Row ``j`` holds the items at positions ``begin[j] + offset + c`` of
    group ``groups[j]`` for ``c < end[j] - begin[j]``; positions before the
    group's first item, and the padding after the row's end, hold ``fill``.

    Parameters
    ----------
    sequences : Sequences
    groups, begin, end : ndarray of int
        One window per row, as :func:`window_spans` gives them, with
        ``begin[j] + offset < end[j] + offset <= length``.
    offset : int, default=0
        Shift of every position (``-1``: each window's items one position
        earlier, the inputs that predict the items of the window).
    fill : int, default=-1

    Returns
    -------
    ndarray of int64 of shape (len(groups), max(end - begin))
    """
    groups = np.asarray(groups, dtype=np.int64)
    lengths = np.asarray(end, dtype=np.int64) - np.asarray(begin, dtype=np.int64)
    n_cols = int(lengths.max()) if len(lengths) else 0
    matrix = np.full((len(groups), n_cols), fill, dtype=np.int64)
    rows = np.repeat(np.arange(len(groups)), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths,
                                                      lengths)
    positions = np.repeat(np.asarray(begin, dtype=np.int64) + offset, lengths) + cols
    real = positions >= 0
    matrix[rows[real], cols[real]] = sequences.items[
        sequences.indptr[groups][rows[real]] + positions[real]]
    return matrix
