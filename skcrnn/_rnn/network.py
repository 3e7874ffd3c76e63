"""The collaborative recurrent network's parameters and its collaborative weights.

With ``k = 3`` for the GRU and ``k = 1`` for the tanh cell (:mod:`.cells`),
the parameters are

``item_input`` (n_items, k*H)
    the input terms ``W_{.i} x_t`` of one-hot items: row ``i`` is item ``i``'s
    input embedding, shared by all users;
``recurrent`` (n_users, H, k*H), or (1, H, k*H) when shared
    the recurrent matrices: one set per user (C-GRU, C-tanh, the
    collaborative parameterisation) or one set for everybody (P-GRU);
    with ``recurrent_kind="deviation"``, ``"low_rank"`` or ``"basis"`` the
    shared set, to which each user adds a dense, low-rank or basis deviation
    (``deviation``; ``low_rank_left`` and ``low_rank_right``; or
    ``basis_coefficients`` times the shared ``basis_directions``; see
    :mod:`.weights`);
``output_weight`` (n_items, H) and ``output_bias`` (n_items,)
    the shared output layer: ``logits = h @ output_weight.T + output_bias``;
``gate_weight`` (H + 1,) and ``gate_bias`` (1,), with ``copy_history``
    the copy gate, ``g = sigmoid(gate_weight . [h, log Z] + gate_bias)``,
    that mixes the softmax with the user's past items (``Z``: their total
    weight; the gate and what it reads are :mod:`.copy`'s).

The module prints its settings (``extra_repr``): its :attr:`~CollaborativeRNN.config`.
"""

import math

import torch
from torch import nn

from .cells import make_cell
from .weights import make_weights


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
    recurrent_kind : {"per_user", "shared", "deviation", "low_rank", "basis"}, optional
        How the recurrent matrices are parameterised (:mod:`.weights`); by
        default ``"shared"`` if ``shared`` else ``"per_user"``.
    rank : int, optional
        The rank of ``"low_rank"`` deviations, or the number of shared
        directions of ``"basis"`` (only with those).

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
                 candidate="tanh", copy_history=False, dtype=torch.float32,
                 recurrent_kind=None, rank=None):
        super().__init__()
        self.unit = make_cell(cell, candidate)
        self.cell = cell
        self.candidate = candidate
        if recurrent_kind is None:
            recurrent_kind = "shared" if shared else "per_user"
        elif shared and recurrent_kind != "shared":
            raise ValueError(f"shared={shared!r} contradicts "
                             f"recurrent_kind={recurrent_kind!r}.")
        self.hidden_size = int(hidden_size)
        self.weights = make_weights(recurrent_kind, self.unit.n_blocks,
                                    self.hidden_size, rank)
        self.recurrent_kind = recurrent_kind
        self.rank = self.weights.rank
        #: one set of matrices for everybody, no per-user part (P-GRU)
        self.shared = recurrent_kind == "shared"
        width = self.unit.n_blocks * self.hidden_size
        n_sets = self.weights.recurrent_sets(n_users)
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
        for name, shape in self.weights.extra_shapes(n_users).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=dtype)))
        self.row_indexed = {"item_input": "item", "output_weight": "item",
                            "output_bias": "item", **self.weights.row_indexed()}

    @property
    def config(self):
        """Constructor arguments that rebuild the same architecture."""
        config = {"n_users": self.weights.n_users(self),
                  "n_items": self.item_input.shape[0],
                  "hidden_size": self.hidden_size, "cell": self.cell,
                  "shared": self.shared, "candidate": self.candidate,
                  "copy_history": self.copy_history}
        if self.recurrent_kind not in ("per_user", "shared"):
            # only where needed: files of the paper's networks keep their keys
            config.update(recurrent_kind=self.recurrent_kind, rank=self.rank)
        return config

    def extra_repr(self):
        """The settings, as ``torch.nn`` modules print them: :attr:`config`."""
        return ", ".join(f"{name}={value!r}" for name, value in self.config.items())

    @property
    def n_users(self):
        """Users with their own recurrent parameters (1 with shared weights)."""
        return self.weights.n_users(self)

    def reset_parameters(self, generator=None):
        """Weights from N(0, 1/sqrt(H)) (standard deviation), zero output bias.

        The copy gate starts at zero (an even mix wherever there is a past),
        without drawing numbers: the other weights are those of the same
        seed without it. With a deviation from shared matrices, every user
        starts at the shared matrices, drawn as those of ``"shared"`` with
        the same seed (see :meth:`.weights.LowRank.reset`).

        The numbers are drawn on the CPU with ``generator`` and then copied to
        the parameters' device, so that a seed gives the same start anywhere.
        """
        std = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for weight in (self.item_input, self.recurrent, self.output_weight):
                draw = torch.randn(weight.shape, generator=generator,
                                   dtype=weight.dtype)
                weight.copy_(draw.mul_(std))  # in place: one temporary, not two
            self.output_bias.zero_()
            self.weights.reset(self, generator, std)
            if self.copy_history:
                self.gate_weight.zero_()
                self.gate_bias.zero_()
        return self

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
        return self.weights.for_users(self, users, dtype)
