"""The windows the attention network reads: training steps and scored prefixes.

A user's *token sequence* is the start token followed by the user's items:
token ``t`` is :data:`~.network.START` for ``t = 0`` and item ``x_{t-1}``
after, and token ``t`` predicts item ``x_t``. The distribution after a
history of ``n`` items is read at token ``n`` from the window of the last
``max_history`` tokens, ``[max(0, n + 1 - W), n]``: the last ``W`` items
once ``n >= W``, the start token and all ``n`` items before.

Histories are stored whole, but a prediction only reads the last ``W``
items: :func:`with_history` puts each group's last ``W`` history items in
front of its own items (the *context*), so that training continuations
(``partial_fit``) and scoring see exactly the windows a full history gives.

Training cuts each user's tokens into windows of ``W`` tokens
(:func:`~skcrnn._torch.batching.window_spans`, from the end, so that the
most recent events are predicted from full windows); every slot of a window
predicts its next item at once, the causal mask keeping later slots out.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .._events import Sequences
from .._torch.batching import gather_windows, window_spans
from .._torch.loop import Step
from .._torch.optim import Rows
from .._torch.output import summed_cross_entropy
from .network import START

#: About how many values (rows x slots x width) one scoring block computes.
_SCORING_CELLS = 2 ** 21


def with_history(history, user_codes, history_lengths, width, sequences):
    """Each group's last ``width`` history items, then its own items.

    Parameters
    ----------
    history : Sequences
        The stored histories, one group per user code.
    user_codes : ndarray of int
        Each group's user (``-1``: unknown, no history).
    history_lengths : ndarray of int
        How many of its user's first history events precede each group.
    width : int
        ``max_history``.
    sequences : Sequences
        The groups' own items.

    Returns
    -------
    context : Sequences
        Per group, its ``tails`` history items followed by its own items.
    tails : ndarray of int64
        ``min(history_lengths, width)``: where the group's own items start.
    lower : ndarray of int64
        The first token a window of the context may hold: 1 where the
        history was cut (token 0 is then an item, not the start of the
        user's history), else 0.
    """
    history_lengths = np.where(np.asarray(user_codes) >= 0, history_lengths, 0)
    tails = np.minimum(history_lengths, width).astype(np.int64)
    lengths = tails + sequences.lengths
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    group = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(int(indptr[-1])) - indptr[:-1][group]
    first_kept = history.indptr[np.maximum(user_codes, 0)] + history_lengths - tails
    from_history = position < tails[group]
    source = np.where(from_history, first_kept[group] + position,
                      len(history.items) + sequences.indptr[:-1][group] + position
                      - tails[group])
    items = np.concatenate([history.items, sequences.items])[source]
    context = Sequences(np.asarray(user_codes, dtype=np.int64), indptr,
                        items.astype(np.int64))
    return context, tails, (history_lengths > width).astype(np.int64)


@torch.no_grad()
def query_hidden(network, context, groups, queries, dtype):
    """The hidden state that predicts the item after token ``queries[j]`` of a group.

    Parameters
    ----------
    network : SelfAttentionNetwork
    context : Sequences
        See :func:`with_history`.
    groups, queries : ndarray of int
        Group and token (the context's number of items before the
        prediction) of each row.
    dtype : torch.dtype
        Precision of the computation.

    Returns
    -------
    Tensor of shape (len(groups), H), on the network's device
        Computed without dropout, a block of rows at a time; each row only
        from its own window.
    """
    device = network.item_embedding.device
    groups = np.asarray(groups, dtype=np.int64)
    end = np.asarray(queries, dtype=np.int64) + 1
    begin = np.maximum(end - network.max_history, 0)
    width = max(network.hidden_size, network.n_heads * network.max_history)
    rows = max(1, _SCORING_CELLS // (network.max_history * width))
    hidden = torch.empty((len(groups), network.hidden_size), dtype=dtype, device=device)
    for first in range(0, len(groups), rows):
        block = slice(first, first + rows)
        tokens = torch.as_tensor(gather_windows(context, groups[block], begin[block],
                                                end[block], offset=-1, fill=START),
                                 device=device)
        users = torch.as_tensor(context.user_codes[groups[block]], device=device)
        slots = torch.as_tensor(end[block] - begin[block] - 1, device=device)
        hidden[block] = network.hidden_states(
            tokens, network.user_vectors(users, dtype), dtype=dtype,
            query_slots=slots[:, None])[:, 0]
    return hidden


@dataclass
class WindowBatch:
    """One step's windows (rows of :class:`TrainingWindows`) and dropout seed."""

    rows: np.ndarray
    seed: int
    n_events: int


class TrainingWindows:
    """The training windows of a plan, padded, on the training device.

    Parameters
    ----------
    context : Sequences
        See :func:`with_history`.
    first, stop : ndarray of int
        Per group, the tokens ``first <= t < stop`` predict the items
        trained on (item ``x_t`` of the context).
    lower : ndarray of int
        See :func:`with_history`.
    width : int
        ``max_history``.
    device : torch.device
    stride : int, optional
        Tokens between the ends of consecutive windows of a user (see
        :func:`~skcrnn._torch.batching.window_spans`): each window trains
        its last ``stride`` slots, the slots before being context. By
        default ``width``: windows do not overlap.
    """

    def __init__(self, context, first, stop, lower, width, device, stride=None):
        groups, begin, end, covered = window_spans(first, stop, width, lower, stride)
        self.device = device
        self.lengths = end - begin
        self.first_slot = covered - begin
        self.n_events = self.lengths - self.first_slot
        self.tokens = torch.as_tensor(
            gather_windows(context, groups, begin, end, offset=-1, fill=START),
            device=device)
        self.targets = torch.as_tensor(
            gather_windows(context, groups, begin, end, offset=0, fill=0),
            device=device)
        self.users = torch.as_tensor(context.user_codes[groups], device=device)

    def __len__(self):
        return len(self.lengths)

    def draw(self, rng, batch_size):
        """One epoch's batches: the windows in a new order, ``batch_size`` a batch.

        Each batch gets a seed for its dropout masks, drawn with ``rng`` too.
        """
        order = rng.permutation(len(self))
        starts = range(0, len(order), batch_size)
        seeds = rng.integers(0, 2 ** 62, size=len(starts))
        return [WindowBatch(order[i:i + batch_size], int(seed),
                            int(self.n_events[order[i:i + batch_size]].sum()))
                for i, seed in zip(starts, seeds)]

    def steps(self, network, batch, dropout):
        """Yield the batch's one :class:`~skcrnn._torch.loop.Step`.

        The user embeddings of the batch's users are read through
        :class:`~skcrnn._torch.optim.Rows` (updated lazily).
        """
        lengths = self.lengths[batch.rows]
        n_slots = int(lengths.max())
        index = torch.as_tensor(batch.rows, device=self.device)
        tokens = self.tokens.index_select(0, index)[:, :n_slots]
        targets = self.targets.index_select(0, index)[:, :n_slots]
        rows = Rows()
        user_vectors = None
        if network.has_user_embedding:
            users, inverse = torch.unique(self.users.index_select(0, index),
                                          return_inverse=True)
            user_vectors = rows.read("user_embedding", network.user_embedding,
                                     users)[inverse]
        generator = torch.Generator(device=self.device).manual_seed(batch.seed)
        # only the trained slots (each row's last ones) are the last block's
        # queries: the S slots ending at each row's last
        counts = lengths - self.first_slot[batch.rows]
        n_queries = int(counts.max())
        query_slots = np.maximum(lengths[:, None] - n_queries + np.arange(n_queries), 0)
        query_slots = torch.as_tensor(query_slots, device=self.device)
        states = network.hidden_states(tokens, user_vectors, dropout=dropout,
                                       generator=generator, query_slots=query_slots)
        trained = torch.as_tensor(_last_slots(counts, n_queries), device=self.device)
        nll = summed_cross_entropy(
            states.flatten(0, 1).index_select(0, trained), network.output_matrix(),
            network.output_bias,
            targets.gather(1, query_slots).flatten().index_select(0, trained))
        yield Step(nll / max(len(trained), 1), nll.detach(), len(trained), rows.touched)


def _last_slots(counts, n_slots):
    """Flat indices of the last ``counts[r]`` slots of each row of ``(rows, n_slots)``."""
    starts = np.arange(len(counts)) * n_slots + n_slots - counts
    offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
    return offsets + np.arange(int(counts.sum()))
