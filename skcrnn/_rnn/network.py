"""The collaborative recurrent network's parameters and its collaborative weights.

With ``k = 3`` for the GRU and ``k = 1`` for the tanh cell (:mod:`.cells`),
the parameters are

``item_input`` (n_items, k*H)
    the input terms ``W_{.i} x_t`` of one-hot items: row ``i`` is item ``i``'s
    input embedding, shared by all users;
``recurrent`` (n_users, H, k*H), or (1, H, k*H) when shared
    the recurrent matrices: one set per user (C-GRU, C-tanh, the
    collaborative parameterisation) or one set for everybody (P-GRU);
``output_weight`` (n_items, H) and ``output_bias`` (n_items,)
    the shared output layer: ``logits = h @ output_weight.T + output_bias``;
``gate_weight`` (H + 1,) and ``gate_bias`` (1,), with ``copy_history``
    the copy gate, ``g = sigmoid(gate_weight . [h, log Z] + gate_bias)``,
    that mixes the softmax with the user's past items (``Z``: their total
    weight, see :mod:`skcrnn._decayed_counts`).
"""

import math

import torch
from torch import nn

from .cells import make_cell


class CollaborativeRNN(nn.Module):
    """Parameters of a collaborative GRU or tanh network.

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
        Activation of the GRU's candidate state.
    copy_history : bool, default=False
        Add the copy gate's parameters.
    dtype : torch.dtype, default=torch.float32
        Type of the parameters.

    Attributes
    ----------
    unit : GRUCell or TanhCell
        The cell's step and its derivative.
    row_indexed : dict
        Parameters indexed by user or by item along their first dimension
        (see :mod:`skcrnn._torch.optim`).

    Notes
    -----
    The parameters are left uninitialized; call :meth:`reset_parameters`.
    """

    def __init__(self, n_users, n_items, hidden_size, cell="gru", shared=False,
                 candidate="tanh", copy_history=False, dtype=torch.float32):
        super().__init__()
        self.unit = make_cell(cell, candidate)
        self.cell = cell
        self.candidate = candidate
        self.shared = bool(shared)
        self.hidden_size = int(hidden_size)
        width = self.unit.n_blocks * self.hidden_size
        n_sets = 1 if self.shared else n_users
        self.item_input = nn.Parameter(torch.empty(n_items, width, dtype=dtype))
        self.recurrent = nn.Parameter(
            torch.empty(n_sets, self.hidden_size, width, dtype=dtype))
        self.output_weight = nn.Parameter(
            torch.empty(n_items, self.hidden_size, dtype=dtype))
        self.output_bias = nn.Parameter(torch.empty(n_items, dtype=dtype))
        self.copy_history = bool(copy_history)
        if self.copy_history:
            self.gate_weight = nn.Parameter(
                torch.empty(self.hidden_size + 1, dtype=dtype))
            self.gate_bias = nn.Parameter(torch.empty(1, dtype=dtype))
        self.row_indexed = {"item_input": "item", "output_weight": "item",
                            "output_bias": "item"}
        if not self.shared:
            self.row_indexed["recurrent"] = "user"

    @property
    def config(self):
        """Constructor arguments that rebuild the same architecture."""
        return {"n_users": self.recurrent.shape[0], "n_items": self.item_input.shape[0],
                "hidden_size": self.hidden_size, "cell": self.cell,
                "shared": self.shared, "candidate": self.candidate,
                "copy_history": self.copy_history}

    def reset_parameters(self, generator=None):
        """Weights from N(0, 1/sqrt(H)) (standard deviation), zero output bias.

        The copy gate starts at zero (an even mix wherever there is a past),
        without drawing numbers: the other weights are those of the same
        seed without it.

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
            if self.copy_history:
                self.gate_weight.zero_()
                self.gate_bias.zero_()
        return self

    def gate_logits(self, states, log_mass):
        """The copy gate's logits, ``-inf`` (no copy) where there is no past.

        Parameters
        ----------
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
        weight = self.gate_weight.to(states.dtype)
        logits = (states @ weight[:-1]
                  + torch.where(has_past, log_mass, 0.0).to(states.dtype) * weight[-1]
                  + self.gate_bias.to(states.dtype))
        return torch.where(has_past, logits, float("-inf"))

    def recurrent_for(self, users, dtype=None):
        """The recurrent matrices of a batch of users, for the cell's step.

        Parameters
        ----------
        users : LongTensor of shape (B,)
            User codes; ``-1`` (an unknown user) and codes past the fitted
            users (users added by ``update``) get the mean of the per-user
            matrices. Ignored with shared weights.
        dtype : torch.dtype, optional
            Cast the matrices to this type.

        Returns
        -------
        Tensor of shape (B, H, k*H), or (H, k*H) with shared weights
        """
        if self.shared:
            weights = self.recurrent[0]
            return weights if dtype is None else weights.to(dtype)
        unknown = (users < 0) | (users >= self.recurrent.shape[0])
        weights = self.recurrent.index_select(0, torch.where(unknown, 0, users))
        if dtype is not None:
            weights = weights.to(dtype)
        if bool(unknown.any()):
            mean = self.recurrent.mean(dim=0, dtype=weights.dtype)
            weights = torch.where(unknown[:, None, None], mean, weights)
        return weights
