"""The loops that run a cell of :mod:`.cells` over time.

:func:`chunk_states`
    training: one chunk of truncated back-propagation through time for a
    batch of users. Forward, the cell's step; backward, the textbook
    back-propagation through time with the cell's hand-written derivative,
    one small batched product per step, the recurrent matrices' gradients
    formed once per chunk as one batched product over all its steps. No
    autograd graph of a few dozen nodes per step is built.
:func:`autograd_states`
    the same states through autograd, step by step: the reference the
    hand-written derivative is tested against (``SKCRNN_BPTT=autograd``
    trains with it).
:func:`forward_states`
    scoring: the states after requested prefixes of many sequences, without
    gradients.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._torch.batching import pad
from .._torch.runtime import small_kernels

#: Elements of gathered per-user recurrent matrices held at once by forward runs
#: (a few MiB: larger batches of users spend their steps waiting on memory).
_WEIGHT_ELEMENTS = 2 ** 20
#: Time steps whose states a forward run stacks at once.
_WINDOW = 64


def chunk_states(start, inputs, weights, unit, n_steps):
    """States of a batch over one chunk, differentiable by hand-written BPTT.

    Parameters
    ----------
    start : Tensor of shape (B, H)
        States before the chunk's first item.
    inputs : Tensor of shape (B, T, k*H)
        Input terms of the chunk's items (rows of ``item_input``).
    weights : Tensor of shape (B, H, k*H) or (H, k*H)
        Per-row recurrent matrices, or one shared set.
    unit : GRUCell or TanhCell
    n_steps : int
        Steps to take, ``T`` or ``T - 1`` (the state after the last item of
        a user's last chunk feeds nothing).

    Returns
    -------
    states : Tensor of shape (B, T, H)
        ``states[:, t]`` is the state before item ``t`` of the chunk.
    final : Tensor of shape (B, H)
        The state after ``n_steps`` steps (the carry into the next chunk).
    """
    _check_steps(inputs, n_steps)
    return _ChunkRecurrence.apply(start, inputs, weights, unit, n_steps)


def autograd_states(start, inputs, weights, unit, n_steps):
    """What :func:`chunk_states` computes, step by step through autograd."""
    _check_steps(inputs, n_steps)
    states, hidden, _ = _run_steps(start, inputs, weights, unit, n_steps)
    return states, hidden


def _check_steps(inputs, n_steps):
    if inputs.shape[1] < 1 or not inputs.shape[1] - 1 <= n_steps <= inputs.shape[1]:
        raise ValueError(f"n_steps must be T or T - 1, with T >= 1 (T = "
                         f"{inputs.shape[1]}); got {n_steps}.")


def _run_steps(start, inputs, weights, unit, n_steps):
    """The forward loop: stacked states before each item, the carry, saved."""
    weights = tuple(part.contiguous() for part in unit.split(weights))
    # views made once per chunk: slicing inside the loop costs a call per step
    step_inputs = list(zip(*(part.split(1, dim=1) for part in unit.split(inputs))))
    hidden = start.unsqueeze(1)
    states, saved = [hidden], []
    for t in range(n_steps):
        hidden, kept = unit.step(hidden, step_inputs[t], weights)
        states.append(hidden)
        saved.append(kept)
    stacked = torch.cat(states[:inputs.shape[1]], dim=1)
    saved = tuple(torch.cat(parts, dim=1) for parts in zip(*saved))
    return stacked, hidden.squeeze(1), saved


def _outer_sum(left, right, shared):
    """``sum_t left[:, t]^T right[:, t]`` per row ``(B, a, b)``, or summed over rows."""
    if shared:
        return left.flatten(0, 1).T @ right.flatten(0, 1)
    return torch.bmm(left.transpose(1, 2), right)


class _ChunkRecurrence(torch.autograd.Function):
    """Forward: the cell's steps, keeping what its derivative needs. Backward: BPTT."""

    @staticmethod
    def forward(ctx, start, inputs, weights, unit, n_steps):
        with small_kernels(start):
            stacked, hidden, saved = _run_steps(start, inputs, weights, unit,
                                                n_steps)
        ctx.config = (unit, n_steps, inputs.shape[1], inputs.shape[2],
                      weights.dim() == 2)
        ctx.save_for_backward(weights, stacked[:, :n_steps], *saved)
        return stacked, hidden

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states, grad_final):
        with small_kernels(ctx.saved_tensors[0]):
            return _ChunkRecurrence._backward(ctx, grad_states, grad_final)

    @staticmethod
    def _backward(ctx, grad_states, grad_final):
        unit, n_steps, n_columns, width, shared = ctx.config
        weights, before, *saved = ctx.saved_tensors
        size = weights.shape[-2]
        n_rows = (grad_states if grad_states is not None else grad_final).shape[0]
        if grad_states is None:
            grad_states = weights.new_zeros(n_rows, n_columns, size)
        grad = (weights.new_zeros(n_rows, 1, size) if grad_final is None
                else grad_final.unsqueeze(1))
        if n_steps < n_columns:
            grad = grad + grad_states[:, n_steps:n_steps + 1]
        if n_steps == 0:  # a one-item last chunk: its item is predicted, not read
            return (grad.squeeze(1), weights.new_zeros(n_rows, n_columns, width),
                    torch.zeros_like(weights), None, None)
        grad_pre = weights.new_empty(n_rows, n_steps, width)
        factors = list(zip(*(factor.split(1, dim=1) for factor
                             in unit.backward_factors(before, saved))))
        # row-major once per chunk: every step reads them
        weights_t = tuple(part.transpose(-1, -2).contiguous()
                          for part in unit.split(weights))
        grad_after = grad_states.split(1, dim=1)
        pre_steps = unit.gradient_views(grad_pre)
        for t in range(n_steps - 1, -1, -1):
            grad = unit.backward_step(grad, grad_after[t], factors[t], weights_t,
                                      pre_steps[t])
        grad_weights = torch.cat(
            [_outer_sum(left, right, shared) for left, right in
             zip(unit.recurrent_inputs(before, saved), unit.split(grad_pre))],
            dim=-1)
        return grad.squeeze(1), _pad_steps(grad_pre, n_columns), grad_weights, None, None


def _pad_steps(grad_inputs, n_columns):
    """Zero gradient for the input terms of items no step read (the last one)."""
    missing = n_columns - grad_inputs.shape[1]
    if missing == 0:
        return grad_inputs
    return torch.cat([grad_inputs, grad_inputs.new_zeros(
        grad_inputs.shape[0], missing, grad_inputs.shape[2])], dim=1)


# ---------------------------------------------------------------- forward runs
@torch.no_grad()
def forward_states(network, sequences, start_states, prefixes, dtype=torch.float64):
    """Hidden states after the requested prefixes of each group's items.

    Group ``g`` starts from ``start_states[g]`` with the recurrent matrices of
    user ``sequences.user_codes[g]`` (the mean matrices for ``-1``; see
    :meth:`.network.CollaborativeRNN.recurrent_for`) and reads
    its items one step at a time. All groups run together, longest first: the
    loop is over time steps only, and groups drop out of the batch once their
    last requested prefix is reached.

    Parameters
    ----------
    network : CollaborativeRNN
    sequences : Sequences
        The items each group reads.
    start_states : Tensor of shape (n_groups, H)
        State of each group before its first item (prefix 0).
    prefixes : ndarray of int64
        Prefix ids (``sequences.prefix_start[g] + k`` is group ``g`` after
        ``k`` items), in any order, repeats allowed.
    dtype : torch.dtype, default=torch.float64
        Type of the computation. Double precision makes a state independent,
        to rounding far below ``1e-10``, of which other groups share its batch.

    Returns
    -------
    Tensor of shape (len(prefixes), H)
        The states, in the order of ``prefixes``, on the network's device.
    """
    device = network.item_input.device
    prefixes = np.asarray(prefixes, dtype=np.int64)
    out = torch.empty((len(prefixes), network.hidden_size), dtype=dtype,
                      device=device)
    if len(prefixes) == 0:
        return out
    groups = sequences.group_of(prefixes)
    steps = prefixes - sequences.prefix_start[groups]
    # each group runs up to its last requested prefix only
    run_length = np.full(sequences.n_groups, -1, dtype=np.int64)
    np.maximum.at(run_length, groups, steps)
    needed = np.flatnonzero(run_length >= 0)
    needed = needed[np.argsort(-run_length[needed], kind="stable")]
    max_rows = (len(needed) if network.shared else
                max(1, _WEIGHT_ELEMENTS // network.weights.elements_per_user(network)))
    row_of_group = np.empty(sequences.n_groups, dtype=np.int64)
    for begin in range(0, len(needed), max_rows):
        batch = needed[begin:begin + max_rows]
        row_of_group[batch] = np.arange(len(batch))
        mine = np.flatnonzero(np.isin(groups, batch))
        _run_batch(network, sequences, batch, run_length[batch],
                   start_states[torch.as_tensor(batch, device=device)].to(dtype)
                   .unsqueeze(1),
                   row_of_group[groups[mine]], steps[mine], mine, out, dtype)
    return out


def _run_batch(network, sequences, batch, run_length, hidden, rows, steps, targets,
               out, dtype):
    """Run one batch of groups (sorted by decreasing run length), filling ``out``."""
    device = hidden.device
    unit = network.unit
    items, _ = pad(sequences, batch, run_length)
    items = torch.as_tensor(items, device=device)
    users = torch.as_tensor(sequences.user_codes[batch], device=device)
    weights = tuple(part.contiguous() for part in
                    unit.split(network.recurrent_for(users, dtype=dtype)))
    n_steps = int(run_length[0])
    # groups still running at each step: a prefix of the rows
    descending = -run_length
    order = np.argsort(steps, kind="stable")
    rows, steps, targets = rows[order], steps[order], targets[order]
    for start in range(0, n_steps + 1, _WINDOW):
        stop = min(start + _WINDOW, n_steps + 1)
        active = int(np.searchsorted(descending, -start, side="right"))
        hidden = hidden[:active]
        weights = tuple(w[:active] if w.dim() == 3 else w for w in weights)
        # F.embedding, not item_input[items]: the backward of advanced indexing
        # made 2-thread CPU trainings differ from run to run (same seed)
        terms = F.embedding(items[:active, start:stop], network.item_input).to(dtype)
        step_inputs = list(zip(*(part.split(1, dim=1) for part in unit.split(terms))))
        saved = []
        for t in range(stop - start):
            saved.append(hidden)
            if start + t < n_steps:
                hidden, _ = unit.step(hidden, step_inputs[t], weights)
        lo, hi = np.searchsorted(steps, [start, stop])
        if hi > lo:
            block = torch.cat(saved, dim=1)
            pick_rows = torch.as_tensor(rows[lo:hi], device=device)
            pick_steps = torch.as_tensor(steps[lo:hi] - start, device=device)
            out[torch.as_tensor(targets[lo:hi], device=device)] = block[
                pick_rows, pick_steps]
