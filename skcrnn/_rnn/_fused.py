"""Hand-written forward and backward passes for training, without autograd graphs.

Two :class:`torch.autograd.Function` s replace the per-step autograd graph of a
chunk and the full ``(events x items)`` cross-entropy of the output layer:

:func:`chunk_states`
    runs the recurrence over a chunk and keeps only what its backward pass
    needs (gates, candidates, states). The backward pass is the textbook
    back-propagation through time, one small batched product per step; the
    gradients of the recurrent matrices and of the input terms are formed
    once per chunk, as one batched product over all its steps, instead of
    one outer product per step.
:func:`summed_cross_entropy`
    computes ``sum_n -log softmax(h_n W^T + b)[y_n]`` a cache-sized block of
    rows at a time and forms each block's gradient while its probabilities
    are still in cache, as ``(P - onehot(y))`` and two matrix products: no
    ``(events x items)`` tensor is ever held, there is no separate
    log-softmax backward, nor a zero-filled gradient of that size.

Both compute exactly what the autograd path of :mod:`._training` computes
(they are tested against it and against a naive per-user loop); they are
faster because a chunk costs no autograd graph of a few dozen nodes per
step, and because the output layer reads each probability from cache
instead of memory. The step loops themselves run compiled
(:mod:`._native`, a few microseconds a step) where the C++ extension
builds, else as a handful of torch kernels a step in Python; on the CPU,
the output layer's single-precision products go through oneDNN
(:func:`linear`).

Shapes follow :mod:`._cells`: rows are users, states are ``(B, H)`` row
vectors, recurrent matrices act from the right, ``(B, H, k*H)`` per user or
``(H, k*H)`` shared, GRU columns are ``[update | reset | candidate]``.
"""

import threading
from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable

from . import _native
from ._cells import _affine

#: About how many logits a block of rows holds: on a CPU, about 8 MiB, so
#: that the softmax and the gradient products read it from the last-level
#: cache (2 to 8 MiB were within 10 % of each other on an AMD EPYC; larger
#: blocks give oneDNN's products more rows); on a GPU, a whole chunk at once
#: (fewer, larger kernels), up to 256 MiB.
BLOCK_CELLS = {"cpu": 2 ** 21, "cuda": 2 ** 26}


# ------------------------------------------------------------- recurrence
class _OneCpuThread:
    """Run the enclosed CPU kernels on one thread, then restore the count.

    A step's kernels are tiny (20 x 32 x 96): a second thread costs more to
    wake than it saves (a batched product took 20 µs on two threads, 11 µs on
    one). The output layer's large kernels, outside, keep every thread. Fits
    running in several Python threads share torch's global setting, so the
    first one in saves it and the last one out restores it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = None

    @contextmanager
    def __call__(self, tensor):
        if tensor.device.type != "cpu":
            yield
            return
        with self._lock:
            if self._inside == 0:
                self._saved = torch.get_num_threads()
                if self._saved != 1:
                    torch.set_num_threads(1)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._saved != 1:
                    torch.set_num_threads(self._saved)


_one_cpu_thread = _OneCpuThread()


def chunk_states(start, inputs, weights, cell, candidate, n_steps):
    """States of a batch over one chunk, differentiable by hand-written BPTT.

    Parameters
    ----------
    start : Tensor of shape (B, H)
        States before the chunk's first item.
    inputs : Tensor of shape (B, T, k*H)
        Input terms of the chunk's items (rows of ``item_input``).
    weights : Tensor of shape (B, H, k*H) or (H, k*H)
        Per-row recurrent matrices, or one shared set.
    cell : {"gru", "tanh"}
    candidate : {"tanh", "sigmoid"}
        Activation of the GRU's candidate state.
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
    if inputs.shape[1] < 1 or not inputs.shape[1] - 1 <= n_steps <= inputs.shape[1]:
        raise ValueError(f"n_steps must be T or T - 1, with T >= 1 (T = "
                         f"{inputs.shape[1]}); got {n_steps}.")
    return _ChunkRecurrence.apply(start, inputs, weights, cell, candidate, n_steps)


def _outer_sum(left, right, shared):
    """``sum_t left[:, t]^T right[:, t]`` per row ``(B, a, b)``, or summed over rows."""
    if shared:
        return left.flatten(0, 1).T @ right.flatten(0, 1)
    return torch.bmm(left.transpose(1, 2), right)


class _ChunkRecurrence(torch.autograd.Function):
    """Forward: the steps, keeping gates and candidates. Backward: BPTT.

    Every factor of the backward recursion that does not depend on the
    incoming gradient (activation derivatives, ``c - h``, ``1 - z``) is
    computed once for the whole chunk after the forward loop, so that a
    backward step is a few fused multiply-adds and two small products.
    """

    @staticmethod
    def forward(ctx, start, inputs, weights, cell, candidate, n_steps):
        with _one_cpu_thread(start):
            return _ChunkRecurrence._forward(ctx, start, inputs, weights, cell,
                                             candidate, n_steps)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states, grad_final):
        with _one_cpu_thread(ctx.saved_tensors[0]):
            return _ChunkRecurrence._backward(ctx, grad_states, grad_final)

    @staticmethod
    def _forward(ctx, start, inputs, weights, cell, candidate, n_steps):
        size = start.shape[1]
        native = _native_loops(start)
        if cell == "tanh":
            if native is not None:
                stacked, hidden, after = native.tanh_forward(
                    start.contiguous(), inputs.contiguous(), weights.contiguous(),
                    n_steps)
            else:
                stacked, hidden, after = _tanh_forward(start, inputs, weights, n_steps)
        elif native is not None:
            stacked, hidden, gates, candidates = native.gru_forward(
                start.contiguous(), inputs.contiguous(), weights.contiguous(),
                candidate == "sigmoid", n_steps)
        else:
            stacked, hidden, gates, candidates = _gru_forward(
                start, inputs, *_split_gru(weights, size), candidate, n_steps)
        n_columns = inputs.shape[1]
        ctx.config = (cell, n_steps, n_columns, inputs.shape[2], weights.dim() == 2)
        if n_steps == 0:
            ctx.save_for_backward(weights)
        elif cell == "tanh":
            ctx.save_for_backward(weights, stacked[:, :n_steps], 1 - after * after)
        else:
            ctx.save_for_backward(weights, stacked[:, :n_steps], gates, candidates)
            ctx.candidate = candidate
        return stacked, hidden

    @staticmethod
    def _backward(ctx, grad_states, grad_final):
        cell, n_steps, n_columns, width, shared = ctx.config
        weights, *saved = ctx.saved_tensors
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
                    torch.zeros_like(weights), None, None, None)
        native = _native_loops(grad)
        if native is not None:
            # the loops write the start's gradient over the carry's (a copy),
            # and read the recurrent matrices transposed
            carry = grad.squeeze(1).clone(memory_format=torch.contiguous_format)
            weights_t = weights.transpose(-1, -2).contiguous()
            grad_states = grad_states.contiguous()
        if cell == "tanh":
            before, derivative = saved
            if native is not None:
                grad, grad_pre = native.tanh_backward(carry, grad_states, weights_t,
                                                      derivative)
            else:
                grad, grad_pre = _tanh_backward(grad, grad_states, weights, derivative)
            grad_weights = _outer_sum(before, grad_pre, shared)
            return (grad, _pad_steps(grad_pre, n_columns), grad_weights,
                    None, None, None)

        before, gates, candidates = saved
        update, reset = gates.split(size, dim=2)
        gate_derivative = gates * (1 - gates)
        # per step: dz_pre = g (c - h) z(1 - z); dr_pre = (g_rh) h r(1 - r);
        # dc_pre = g z c'(.); dh = g (1 - z) + g_rh r + dgates_pre @ R_gates^T
        update_factor = (candidates - before) * gate_derivative[..., :size]
        reset_factor = before * gate_derivative[..., size:]
        if ctx.candidate == "sigmoid":
            candidate_factor = candidates * (1 - candidates)
        else:
            candidate_factor = 1 - candidates * candidates
        candidate_factor = candidate_factor * update
        factors = (update_factor, reset_factor, candidate_factor, 1 - update,
                   reset.contiguous())
        if native is not None:
            grad, grad_gates, grad_candidates = native.gru_backward(
                carry, grad_states, weights_t, *factors)
        else:
            grad, grad_gates, grad_candidates = _gru_backward(
                grad, grad_states, *_split_gru(weights, size), *factors)
        grad_weights = torch.cat([_outer_sum(before, grad_gates, shared),
                                  _outer_sum(reset * before, grad_candidates, shared)],
                                 dim=-1)
        grad_inputs = _pad_steps(torch.cat([grad_gates, grad_candidates], dim=2),
                                 n_columns)
        return grad, grad_inputs, grad_weights, None, None, None


def _native_loops(tensor):
    """The compiled loops of :mod:`._native` for a CPU tensor, else None."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32,
                                                            torch.float64):
        return None
    return _native.load()


def _split_gru(weights, size):
    """The gates' ``(.., H, 2H)`` and the candidate's ``(.., H, H)`` matrices."""
    return weights[..., :2 * size].contiguous(), weights[..., 2 * size:].contiguous()


def _tanh_forward(start, inputs, weights, n_steps):
    """Python loop of the tanh cell: states, carry, states after each step."""
    hidden = start.unsqueeze(1)
    states = [hidden]
    # views made once per chunk: slicing inside the loop costs a call per step
    for step_inputs in inputs.split(1, dim=1)[:n_steps]:
        hidden = torch.tanh(_affine(step_inputs, hidden, weights))
        states.append(hidden)
    after = torch.cat(states[1:], dim=1) if n_steps else inputs.new_empty(
        inputs.shape[0], 0, start.shape[1])
    return torch.cat(states[:inputs.shape[1]], dim=1), hidden.squeeze(1), after


def _gru_forward(start, inputs, gate_weights, candidate_weights, candidate, n_steps):
    """Python loop of the GRU: states, carry, gates and candidates of each step."""
    size = start.shape[1]
    activation = torch.sigmoid if candidate == "sigmoid" else torch.tanh
    hidden = start.unsqueeze(1)
    states, gates, candidates = [hidden], [], []
    gate_inputs = inputs[..., :2 * size].split(1, dim=1)
    candidate_inputs = inputs[..., 2 * size:].split(1, dim=1)
    for t in range(n_steps):
        gate = torch.sigmoid(_affine(gate_inputs[t], hidden, gate_weights))
        update, reset = gate.split(size, dim=2)
        new = activation(_affine(candidate_inputs[t], reset * hidden,
                                  candidate_weights))
        hidden = torch.lerp(hidden, new, update)
        gates.append(gate)
        candidates.append(new)
        states.append(hidden)
    if not n_steps:
        gates, candidates = [inputs.new_empty(len(start), 0, 2 * size)], [
            inputs.new_empty(len(start), 0, size)]
    return (torch.cat(states[:inputs.shape[1]], dim=1), hidden.squeeze(1),
            torch.cat(gates, dim=1), torch.cat(candidates, dim=1))


def _tanh_backward(grad, grad_states, weights, derivative):
    """Python loop of the tanh cell's BPTT: the start's and pre-activations' gradients."""
    grad_after = grad_states.split(1, dim=1)
    grad_pre = torch.empty_like(derivative)
    pre_steps, derivative = grad_pre.split(1, dim=1), derivative.split(1, dim=1)
    weights_t = weights.transpose(-1, -2)
    for t in range(len(pre_steps) - 1, -1, -1):
        pre = torch.mul(grad, derivative[t], out=pre_steps[t])
        grad = _affine(grad_after[t], pre, weights_t)
    return grad.squeeze(1), grad_pre


def _gru_backward(grad, grad_states, gate_weights, candidate_weights, update_factor,
                  reset_factor, candidate_factor, keep_factor, reset):
    """Python loop of the GRU's BPTT: the start's, gates' and candidates' gradients.

    Per step: ``dc = g z c'``; ``dz = g (c - h) z(1 - z)``;
    ``dr = (dc @ R_c^T) h r(1 - r)``;
    ``dh = g (1 - z) + (dc @ R_c^T) r + [dz | dr] @ R_gates^T``.
    """
    size = grad.shape[-1]
    grad_gates = grad.new_empty(update_factor.shape[:2] + (2 * size,))
    grad_candidates = torch.empty_like(candidate_factor)
    update_factor, reset_factor, candidate_factor, keep_factor, reset = (
        factor.split(1, dim=1) for factor in (update_factor, reset_factor,
                                              candidate_factor, keep_factor, reset))
    grad_after = grad_states.split(1, dim=1)
    gate_steps = grad_gates.split(1, dim=1)
    update_steps = grad_gates[..., :size].split(1, dim=1)
    reset_grad_steps = grad_gates[..., size:].split(1, dim=1)
    candidate_steps = grad_candidates.split(1, dim=1)
    gate_weights_t = gate_weights.transpose(-1, -2)
    candidate_weights_t = candidate_weights.transpose(-1, -2)
    for t in range(len(gate_steps) - 1, -1, -1):
        grad_candidate = torch.mul(grad, candidate_factor[t], out=candidate_steps[t])
        grad_reset_hidden = grad_candidate @ candidate_weights_t
        torch.mul(grad, update_factor[t], out=update_steps[t])
        torch.mul(grad_reset_hidden, reset_factor[t], out=reset_grad_steps[t])
        grad = torch.addcmul(grad_after[t], grad, keep_factor[t])
        grad.addcmul_(grad_reset_hidden, reset[t])
        grad = _affine(grad, gate_steps[t], gate_weights_t)
    return grad.squeeze(1), grad_gates, grad_candidates


def _pad_steps(grad_inputs, n_columns):
    """Zero gradient for the input terms of items no step read (the last one)."""
    missing = n_columns - grad_inputs.shape[1]
    if missing == 0:
        return grad_inputs
    return torch.cat([grad_inputs, grad_inputs.new_zeros(
        grad_inputs.shape[0], missing, grad_inputs.shape[2])], dim=1)


# ----------------------------------------------------------- output layer
#: Run the output layer's single-precision CPU products with oneDNN (False:
#: with torch's default, MKL). MKL's sgemm runs AVX2 code on AMD processors;
#: oneDNN's JIT kernels use AVX-512 wherever the processor has it (about 2x
#: on these K=32 products on an AMD EPYC). Tests and benchmarks switch it.
ONEDNN = True


def _onednn_linear():
    """oneDNN's ``x @ w.T + b`` operator, or None where torch lacks it.

    The operator is torch's own (its compiler fuses linear layers with it),
    not a public API: it is checked once on a small product, so that a torch
    whose operator is missing or changed falls back to torch's products.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        operator = torch.ops.mkldnn._linear_pointwise.default
        inputs, weight = torch.arange(6.0).reshape(2, 3), torch.ones(4, 3)
        got = operator(inputs, weight.T.contiguous().T, torch.ones(4), "none",
                       [None], "")
        if not torch.equal(got, torch.addmm(torch.ones(4), inputs, weight.T)):
            return None
    except (AttributeError, RuntimeError, TypeError):
        return None
    return operator


_ONEDNN_LINEAR = _onednn_linear()


def linear(inputs, weight, bias=None):
    """``inputs @ weight.T + bias`` of 2-d tensors, by the fastest product here.

    Single-precision CPU tensors go through oneDNN (see :data:`ONEDNN`),
    everything else through :func:`torch.addmm`. ``weight`` may be a
    transposed view (``p.T`` computes ``inputs @ p``).
    """
    if (ONEDNN and _ONEDNN_LINEAR is not None and inputs.device.type == "cpu"
            and inputs.dtype == torch.float32 and weight.dtype == torch.float32):
        # (oneDNN reads the bias as dense: a strided one would be misread)
        bias = None if bias is None else bias.contiguous()
        return _ONEDNN_LINEAR(inputs.contiguous(), weight, bias, "none", [None], "")
    if bias is None:
        return inputs @ weight.T
    return torch.addmm(bias, inputs, weight.T)


def summed_cross_entropy(hidden, weight, bias, targets, block_cells=None):
    """``sum_n -log softmax(hidden_n @ weight.T + bias)[targets_n]``.

    The logits are computed a block of rows at a time, small enough to stay
    in the processor's cache, and each block's gradient is formed right
    away from its probabilities (``p - onehot(y)`` times the block's rows):
    the ``(N x V)`` logits never exist at once, nothing of that size is kept
    for the backward pass, and the backward pass only scales the gradients.

    Parameters
    ----------
    hidden : Tensor of shape (N, H)
    weight : Tensor of shape (V, H)
    bias : Tensor of shape (V,)
    targets : LongTensor of shape (N,)
    block_cells : int, optional
        About how many logits a block holds (at least 16 rows); by default
        :data:`BLOCK_CELLS` of the device type.

    Returns
    -------
    Tensor
        A scalar.
    """
    if block_cells is None:
        block_cells = BLOCK_CELLS.get(hidden.device.type, BLOCK_CELLS["cuda"])
    return _SummedCrossEntropy.apply(hidden, weight, bias, targets, block_cells)


def _block_rows(n_rows, n_items, block_cells):
    return max(16, min(n_rows, block_cells // max(n_items, 1)))


class _SummedCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, block_cells):
        n_rows, size = hidden.shape
        if n_rows == 0:  # (a product with no rows is refused by oneDNN)
            ctx.save_for_backward(torch.zeros_like(hidden), torch.zeros_like(weight),
                                  torch.zeros_like(bias))
            return hidden.new_zeros(())
        rows = _block_rows(n_rows, weight.shape[0], block_cells)
        gradients = any(ctx.needs_input_grad[:3])
        nll = hidden.new_empty(n_rows, 1)
        # per-block views made once: the blocks are many and small
        blocks = zip(hidden.split(rows), targets[:, None].split(rows), nll.split(rows))
        if gradients:
            grad_hidden = torch.empty_like(hidden)
            grad_blocks = grad_hidden.split(rows)
            # [h | 1]^T @ (P - Y): the weight's gradient (transposed) and, in
            # its last row, the bias's, from one product
            augmented_t = torch.ones(size + 1, n_rows, dtype=hidden.dtype,
                                     device=hidden.device)
            augmented_t[:size] = hidden.T
            augmented_blocks = augmented_t.split(rows, dim=1)
            grad_both_t = None
            minus_one = hidden.new_full((rows, 1), -1.0)
        for index, (block, block_targets, block_nll) in enumerate(blocks):
            logits = linear(block, weight, bias)
            target_logits = logits.gather(1, block_targets)
            max_logits = logits.amax(dim=1, keepdim=True)
            proba = torch.ops.aten._softmax.out(logits, 1, False, out=logits)
            # log_sum_exp = max_logit - log(max_proba): exact without a second
            # pass of exponentials, and max_proba >= 1/V never underflows
            torch.sub(max_logits - proba.amax(dim=1, keepdim=True).log_(),
                      target_logits, out=block_nll)
            if gradients:  # d(-log p_y)/d(logits) = p - onehot(y)
                proba.scatter_add_(1, block_targets, minus_one[:len(block)])
                grad_blocks[index].copy_(linear(proba, weight.T))
                product = linear(augmented_blocks[index], proba.T)
                if grad_both_t is None:
                    grad_both_t = product
                else:
                    grad_both_t.add_(product)
        if gradients:
            ctx.save_for_backward(grad_hidden, grad_both_t[:size].T,
                                  grad_both_t[size])
        return nll.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        # the weight's gradient is a transposed view: scaled into a row-major
        # tensor, it reaches .grad without another copy to the weight's layout
        scaled_weight = torch.empty(grad_weight.shape, dtype=grad_weight.dtype,
                                    device=grad_weight.device)
        return (grad_hidden * grad_total,
                torch.mul(grad_weight, grad_total, out=scaled_weight),
                grad_bias * grad_total, None, None)
