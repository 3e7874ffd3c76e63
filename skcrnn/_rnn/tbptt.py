"""Training steps of the collaborative network: truncated BPTT over padded user batches.

A batch holds up to ``batch_size`` users (rows sorted by decreasing length);
each user's sequence is cut into chunks of ``chunk_size`` events. Chunk ``c``
of a user reads its items ``x_k`` (``cC <= k < (c+1)C``) and predicts each of
them from the state before it, ``h(k)``: the first chunk predicts the first
item from the initial state (in ``partial_fit``, from the state where the
user's history left off), and the state after the chunk is carried into the
next one, detached. One optimizer step per chunk.

Two details follow the authors' reference implementation and, together,
matter for generalization (on Foursquare check-ins, best validation loss of
the C-GRU: 6.40 nats with neither, 6.33 with either one alone, 6.09 with
both):

- the loss of a step is the summed cross-entropy of the chunk's events
  divided by its number of slots, ``rows x chunk_size``, padding included:
  every event weighs the same in every step, and a chunk where only a few
  long users are still running takes a proportionally small step instead of
  a full one driven by those few users;
- RMSProp divides by ``sqrt(mean_square + epsilon)`` (TensorFlow's rule), so
  parameters with tiny gradients (rare items, users with little data) take
  damped steps instead of full normalized ones.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .._torch.dropout import Dropout
from .._torch.loop import Step
from .._torch.optim import Rows
from .._torch.output import sampled_cross_entropy, summed_cross_entropy
from .copy import mixture
from .recurrence import autograd_states, chunk_states

#: How a chunk's gradients are computed: the hand-written BPTT of
#: :func:`chunk_states`, or autograd through the cell's step (the reference).
BPTT = {"manual": chunk_states, "autograd": autograd_states}


def chunk_losses(network, batch, chunk_size, initial_state, bptt="manual", *,
                 deviation_penalty=0.0, dropout=0.0, proposal=None, generator=None):
    """Yield a :class:`~skcrnn._torch.loop.Step` for each chunk of a batch, in time order.

    The generator is lazy: it reads the users' recurrent matrices when the
    chunk starts, so that an optimizer step taken between two chunks is seen
    by the next one. The state carried from one chunk to the next is
    detached. With per-user weights, a step's ``touched["recurrent"]`` holds
    its users and the leaf copy of their matrices that receives their
    gradient (``touched["deviation"]``, or ``touched["low_rank_left"]`` and
    ``touched["low_rank_right"]``, for the deviations of :mod:`.weights`).

    Parameters
    ----------
    network : CollaborativeRNN
    batch : Batch
    chunk_size : int
    initial_state : float or Tensor of shape (n_users, H)
        The state before each row's first event: a value of every
        coordinate, or each user's own state, the row of its user code
        (``partial_fit``: where the user's history left off).
    bptt : {"manual", "autograd"}, default="manual"
        See :data:`BPTT`; both compute the same numbers.
    deviation_penalty : float, default=0.0
        ``lambda``: each step's loss adds ``lambda * sum_u s_u ||D_u||^2``
        (over the step's rows), in the same units as the summed
        cross-entropy and divided like it, where ``D_u`` is the user's
        deviation from the shared recurrent matrices (:mod:`.weights`; all
        gate blocks, squared Frobenius norm) and ``s_u`` the share of the
        user's events of the batch that the chunk holds: over the chunks of
        a batch, each user's penalty sums to ``lambda ||D_u||^2``, so the
        objective of a pass over the events is their summed cross-entropy
        plus ``lambda sum_u ||D_u||^2`` (a Gaussian prior on the deviations).
        Only for networks with deviations.
    dropout : float, default=0.0
        Rate of (inverted) dropout on the chunk's input terms and on the
        states that feed the output layer; the recurrent connection and
        the carried state are not dropped.
    proposal : UnigramProposal, optional
        Train with the sampled softmax (:func:`~skcrnn._torch.output.
        sampled_cross_entropy`) instead of the full one: each step draws
        its negatives from ``proposal``, shared by its rows. The step then
        reads the item parameters lazily too (:class:`~skcrnn._torch.optim.
        Rows`): the input rows of its items and the output rows of its
        targets and negatives, which alone the optimizer updates. The
        step's ``nll`` is then the sampled loss. Not with the copy gate.
    generator : torch.Generator, optional
        Draws the dropout masks and the negatives (on the batch's device).

    With the network's copy gate, ``batch.event_values`` holds each event's
    ``log_copy`` (log-probability of its item under the user's past items)
    and ``log_mass`` (``log Z`` of that past), padded like the items, and
    the loss is that of the mixture (:mod:`.copy`).
    """
    run = BPTT[bptt]
    device = batch.items.device
    if deviation_penalty and not network.weights.has_deviation:
        raise ValueError(f"deviation_penalty={deviation_penalty!r} needs deviations "
                         f"from shared matrices; the network's recurrent weights "
                         f"are {network.recurrent_kind!r}.")
    if proposal is not None and network.copy_history:
        raise ValueError("the sampled softmax cannot train the copy gate, whose "
                         "mixture needs the full softmax's probability.")
    n_slots = batch.slot_rows * chunk_size  # the global batch's, in a shard
    hidden = _first_states(network, batch, initial_state)
    n_columns = batch.items.shape[1]
    descending = -batch.lengths
    drop = Dropout(dropout, generator)
    for start in range(0, n_columns, chunk_size):
        stop = min(start + chunk_size, n_columns)
        active = int(np.searchsorted(descending, -start, side="left"))
        items = batch.items[:active, start:stop]
        real = _real_slots(batch.lengths[:active] - start, stop - start, device)
        rows = Rows()
        weights, deviation = network.weights.for_step(network, batch.users[:active],
                                                      rows)
        # the last step of the last chunk would only feed a carry nobody reads
        n_steps = stop - start if stop < n_columns else stop - start - 1
        # F.embedding, not item_input[items]: the backward of advanced indexing
        # made 2-thread CPU trainings differ from run to run (same seed)
        if proposal is None:
            inputs = F.embedding(items, network.item_input)
        else:
            # the rows of the real slots' items only: padding (item 0) feeds
            # no loss, and reading its row would move its statistics (and make
            # a shard of the batch read other rows than the whole batch)
            read, inverse = torch.unique(items.flatten().index_select(0, real),
                                         return_inverse=True)
            positions = torch.zeros(items.numel(), dtype=inverse.dtype, device=device)
            positions[real] = inverse
            inputs = F.embedding(positions.view(items.shape),
                                 rows.read("item_input", network.item_input, read))
        inputs = drop(inputs)
        states, hidden = run(hidden[:active].detach(), inputs, weights, network.unit,
                             n_steps)
        states = drop(states.flatten(0, 1).index_select(0, real))
        targets = items.flatten().index_select(0, real)
        copy = None
        if network.copy_history:
            copy = mixture(network, states, {
                name: values[:active, start:stop].flatten().index_select(0, real)
                for name, values in batch.event_values.items()})
        if proposal is None:
            nll = summed_cross_entropy(states, network.output_weight,
                                       network.output_bias, targets, adjust=copy)
        else:
            nll = _sampled_nll(network, states, targets, proposal, generator, rows)
        objective = nll
        if deviation_penalty:
            share = torch.as_tensor(
                np.clip(batch.lengths[:active] - start, 0, stop - start)
                / batch.lengths[:active], dtype=deviation.dtype, device=device)
            objective = nll + deviation_penalty * (
                share * deviation.square().sum(dim=(1, 2))).sum()
        yield Step(objective / n_slots, nll.detach(), len(real), rows.touched)


def _sampled_nll(network, states, targets, proposal, generator, rows):
    """:func:`~skcrnn._torch.output.sampled_cross_entropy` of a step, output rows lazily."""
    negatives = proposal.draw(generator)
    read, positions = torch.unique(torch.cat([targets, negatives]), return_inverse=True)
    weight = rows.read("output_weight", network.output_weight, read)
    bias = rows.read("output_bias", network.output_bias, read)
    n_rows = len(targets)
    return sampled_cross_entropy(states, weight, bias, positions[:n_rows],
                                 positions[n_rows:],
                                 proposal.log_expected[read].to(bias.dtype))


def _first_states(network, batch, initial_state):
    """Each row's state before its first event (see :func:`chunk_losses`)."""
    dtype = network.item_input.dtype
    if torch.is_tensor(initial_state):
        return initial_state.index_select(0, batch.users).to(dtype)
    return torch.full((len(batch.lengths), network.hidden_size), initial_state,
                      dtype=dtype, device=batch.items.device)


def n_chunks(batches, chunk_size):
    """How many steps :func:`chunk_losses` yields over ``batches``."""
    return sum(-(-batch.items.shape[1] // chunk_size) for batch in batches)


def _real_slots(remaining, width, device):
    """Flat indices of the real (not padding) slots of a ``(rows, width)`` chunk.

    Computed on the host from the known lengths, so that selecting them
    needs no device-to-host synchronization (a boolean mask would).
    """
    counts = np.clip(remaining, 0, width)
    offsets = np.repeat(np.arange(len(counts)) * width - np.cumsum(counts) + counts,
                        counts)
    return torch.as_tensor(offsets + np.arange(int(counts.sum())), device=device)
