"""The collaborative recurrent network: parameters, one batched step, forward runs.

Row-vector convention: a batch of hidden states ``h`` has shape ``(B, H)`` and a
matrix acts on it from the right (``h @ W``). With ``k = 3`` for the GRU and
``k = 1`` for the tanh cell, the parameters are

``item_input`` (n_items, k*H)
    the input terms ``W_{.i} x_t`` of one-hot items: row ``i`` is item ``i``'s
    input embedding, shared by all users;
``recurrent`` (n_users, H, k*H), or (1, H, k*H) when shared
    the recurrent matrices, one set per user (C-GRU, C-tanh) or one set for
    everybody (P-GRU);
``output_weight`` (n_items, H) and ``output_bias`` (n_items,)
    the shared output layer: ``logits = h @ output_weight.T + output_bias``.

GRU columns are ``[update z | reset r | candidate]``, each ``H`` wide::

    z = sigmoid(h @ R[:, :H] + e[:H])
    r = sigmoid(h @ R[:, H:2H] + e[H:2H])
    c = tanh((r * h) @ R[:, 2H:] + e[2H:])     (or a sigmoid, see ``candidate``)
    h' = (1 - z) * h + z * c

and the tanh cell is ``h' = tanh(h @ R + e)``, where ``R`` is the user's
recurrent matrix and ``e`` the input item's embedding.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._batching import pad

#: Elements of gathered per-user recurrent matrices held at once by forward runs
#: (a few MiB: larger batches of users spend their steps waiting on memory).
_WEIGHT_ELEMENTS = 2 ** 20
#: Time steps whose states a forward run stacks at once.
_WINDOW = 64
_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}


class CollaborativeRNN(nn.Module):
    """Parameters and batched step of a collaborative GRU or tanh network.

    Parameters
    ----------
    n_users, n_items : int
        Sizes of the vocabularies.
    hidden_size : int
        ``H``, the size of the hidden state.
    cell : {"gru", "tanh"}
        The recurrent cell.
    shared : bool
        One set of recurrent matrices for everybody instead of one per user.
    candidate : {"tanh", "sigmoid"}, default="tanh"
        Activation of the GRU's candidate state (the paper's equations use
        tanh, the authors' code a sigmoid).
    dtype : torch.dtype, default=torch.float32
        Type of the parameters.

    Notes
    -----
    The parameters are left uninitialized; call :meth:`reset_parameters`.
    """

    def __init__(self, n_users, n_items, hidden_size, cell="gru", shared=False,
                 candidate="tanh", dtype=torch.float32):
        super().__init__()
        if cell not in ("gru", "tanh"):
            raise ValueError(f"cell must be 'gru' or 'tanh'; got {cell!r}.")
        if candidate not in _ACTIVATIONS:
            raise ValueError(f"candidate must be 'tanh' or 'sigmoid'; got "
                             f"{candidate!r}.")
        self.cell = cell
        self.candidate = candidate
        self.shared = bool(shared)
        self.hidden_size = int(hidden_size)
        width = self.n_blocks * self.hidden_size
        n_sets = 1 if self.shared else n_users
        self.item_input = nn.Parameter(torch.empty(n_items, width, dtype=dtype))
        self.recurrent = nn.Parameter(
            torch.empty(n_sets, self.hidden_size, width, dtype=dtype))
        self.output_weight = nn.Parameter(
            torch.empty(n_items, self.hidden_size, dtype=dtype))
        self.output_bias = nn.Parameter(torch.empty(n_items, dtype=dtype))

    @property
    def n_blocks(self):
        """``k``: 3 blocks of columns for the GRU, 1 for the tanh cell."""
        return 3 if self.cell == "gru" else 1

    @property
    def config(self):
        """Constructor arguments that rebuild the same architecture."""
        return {"n_users": self.recurrent.shape[0], "n_items": self.item_input.shape[0],
                "hidden_size": self.hidden_size, "cell": self.cell,
                "shared": self.shared, "candidate": self.candidate}

    def reset_parameters(self, generator=None):
        """Weights from N(0, 1/sqrt(H)) (standard deviation), zero output bias.

        The numbers are drawn on the CPU with ``generator`` and then copied to
        the parameters' device, so that a seed gives the same start anywhere.
        """
        std = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for weight in (self.item_input, self.recurrent, self.output_weight):
                draw = torch.randn(weight.shape, generator=generator,
                                   dtype=weight.dtype)
                weight.copy_(draw * std)
            self.output_bias.zero_()
        return self

    # ------------------------------------------------------------ the step
    def recurrent_for(self, users, dtype=None):
        """The recurrent matrices of a batch of users, ready for :meth:`step`.

        Parameters
        ----------
        users : LongTensor of shape (B,)
            User codes; ``-1`` (an unknown user) gets the mean of the per-user
            matrices. Ignored with shared weights.
        dtype : torch.dtype, optional
            Cast the matrices to this type.

        Returns
        -------
        tuple of Tensor
            See :meth:`split_recurrent`.
        """
        if self.shared:
            weights = self.recurrent[0]
            return self.split_recurrent(weights if dtype is None else weights.to(dtype))
        weights = self.recurrent.index_select(0, users.clamp(min=0))
        if dtype is not None:
            weights = weights.to(dtype)
        unknown = users < 0
        if bool(unknown.any()):
            mean = self.recurrent.mean(dim=0, dtype=weights.dtype)
            weights = torch.where(unknown[:, None, None], mean, weights)
        return self.split_recurrent(weights)

    def split_recurrent(self, weights):
        """Split ``(B, H, k*H)`` (or shared ``(H, k*H)``) recurrent matrices.

        Returns one contiguous tensor per matrix product of :meth:`step`: the
        gates' ``(.., H, 2H)`` and the candidate's ``(.., H, H)`` matrices for
        the GRU, the one matrix for the tanh cell.
        """
        if self.cell == "tanh":
            return (weights.contiguous(),)
        split = 2 * self.hidden_size
        return (weights[..., :split].contiguous(), weights[..., split:].contiguous())

    def input_terms(self, items, dtype=None):
        """Input terms of a ``(B, T)`` item matrix, split like the weights.

        Returns a tuple of ``(B, T, 1, m)`` tensors (``m`` = 2H then H for the
        GRU, H for the tanh cell); ``[:, t]`` of each is what :meth:`step`
        takes at step ``t``.
        """
        # F.embedding, not item_input[items]: the backward of advanced indexing
        # made 2-thread CPU trainings differ from run to run (same seed)
        terms = F.embedding(items, self.item_input)
        if dtype is not None:
            terms = terms.to(dtype)
        terms = terms.unsqueeze(2)
        if self.cell == "tanh":
            return (terms,)
        split = 2 * self.hidden_size
        return (terms[..., :split].contiguous(), terms[..., split:].contiguous())

    def step(self, hidden, inputs, weights):
        """One step of the cell for a batch.

        Parameters
        ----------
        hidden : Tensor of shape (B, 1, H)
            States before the step (one row each, so that per-user matrices
            apply with a single batched product).
        inputs : tuple of Tensor of shape (B, 1, m)
            The step's input terms, from :meth:`input_terms`.
        weights : tuple of Tensor
            From :meth:`recurrent_for` or :meth:`split_recurrent`.

        Returns
        -------
        Tensor of shape (B, 1, H)
        """
        if self.cell == "tanh":
            return torch.tanh(_affine(inputs[0], hidden, weights[0]))
        size = self.hidden_size
        gates = torch.sigmoid(_affine(inputs[0], hidden, weights[0]))
        update, reset = gates[..., :size], gates[..., size:]
        candidate = _ACTIVATIONS[self.candidate](
            _affine(inputs[1], reset * hidden, weights[1]))
        return torch.lerp(hidden, candidate, update)

    def logits(self, hidden, dtype=None):
        """Next-item scores ``hidden @ output_weight.T + output_bias``.

        ``hidden`` has shape ``(n, H)``.
        """
        weight, bias = self.output_weight, self.output_bias
        if dtype is not None:
            weight, bias = weight.to(dtype), bias.to(dtype)
        return torch.addmm(bias, hidden, weight.T)


def _affine(inputs, hidden, weight):
    """``inputs + hidden @ weight`` for ``(B, 1, .)`` rows.

    ``weight`` is a batch of per-row matrices ``(B, H, m)`` or one shared
    ``(H, m)`` matrix.
    """
    if weight.dim() == 3:
        return torch.baddbmm(inputs, hidden, weight)
    return torch.addmm(inputs.flatten(0, 1), hidden.flatten(0, 1),
                       weight).unsqueeze(1)


# ---------------------------------------------------------------- forward runs
@torch.no_grad()
def forward_states(module, sequences, start_states, prefixes, dtype=torch.float64):
    """Hidden states after the requested prefixes of each group's items.

    Group ``g`` starts from ``start_states[g]`` with the recurrent matrices of
    user ``sequences.user_codes[g]`` (the mean matrices for ``-1``) and reads
    its items one step at a time. All groups run together, longest first: the
    loop is over time steps only, and groups drop out of the batch once their
    last requested prefix is reached.

    Parameters
    ----------
    module : CollaborativeRNN
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
        The states, in the order of ``prefixes``, on the module's device.
    """
    device = module.item_input.device
    prefixes = np.asarray(prefixes, dtype=np.int64)
    out = torch.empty((len(prefixes), module.hidden_size), dtype=dtype, device=device)
    if len(prefixes) == 0:
        return out
    groups = np.searchsorted(sequences.prefix_start, prefixes, side="right") - 1
    steps = prefixes - sequences.prefix_start[groups]
    # each group runs up to its last requested prefix only
    run_length = np.full(sequences.n_groups, -1, dtype=np.int64)
    np.maximum.at(run_length, groups, steps)
    needed = np.flatnonzero(run_length >= 0)
    needed = needed[np.argsort(-run_length[needed], kind="stable")]
    width = module.n_blocks * module.hidden_size
    max_rows = (len(needed) if module.shared
                else max(1, _WEIGHT_ELEMENTS // (module.hidden_size * width)))
    row_of_group = np.empty(sequences.n_groups, dtype=np.int64)
    for begin in range(0, len(needed), max_rows):
        batch = needed[begin:begin + max_rows]
        row_of_group[batch] = np.arange(len(batch))
        mine = np.flatnonzero(np.isin(groups, batch))
        _run_batch(module, sequences, batch, run_length[batch],
                   start_states[torch.as_tensor(batch, device=device)].to(dtype)
                   .unsqueeze(1),
                   row_of_group[groups[mine]], steps[mine], mine, out, dtype)
    return out


def _run_batch(module, sequences, batch, run_length, hidden, rows, steps, targets,
               out, dtype):
    """Run one batch of groups (sorted by decreasing run length), filling ``out``."""
    device = hidden.device
    items, _ = pad(sequences, batch, run_length)
    items = torch.as_tensor(items, device=device)
    users = torch.as_tensor(sequences.user_codes[batch], device=device)
    weights = module.recurrent_for(users, dtype=dtype)
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
        inputs = list(zip(*(terms.unbind(1) for terms in module.input_terms(
            items[:active, start:stop], dtype=dtype))))
        saved = []
        for t in range(stop - start):
            saved.append(hidden)
            if start + t < n_steps:
                hidden = module.step(hidden, inputs[t], weights)
        lo, hi = np.searchsorted(steps, [start, stop])
        if hi > lo:
            block = torch.cat(saved, dim=1)
            pick_rows = torch.as_tensor(rows[lo:hi], device=device)
            pick_steps = torch.as_tensor(steps[lo:hi] - start, device=device)
            out[torch.as_tensor(targets[lo:hi], device=device)] = block[
                pick_rows, pick_steps]


@torch.no_grad()
def log_proba_from_states(module, states, targets=None, dtype=torch.float64,
                          max_cells=2 ** 22):
    """Next-item log-probabilities from hidden states, a few rows at a time.

    Parameters
    ----------
    module : CollaborativeRNN
    states : Tensor of shape (n, H)
    targets : ndarray of int64 of shape (n,), optional
        Return only these items' log-probabilities.
    dtype : torch.dtype, default=torch.float64
    max_cells : int
        Most logits (rows x items) computed at once.

    Returns
    -------
    ndarray of float64
        Shape ``(n,)`` with ``targets``, else ``(n, n_items)``.
    """
    n_items = module.output_weight.shape[0]
    rows_per_chunk = max(1, max_cells // n_items)
    n = states.shape[0]
    if targets is not None:
        result = np.empty(n, dtype=np.float64)
        targets = torch.as_tensor(np.asarray(targets, dtype=np.int64),
                                  device=states.device)
    else:
        result = np.empty((n, n_items), dtype=np.float64)
    for begin in range(0, n, rows_per_chunk):
        end = min(begin + rows_per_chunk, n)
        log_proba = torch.log_softmax(module.logits(states[begin:end].to(dtype),
                                                    dtype=dtype), dim=1)
        if targets is not None:
            log_proba = log_proba.gather(1, targets[begin:end, None])[:, 0]
        result[begin:end] = log_proba.double().cpu().numpy()
    return result
