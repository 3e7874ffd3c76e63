"""Each cell's hand-written derivative and the training recurrence, against autograd.

The recurrence of :mod:`skcrnn._rnn.recurrence` runs a cell's step forward
and its derivative backward; the references below run the same step through
autograd (``autograd_states``), and through finite differences (gradcheck).
The output layer's blocked cross-entropy is checked against torch's.
"""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skcrnn._rnn.cells import make_cell
from skcrnn._rnn.recurrence import autograd_states, chunk_states
from skcrnn._torch.output import summed_cross_entropy
from skcrnn._torch.runtime import cpu_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELLS = {"gru-tanh": ("gru", "tanh"), "gru-sigmoid": ("gru", "sigmoid"),
         "tanh": ("tanh", "tanh")}


def _inputs(cell, shared, n_rows=4, n_columns=5, size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = (3 if cell == "gru" else 1) * size
    start = torch.randn(n_rows, size, generator=generator, dtype=torch.float64)
    inputs = torch.randn(n_rows, n_columns, width, generator=generator,
                         dtype=torch.float64)
    shape = (size, width) if shared else (n_rows, size, width)
    weights = torch.randn(shape, generator=generator, dtype=torch.float64) / size
    return [t.requires_grad_() for t in (start, inputs, weights)]


def _reference_states(start, inputs, weights, unit, n_steps):
    """The same recurrence through the cell's step and autograd."""
    return autograd_states(start, inputs, weights, unit, n_steps)


@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("n_columns, n_steps", [(5, 5), (5, 4), (1, 1), (1, 0)])
def test_chunk_states_match_autograd(cell, shared, n_columns, n_steps):
    cell, candidate = CELLS[cell]
    unit = make_cell(cell, candidate)
    tensors = _inputs(cell, shared, n_columns=n_columns)
    generator = torch.Generator().manual_seed(1)
    # a loss on every state and on the carry, with random weights
    state_weights = torch.randn(4, n_columns, 3, generator=generator,
                                dtype=torch.float64)
    carry_weights = torch.randn(4, 3, generator=generator, dtype=torch.float64)

    def loss(states, final):
        return (states * state_weights).sum() + (final * carry_weights).sum()

    fused = chunk_states(*tensors, unit, n_steps)
    fused_grads = torch.autograd.grad(loss(*fused), tensors)
    reference = _reference_states(*tensors, unit, n_steps)
    reference_grads = torch.autograd.grad(loss(*reference), tensors, allow_unused=True,
                                          materialize_grads=True)
    for got, expected in zip(fused, reference):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for got, expected, name in zip(fused_grads, reference_grads,
                                   ("start", "inputs", "weights")):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_chunk_states_gradcheck(cell, shared):
    cell, candidate = CELLS[cell]
    unit = make_cell(cell, candidate)
    tensors = _inputs(cell, shared, n_rows=2, n_columns=3, size=2)
    assert torch.autograd.gradcheck(
        lambda *t: chunk_states(*t, unit, 3), tensors)


def test_chunk_states_only_state_gradient():
    """A loss on the states alone (the carry unused) still back-propagates."""
    tensors = _inputs("gru", False)
    unit = make_cell("gru", "sigmoid")
    states, _ = chunk_states(*tensors, unit, 4)
    reference, _ = _reference_states(*tensors, unit, 4)
    got = torch.autograd.grad(states.pow(2).sum(), tensors)
    expected = torch.autograd.grad(reference.pow(2).sum(), tensors)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


# ------------------------------------------------------------ output layer
@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("scale", [1.0, 60.0], ids=["usual", "saturated"])
def test_single_precision_chunk_states_match_double(cell, shared, scale):
    """float32 loops against float64.

    The saturated case drives the gates far past where exp under- or
    overflows in float32 (pre-activations of a few hundred).
    """
    cell, candidate = CELLS[cell]
    unit = make_cell(cell, candidate)
    tensors = _inputs(cell, shared, n_rows=7, n_columns=9, size=20, seed=4)
    with torch.no_grad():
        tensors[1].mul_(scale)
    single = [t.detach().float().requires_grad_() for t in tensors]
    generator = torch.Generator().manual_seed(2)
    state_weights = torch.randn(7, 9, 20, generator=generator, dtype=torch.float64)

    def loss(states, final):
        return (states * state_weights.to(states.dtype)).sum() + final.sum()

    expected = chunk_states(*tensors, unit, 9)
    got = chunk_states(*single, unit, 9)
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=2e-6)
    expected_grads = torch.autograd.grad(loss(*expected), tensors)
    got_grads = torch.autograd.grad(loss(*got), single)
    for g, e, name in zip(got_grads, expected_grads, ("start", "inputs", "weights")):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4, msg=name)


def test_chunk_states_refuse_a_chunk_without_columns():
    tensors = _inputs("gru", False, n_columns=0)
    with pytest.raises(ValueError, match="T >= 1"):
        chunk_states(*tensors, make_cell("gru", "tanh"), 0)


@pytest.mark.parametrize("cell", ["gru", "tanh"])
@pytest.mark.parametrize("n_steps", [5, 4])
def test_a_non_contiguous_carry_gradient_is_accepted(cell, n_steps):
    tensors = _inputs(cell, False, n_rows=4, n_columns=5, size=3)
    states, final = chunk_states(*tensors, make_cell(cell, "tanh"), n_steps)
    other = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((final.T * other).sum() + states.sum(), tensors)
    assert all(torch.isfinite(g).all() for g in grads)


def _output_problem(n_rows=37, n_items=11, size=4, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, size, generator=generator, dtype=torch.float64)
    weight = scale * torch.randn(n_items, size, generator=generator, dtype=torch.float64)
    bias = torch.randn(n_items, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, n_items, (n_rows,), generator=generator)
    return hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), targets


@pytest.mark.parametrize("block_cells", [2 ** 16, 11 * 16, 11 * 20],
                         ids=["one-block", "16-row-blocks", "uneven-blocks"])
def test_summed_cross_entropy_matches_torch(block_cells):
    hidden, weight, bias, targets = _output_problem()
    got = summed_cross_entropy(hidden, weight, bias, targets, block_cells)
    expected = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = 0.37  # the chunk loss divides the sum by the number of slots
    got_grads = torch.autograd.grad(upstream * got, (hidden, weight, bias))
    expected_grads = torch.autograd.grad(upstream * expected, (hidden, weight, bias))
    for g, e, name in zip(got_grads, expected_grads, ("hidden", "weight", "bias")):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


def test_single_precision_cross_entropy_matches_double():
    """The float32 products against a float64 reference."""
    hidden, weight, bias, targets = _output_problem(n_rows=300, n_items=97, size=8)
    single = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    got = summed_cross_entropy(*single, targets, block_cells=97 * 40)
    expected = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    got_grads = torch.autograd.grad(got, single)
    expected_grads = torch.autograd.grad(expected, (hidden, weight, bias))
    for g, e, name in zip(got_grads, expected_grads, ("hidden", "weight", "bias")):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_summed_cross_entropy_of_no_rows_is_zero(dtype):
    hidden, weight, bias, targets = (
        t.detach().to(dtype).requires_grad_() if t.is_floating_point() else t
        for t in _output_problem(n_rows=0))
    got = summed_cross_entropy(hidden, weight, bias, targets)
    assert got.item() == 0
    grads = torch.autograd.grad(got, (hidden, weight, bias))
    assert all(g.shape == t.shape and not g.any()
               for g, t in zip(grads, (hidden, weight, bias)))


def test_summed_cross_entropy_gradcheck():
    hidden, weight, bias, targets = _output_problem(n_rows=5, n_items=4, size=2)
    assert torch.autograd.gradcheck(
        lambda h, w, b: summed_cross_entropy(h, w, b, targets, 4 * 16),
        (hidden, weight, bias))


def test_summed_cross_entropy_is_exact_for_very_unlikely_targets():
    """Targets of probability far below float32's smallest normal number."""
    hidden, weight, bias, targets = _output_problem(scale=300.0)
    with torch.no_grad():
        hidden, weight, bias = hidden.float(), weight.float(), bias.float()
    got = summed_cross_entropy(hidden, weight, bias, targets)
    logits = (hidden @ weight.T + bias).double()
    expected = F.cross_entropy(logits, targets, reduction="sum")
    assert expected > 37 * 200  # probabilities around exp(-200): 0 in float32
    assert np.isfinite(got.item())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("shift", [100.0, -100.0], ids=["overflow", "underflow"])
def test_summed_cross_entropy_shifts_the_blocks_that_need_it(shift):
    """A row whose unshifted exponentials leave float32's range, among ordinary rows.

    The loss exponentiates the logits without subtracting each row's
    maximum; a block with a row of very large logits (``exp`` overflows)
    or of only very small ones (its sum underflows to 0) starts again from
    ``logits - max``. Without that, the loss would be infinite or NaN.
    """
    hidden, weight, bias, targets = _output_problem(n_rows=48, n_items=11, size=4)
    with torch.no_grad():  # an extra input whose output weight is 1 moves row 5
        hidden = torch.cat([hidden, torch.zeros(48, 1, dtype=torch.float64)], dim=1)
        hidden[5, -1] = shift
        weight = torch.cat([weight, torch.ones(11, 1, dtype=torch.float64)], dim=1)
    reference = [t.detach().requires_grad_() for t in (hidden, weight, bias)]
    single = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    got = summed_cross_entropy(*single, targets, block_cells=11 * 16)
    h, w, b = reference
    expected = F.cross_entropy(h @ w.T + b, targets, reduction="sum")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    for g, e, name in zip(torch.autograd.grad(got, single),
                          torch.autograd.grad(expected, reference),
                          ("hidden", "weight", "bias")):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5, msg=name)


def test_thread_policy_restores_the_count_even_from_several_threads():
    """Fits in several Python threads share torch's setting: the last one out restores it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tensors = _inputs("gru", False)
        unit = make_cell("gru", "sigmoid")
        seen = []

        def run():
            for _ in range(20):
                with cpu_threads(1):
                    seen.append(torch.get_num_threads())
                    states, final = chunk_states(*tensors, unit, 5)
                    torch.autograd.grad(states.sum() + final.sum(), tensors)

        workers = [threading.Thread(target=run) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_thread_policy_restores_the_count_when_the_block_raises():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt), cpu_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyboardInterrupt
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
