"""The recurrent cells, each step written once: its forward rule and its derivative.

Row-vector convention: a batch of states ``h`` has shape ``(B, 1, H)`` (one row
per user, so that per-user matrices apply with one batched product) and a
recurrent matrix acts from the right (``h @ R``), either one per row
``(B, H, k*H)`` or one shared ``(H, k*H)``. The input term ``e`` of an item
is its row of the item embeddings, ``k*H`` wide; ``k = 3`` for the GRU and
``k = 1`` for the tanh cell.

The GRU's columns are ``[update z | reset r | candidate]``, each ``H`` wide::

    z = sigmoid(h @ R[:, :H] + e[:H])
    r = sigmoid(h @ R[:, H:2H] + e[H:2H])
    c = tanh((r * h) @ R[:, 2H:] + e[2H:])     (or a sigmoid, see ``candidate``)
    h' = (1 - z) * h + z * c

and the tanh cell is ``h' = tanh(h @ R + e)``.

A cell is used by three loops (:mod:`.recurrence`): the inference runs and
the autograd reference call :meth:`~GRUCell.step` alone; the training
recurrence calls :meth:`~GRUCell.step` forward, then the hand-written
back-propagation through time: :meth:`~GRUCell.backward_factors` and
:meth:`~GRUCell.gradient_views` once per chunk (everything that does not
depend on the incoming gradient), and :meth:`~GRUCell.backward_step` once
per step. The step's pre-activation
gradients are also the gradients of its input terms (they enter additively),
and the recurrent matrices' gradients are the products of
:meth:`~GRUCell.recurrent_inputs` with them, formed once per chunk.
``tests/test_rnn_cells.py`` checks every cell's derivative against autograd
through its :meth:`~GRUCell.step`.
"""

import torch


def affine(inputs, hidden, weight):
    """``inputs + hidden @ weight`` for ``(B, 1, .)`` rows.

    ``weight`` is a batch of per-row matrices ``(B, H, m)`` or one shared
    ``(H, m)`` matrix.
    """
    if weight.dim() == 3:
        return torch.baddbmm(inputs, hidden, weight)
    return torch.addmm(inputs.flatten(0, 1), hidden.flatten(0, 1),
                       weight).unsqueeze(1)


def product(hidden, weight):
    """``hidden @ weight`` for ``(B, 1, .)`` rows, as :func:`affine` without inputs.

    A batched product called directly: ``@`` on a batch of rows costs about
    twice as much per call (its dispatch, not its flops, at these sizes).
    """
    if weight.dim() == 3:
        return torch.bmm(hidden, weight)
    return torch.mm(hidden.flatten(0, 1), weight).unsqueeze(1)


class GRUCell:
    """The gated recurrent unit of the collaborative RNN.

    Parameters
    ----------
    candidate : {"tanh", "sigmoid"}
        Activation of the candidate state (the paper's equations print tanh,
        the authors' code uses a sigmoid).
    """

    n_blocks = 3

    def __init__(self, candidate="tanh"):
        if candidate not in ("tanh", "sigmoid"):
            raise ValueError(f"candidate must be 'tanh' or 'sigmoid'; got "
                             f"{candidate!r}.")
        self.candidate = candidate

    @staticmethod
    def split(tensor):
        """Views of the gates' ``2H`` and the candidate's ``H`` last columns."""
        size = tensor.shape[-1] // 3
        return tensor[..., :2 * size], tensor[..., 2 * size:]

    def step(self, hidden, inputs, weights):
        """One step: the new state, and what the derivative needs of the step.

        Parameters
        ----------
        hidden : Tensor of shape (B, 1, H)
        inputs : tuple of Tensor of shape (B, 1, m)
            The step's input terms, split by :meth:`split`.
        weights : tuple of Tensor
            The recurrent matrices, split by :meth:`split`.

        Returns
        -------
        hidden : Tensor of shape (B, 1, H)
        saved : tuple
            The gates ``[z | r]`` and the candidate ``c``.
        """
        size = hidden.shape[-1]
        gates = torch.sigmoid(affine(inputs[0], hidden, weights[0]))
        update, reset = gates[..., :size], gates[..., size:]
        candidate = affine(inputs[1], reset * hidden, weights[1])
        candidate = (torch.sigmoid(candidate) if self.candidate == "sigmoid"
                     else torch.tanh(candidate))
        return torch.lerp(hidden, candidate, update), (gates, candidate)

    def backward_factors(self, before, saved):
        """Per-step factors of the derivative, for a whole chunk at once.

        ``before`` is ``(B, T, H)``, the states before each step, and
        ``saved`` the steps' ``saved`` stacked along dimension 1.
        """
        gates, candidates = saved
        size = before.shape[-1]
        update, reset = gates[..., :size], gates[..., size:]
        gate_derivative = gates * (1 - gates)
        if self.candidate == "sigmoid":
            candidate_derivative = candidates * (1 - candidates)
        else:
            candidate_derivative = 1 - candidates * candidates
        return ((candidates - before) * gate_derivative[..., :size],
                before * gate_derivative[..., size:],
                candidate_derivative * update, 1 - update, reset.contiguous())

    @staticmethod
    def gradient_views(grad_pre):
        """Per step, the views of ``(B, T, 3H)`` pre-activation gradients
        that :meth:`backward_step` writes: ``z``'s, ``r``'s, ``c``'s and
        ``[z | r]``'s (made once per chunk: slicing costs a call)."""
        size = grad_pre.shape[-1] // 3
        parts = (grad_pre[..., :size], grad_pre[..., size:2 * size],
                 grad_pre[..., 2 * size:], grad_pre[..., :2 * size])
        return list(zip(*(part.split(1, dim=1) for part in parts)))

    @staticmethod
    def backward_step(grad, grad_state, factors, weights_t, out):
        """Back-propagate one step.

        Per step: ``dc = g z c'``; ``dz = g (c - h) z(1 - z)``;
        ``dr = (dc @ R_c^T) h r(1 - r)``;
        ``dh = g (1 - z) + (dc @ R_c^T) r + [dz | dr] @ R_gates^T``.

        Parameters
        ----------
        grad : Tensor of shape (B, 1, H)
            Gradient of the state after the step.
        grad_state : Tensor of shape (B, 1, H)
            Direct gradient of the state before the step (its own loss).
        factors : tuple
            This step's slices of :meth:`backward_factors`.
        weights_t : tuple
            The split recurrent matrices, transposed.
        out : tuple
            This step's :meth:`gradient_views`, which receive the
            pre-activation gradients ``[dz | dr | dc]``.

        Returns
        -------
        Tensor of shape (B, 1, H)
            Gradient of the state before the step.
        """
        update_factor, reset_factor, candidate_factor, keep_factor, reset = factors
        grad_update, grad_reset, grad_candidate, grad_gates = out
        torch.mul(grad, candidate_factor, out=grad_candidate)
        grad_reset_hidden = product(grad_candidate, weights_t[1])
        torch.mul(grad, update_factor, out=grad_update)
        torch.mul(grad_reset_hidden, reset_factor, out=grad_reset)
        grad = torch.addcmul(grad_state, grad, keep_factor)
        grad.addcmul_(grad_reset_hidden, reset)
        return affine(grad, grad_gates, weights_t[0])

    @staticmethod
    def recurrent_inputs(before, saved):
        """What each split recurrent matrix multiplies: ``h`` and ``r * h``."""
        size = before.shape[-1]
        return before, saved[0][..., size:] * before


class TanhCell:
    """The plain recurrent cell ``h' = tanh(h @ R + e)`` (the paper's C-tanh)."""

    n_blocks = 1

    @staticmethod
    def split(tensor):
        """The one block of columns, as a one-tuple."""
        return (tensor,)

    @staticmethod
    def step(hidden, inputs, weights):
        """One step: the new state, saved for the derivative too.

        Same arguments and returns as :meth:`GRUCell.step`.
        """
        hidden = torch.tanh(affine(inputs[0], hidden, weights[0]))
        return hidden, (hidden,)

    @staticmethod
    def backward_factors(before, saved):
        """``1 - h'^2`` of every step of a chunk."""
        return (1 - saved[0] * saved[0],)

    @staticmethod
    def gradient_views(grad_pre):
        """Per step, the one view of the pre-activation gradients."""
        return [(view,) for view in grad_pre.split(1, dim=1)]

    @staticmethod
    def backward_step(grad, grad_state, factors, weights_t, out):
        """``dpre = g (1 - h'^2)``; ``dh = dpre @ R^T``; as :meth:`GRUCell.backward_step`."""
        pre = torch.mul(grad, factors[0], out=out[0])
        return affine(grad_state, pre, weights_t[0])

    @staticmethod
    def recurrent_inputs(before, saved):
        """The recurrent matrix multiplies ``h``."""
        return (before,)


def make_cell(cell, candidate="tanh"):
    """The cell named ``cell`` ("gru" or "tanh")."""
    if cell == "gru":
        return GRUCell(candidate)
    if cell == "tanh":
        return TanhCell()
    raise ValueError(f"cell must be 'gru' or 'tanh'; got {cell!r}.")
