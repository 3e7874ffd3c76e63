"""The output layer of every torch recommender: a softmax over the whole catalogue.

Training and scoring share the logits ``hidden @ weight.T + bias`` of one
layer shared by all users, and both compute them a block of rows at a time,
so that no ``(rows x items)`` tensor larger than a block ever exists:

:func:`summed_cross_entropy`
    the training loss ``sum_n -log softmax(h_n W^T + b)[y_n]``, with a
    hand-written backward pass: each block's gradients are formed while its
    exponentials are still in cache, by two matrix products; the block is
    written by one product (the bias folded in), exponentiated in place,
    summed and read twice, with no pass to subtract a maximum, normalise or
    subtract the targets (row factors on the small operands do that);
    nothing of size ``(rows x items)`` is kept for the backward pass;
:func:`sampled_cross_entropy` and :class:`UnigramProposal`
    a training loss that reads only a few items' output rows: the softmax
    over each row's target and negatives shared by the rows, drawn from
    the item unigram raised to a power, with the ``log Q`` correction;
:func:`log_proba`
    exact next-item log-probabilities for scoring (all items, or only given
    targets), in the precision asked for;
:func:`unseen_item_bias`
    the output bias of items added to the catalogue (``partial_fit``).

A model may change the softmax's log-probabilities ``l`` of each row into
``a_n(l)`` (for instance, a mixture with another distribution), in training
and in scoring alike: it passes an *adjustment* as ``adjust`` to
:func:`summed_cross_entropy` and :func:`log_proba`, an object with

``row_values``
    a tensor of shape ``(N,)``, one value per row, on which ``a_n`` depends
    (training differentiates the loss with respect to it);
``adjusted(log_proba, rows)``
    the adjusted log-probabilities of the rows ``rows`` (a slice), given
    their ``log_proba`` (shape ``(m,)``, each row's target, or ``(m, V)``),
    in its type (scoring);
``target_loss(log_proba, rows)``
    for the targets' ``log_proba`` (shape ``(m,)``) of the rows ``rows``:
    the loss ``-a(l_y)``, its derivative ``a'(l_y)`` (which scales the
    plain cross-entropy's gradient ``p - onehot(y)``) and its derivative
    with respect to ``row_values[rows]`` (training).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: About how many logits a block of rows holds: on a CPU, about 8 MiB, so
#: that the softmax and the gradient products read it from the last-level
#: cache (2 to 8 MiB were within 10 % of each other); on a GPU, a whole
#: chunk at once (fewer, larger kernels), up to 256 MiB.
BLOCK_CELLS = {"cpu": 2 ** 21, "cuda": 2 ** 26}


def summed_cross_entropy(hidden, weight, bias, targets, block_cells=None,
                         adjust=None):
    """``sum_n -log softmax(hidden_n @ weight.T + bias)[targets_n]``.

    The logits are computed a block of rows at a time, small enough to stay
    in the processor's cache, and each block's gradients are formed right
    away from its exponentials (see :class:`_SummedCrossEntropy`): the
    ``(N x V)`` logits never exist at once, nothing of that size is kept
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
    adjust : adjustment, optional
        A model's change of each row's log-probabilities (see the module's
        docstring): the loss is then ``sum_n -a_n(log softmax(...)[y_n])``,
        differentiable in ``adjust.row_values`` too.

    Returns
    -------
    Tensor
        A scalar.
    """
    if block_cells is None:
        block_cells = BLOCK_CELLS.get(hidden.device.type, BLOCK_CELLS["cuda"])
    if adjust is None:
        return _SummedCrossEntropy.apply(hidden, weight, bias, targets, block_cells,
                                         None, None)
    return _SummedCrossEntropy.apply(hidden, weight, bias, targets, block_cells,
                                     adjust.row_values, adjust)


def _block_rows(n_rows, n_items, block_cells):
    """Rows per block: at most ``block_cells / n_items`` (at least 16), the
    blocks of a call of about equal size (no small last block)."""
    most = max(16, block_cells // max(n_items, 1))
    n_blocks = -(-n_rows // most)
    return max(1, -(-n_rows // n_blocks))


def _exp_in_place(logits, augmented, weight_t, dtype_range):
    """``exp`` of a block's logits, in place, and each row's shift and sum.

    Without a shift, ``exp(logits)`` and its row sums are exact while every
    row's sum stays in ``dtype_range`` (about ``[1e-19, 1e19]`` in float32:
    logits of at most about 44), which also keeps the gradient products
    finite; a row outside it (rare: very confident or very cold states)
    makes the block start again from ``logits - max``, the textbook
    log-sum-exp. Either way ``exp(logits - shift) / sums`` are the
    probabilities: the shift cancels.
    """
    proba = logits.exp_()
    sums = proba.sum(dim=1, keepdim=True)
    low, high = dtype_range
    if bool(((sums >= low) & (sums <= high)).all()):
        return proba, None, sums
    torch.mm(augmented, weight_t, out=logits)
    shift = logits.amax(dim=1, keepdim=True)
    proba = logits.sub_(shift).exp_()
    return proba, shift, proba.sum(dim=1, keepdim=True)


class _SummedCrossEntropy(torch.autograd.Function):
    """The loss's forward pass forms the gradients; the backward pass scales them.

    Per block of rows, with ``a = [h | 1]`` and ``E = exp(logits)`` (the
    bias is the last column of ``[W | b]``, so the logits are one product)
    and ``s`` its row sums, the logits' gradient is ``c (E / s - Y)`` (``Y``
    the targets' one-hot rows, ``c`` the adjustment's scale, else 1). It is
    never formed: the row factors ``f = c / s`` go on the small operands,

        d hidden = f * (E @ W) - c * W[y]
        d [W | b]^T = (f * a)^T @ E - sum_n c_n a_n^T onehot(y_n)

    so that the ``(rows x items)`` block is written by one product, made
    its exponentials in place, summed, and read by the two gradient
    products: no pass to add the bias, subtract a maximum, normalise or
    subtract the targets.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, block_cells, row_values,
                adjust):
        n_rows, size = hidden.shape
        adjusting = adjust is not None
        if n_rows == 0:
            ctx.save_for_backward(torch.zeros_like(hidden), torch.zeros_like(weight),
                                  torch.zeros_like(bias),
                                  torch.zeros_like(row_values) if adjusting else None)
            return hidden.new_zeros(())
        rows = _block_rows(n_rows, weight.shape[0], block_cells)
        gradients = any(ctx.needs_input_grad[:3])
        info = torch.finfo(hidden.dtype)
        dtype_range = (math.sqrt(info.tiny), math.sqrt(info.max))
        # [h | 1] twice: row-major for the logits, transposed for the
        # weights' gradient; and [W | b], transposed
        augmented = torch.ones(n_rows, size + 1, dtype=hidden.dtype,
                               device=hidden.device)
        augmented[:, :size] = hidden
        augmented_t = augmented.T.contiguous()
        weight_t = torch.cat([weight, bias[:, None]], dim=1).T
        nll = hidden.new_empty(n_rows, 1)
        targets = targets[:, None]
        if gradients:
            grad_hidden = torch.empty_like(hidden)
            grad_both_t = None
        if adjusting:
            row_grad = torch.empty_like(row_values)
        for begin in range(0, n_rows, rows):
            block = slice(begin, min(begin + rows, n_rows))
            block_targets = targets[block]
            logits = torch.mm(augmented[block], weight_t)
            target_logits = logits.gather(1, block_targets)
            proba, shift, sums = _exp_in_place(logits, augmented[block], weight_t,
                                               dtype_range)
            block_nll = nll[block]
            torch.sub(torch.log(sums), target_logits, out=block_nll)
            if shift is not None:
                block_nll.add_(shift)
            scale = None
            if adjusting:
                # the adjusted loss; the logits' gradient is its derivative
                # (the scale) times p - onehot(y)
                loss, scale, grad = adjust.target_loss(-block_nll[:, 0], block)
                block_nll[:, 0] = loss
                row_grad[block] = grad
                scale = scale[:, None]
            if not gradients:
                continue
            factor = sums.reciprocal_() if scale is None else scale / sums
            target_rows = F.embedding(block_targets[:, 0], weight)
            if scale is not None:
                target_rows = target_rows * scale
            out = grad_hidden[block]
            torch.mm(proba, weight, out=out)
            out.mul_(factor).sub_(target_rows)
            scaled_t = augmented_t[:, block] * factor.T
            if grad_both_t is None:
                grad_both_t = scaled_t @ proba
            else:
                grad_both_t.addmm_(scaled_t, proba)
            onehot_t = augmented_t[:, block]
            if scale is not None:
                onehot_t = onehot_t * scale.T
            grad_both_t.index_add_(1, block_targets[:, 0], onehot_t, alpha=-1)
        if gradients or adjusting:
            ctx.save_for_backward(grad_hidden if gradients else None,
                                  grad_both_t[:size].T if gradients else None,
                                  grad_both_t[size] if gradients else None,
                                  row_grad if adjusting else None)
        return nll.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias, grad_rows = ctx.saved_tensors
        if grad_hidden is None:
            return (None, None, None, None, None, grad_rows * grad_total, None)
        # the weight's gradient is a transposed view: scaled into a row-major
        # tensor, it reaches .grad without another copy to the weight's layout
        scaled_weight = torch.empty(grad_weight.shape, dtype=grad_weight.dtype,
                                    device=grad_weight.device)
        return (grad_hidden * grad_total,
                torch.mul(grad_weight, grad_total, out=scaled_weight),
                grad_bias * grad_total, None, None,
                None if grad_rows is None else grad_rows * grad_total, None)


def sampled_cross_entropy(hidden, weight, bias, targets, negatives, log_expected):
    """The sampled-softmax loss of each row's target against shared negatives.

    Each row ``n`` is scored by a softmax over its target ``y_n`` and the
    ``S`` negatives ``j_1 .. j_S`` (drawn with replacement from a proposal
    ``Q``, shared by all rows), each logit corrected by the log of its
    expected count among the draws, ``log(S Q(j))`` (the ``log Q``
    correction, applied to the target as to the negatives)::

        o'_j = h_n . w_j + b_j - log(S Q(j))
        loss = sum_n [ log(exp(o'_{y_n}) + sum_{s: j_s != y_n} exp(o'_{j_s})) - o'_{y_n} ]

    A negative that is the row's own target (an accidental hit) is left out
    of that row's sum: the target is counted once, as the target. With the
    negatives every item exactly once (``S = V``), the loss is the full
    softmax's cross-entropy at the biases ``b_j - log(V Q(j))``; with a
    uniform ``Q`` that is the full cross-entropy itself.

    Differentiable by autograd (the tensors are ``N x (S + 1)``).

    Parameters
    ----------
    hidden : Tensor of shape (N, H)
    weight : Tensor of shape (M, H)
        Output rows of the candidate items (all items, or only those the
        loss reads: targets and negatives).
    bias : Tensor of shape (M,)
    targets : LongTensor of shape (N,)
        Each row's target, as a row of ``weight``.
    negatives : LongTensor of shape (S,)
        The negatives, as rows of ``weight``, repeats allowed.
    log_expected : Tensor of shape (M,)
        ``log(S Q(j))`` of each row of ``weight``.

    Returns
    -------
    Tensor
        A scalar, the sum over rows.
    """
    corrected = bias - log_expected
    target_logits = ((hidden * F.embedding(targets, weight)).sum(dim=1)
                     + F.embedding(targets, corrected[:, None])[:, 0])
    negative_logits = torch.addmm(F.embedding(negatives, corrected[:, None])[:, 0],
                                  hidden, F.embedding(negatives, weight).T)
    negative_logits = negative_logits.masked_fill(
        negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([target_logits[:, None], negative_logits], dim=1)
    return (torch.logsumexp(logits, dim=1) - target_logits).sum()


class UnigramProposal:
    """Negatives drawn from the item unigram raised to a power.

    ``Q(j) = c_j^power / sum_i c_i^power`` for item counts ``c``; ``power =
    0`` is uniform over every item (``0^0 = 1``: also the unseen ones),
    ``power = 1`` the unigram itself; with ``power > 0`` an item never seen
    is never drawn.

    Parameters
    ----------
    counts : array-like of shape (V,)
        Events per item.
    power : float
        ``>= 0``.
    n_negatives : int
        ``S``, draws per call of :meth:`draw` (with replacement).
    device : torch.device or str, default="cpu"

    Attributes
    ----------
    proba : Tensor of shape (V,), float64
    log_expected : Tensor of shape (V,), float64
        ``log(S Q(j))``, ``-inf`` where ``Q(j) = 0``.
    """

    def __init__(self, counts, power, n_negatives, device="cpu"):
        weights = np.power(np.asarray(counts, dtype=np.float64), float(power))
        if not weights.sum() > 0:
            raise ValueError("the proposal has no item to draw")
        proba = weights / weights.sum()
        self.n_negatives = int(n_negatives)
        self.proba = torch.as_tensor(proba, device=device)
        with np.errstate(divide="ignore"):
            log_expected = np.log(self.n_negatives) + np.log(proba)
        self.log_expected = torch.as_tensor(log_expected, device=device)

    def draw(self, generator=None):
        """``S`` item codes drawn with replacement (LongTensor, on the device)."""
        return torch.multinomial(self.proba, self.n_negatives, replacement=True,
                                 generator=generator)


@torch.no_grad()
def log_proba(hidden, weight, bias, targets=None, dtype=torch.float64,
              max_cells=2 ** 22, adjust=None):
    """Next-item log-probabilities ``log softmax(hidden @ weight.T + bias)``.

    Parameters
    ----------
    hidden : Tensor of shape (n, H)
    weight : Tensor of shape (n_items, H)
    bias : Tensor of shape (n_items,)
    targets : ndarray of int64 of shape (n,), optional
        Return only these items' log-probabilities.
    dtype : torch.dtype, default=torch.float64
        Precision of the computation.
    max_cells : int
        Most logits (rows x items) computed at once.
    adjust : adjustment, optional
        A model's change of each row's log-probabilities (see the module's
        docstring), applied to each block in the precision ``dtype``.

    Returns
    -------
    ndarray of float64
        Shape ``(n,)`` with ``targets``, else ``(n, n_items)``.
    """
    n_items = weight.shape[0]
    weight, bias = weight.to(dtype), bias.to(dtype)
    rows_per_block = max(1, max_cells // max(n_items, 1))
    n = hidden.shape[0]
    if targets is not None:
        result = np.empty(n, dtype=np.float64)
        targets = torch.as_tensor(np.asarray(targets, dtype=np.int64),
                                  device=hidden.device)
    else:
        result = np.empty((n, n_items), dtype=np.float64)
    for begin in range(0, n, rows_per_block):
        end = min(begin + rows_per_block, n)
        block = torch.log_softmax(
            torch.addmm(bias, hidden[begin:end].to(dtype), weight.T), dim=1)
        if targets is not None:
            block = block.gather(1, targets[begin:end, None])[:, 0]
        if adjust is not None:
            block = adjust.adjusted(block, slice(begin, end))
        result[begin:end] = block.double().cpu().numpy()
    return result


def unseen_item_bias(logits, n_new, n_seen):
    """Output bias of ``n_new`` added items that gives each an unseen item's prior.

    The added items' output weights are zero, so their logit is this bias
    whatever the state. At the state of ``logits`` (the logits of the known
    items), each added item then has the probability that add-one (Laplace)
    smoothing gives an item never seen among ``n_seen`` events over the
    grown catalogue of ``V = len(logits) + n_new`` items::

        q = 1 / (n_seen + V)

    while the known items keep their odds (their probabilities there are
    scaled by ``1 - n_new * q``). With
    ``Z = sum(exp(logits))``, ``n_new`` logits ``b`` give each added item
    ``exp(b) / (Z + n_new exp(b))``, which is ``q`` for
    ``b = log(Z) + log(q) - log(1 - n_new q)``.

    Parameters
    ----------
    logits : Tensor of shape (n_known,)
        Logits of the known items at the reference state.
    n_new : int
        Items added.
    n_seen : int
        Events seen so far.

    Returns
    -------
    float
    """
    prior = 1.0 / (n_seen + logits.shape[-1] + n_new)
    return (float(torch.logsumexp(logits.double(), dim=-1)) + math.log(prior)
            - math.log1p(-n_new * prior))
