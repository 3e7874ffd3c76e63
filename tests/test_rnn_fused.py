"""The hand-written passes of ``skcrnn._rnn._fused`` against autograd and finite differences."""

import os
import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skcrnn._rnn._cells import CollaborativeRNN
from skcrnn._rnn import _fused, _native
from skcrnn._rnn._fused import chunk_states, linear, summed_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELLS = {"gru-tanh": ("gru", "tanh"), "gru-sigmoid": ("gru", "sigmoid"),
         "tanh": ("tanh", "tanh")}


class _CountingLoops:
    """The compiled module, counting the calls of its loops."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __getattr__(self, name):
        function = getattr(self.module, name)

        def counted(*args):
            self.calls += 1
            return function(*args)
        return counted


@pytest.fixture(params=["compiled", "python"])
def loops(request, monkeypatch):
    """Run the recurrence's loops compiled (``_native``) or in Python.

    With the compiled ones, the test fails unless they actually ran.
    """
    monkeypatch.setattr(_native, "ENABLED", request.param == "compiled")
    if request.param == "python":
        yield request.param
        return
    module = _native.load()
    if module is None:
        pytest.skip(f"no compiled recurrence here: {_native.status()}")
    counting = _CountingLoops(module)
    monkeypatch.setattr(_native, "load", lambda: counting)
    yield request.param
    assert counting.calls > 0, "the compiled loops did not run"


def test_compiled_recurrence_builds_where_there_is_a_compiler(monkeypatch):
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: training runs the Python loops")
    monkeypatch.setattr(_native, "ENABLED", True)
    assert _native.load() is not None, _native.status()
    assert _native.status() == "compiled"


@pytest.mark.parametrize("message", ["", "Error building extension\nc++: not found"])
def test_a_failed_build_is_reported_not_raised(monkeypatch, message):
    import torch.utils.cpp_extension

    def failing(**kwargs):
        raise OSError(message) if message else OSError()

    monkeypatch.setattr(torch.utils.cpp_extension, "load", failing)
    monkeypatch.setattr(_native, "ENABLED", True)
    monkeypatch.setattr(_native, "_built", {})
    assert _native.load() is None
    assert _native.status() == ("python (OSError: Error building extension)"
                                if message else "python (OSError)")
    assert _native.ready()


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    """torch's builder waits forever on the lock of a build that was killed."""
    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "_get_build_directory",
                        lambda name, verbose: str(tmp_path))
    lock = tmp_path / "lock"
    lock.touch()
    _native._remove_stale_lock(torch.utils.cpp_extension)
    assert lock.exists()  # a build in progress
    old = time.time() - _native.STALE_LOCK_SECONDS - 1
    os.utime(lock, (old, old))
    _native._remove_stale_lock(torch.utils.cpp_extension)
    assert not lock.exists()


def test_training_falls_back_to_python_loops_where_the_build_fails(monkeypatch):
    """No compiler (here: a failing build): a warning-free fit on the Python loops."""
    import warnings

    import torch.utils.cpp_extension

    from skcrnn import CollaborativeGRURecommender
    from tests.conftest import TINY_RNN, random_events

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension 'skcrnn_recurrence'\nc++: not found")

    monkeypatch.setattr(_native, "ENABLED", True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.utils.cpp_extension, "load", no_compiler)
        patch.setattr(_native, "_built", {})
        assert _native.load() is None
        assert _native.status() == ("python (RuntimeError: Error building "
                                    "extension 'skcrnn_recurrence')")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = CollaborativeGRURecommender(**TINY_RNN).fit(random_events())
    # the same fit on the compiled loops, where they build
    monkeypatch.setattr(_native, "_built", {})
    expected = CollaborativeGRURecommender(**TINY_RNN).fit(random_events())
    np.testing.assert_allclose(model.score_samples(random_events(seed=1)),
                               expected.score_samples(random_events(seed=1)),
                               rtol=1e-4, atol=1e-5)


def _inputs(cell, shared, n_rows=4, n_columns=5, size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = (3 if cell == "gru" else 1) * size
    start = torch.randn(n_rows, size, generator=generator, dtype=torch.float64)
    inputs = torch.randn(n_rows, n_columns, width, generator=generator,
                         dtype=torch.float64)
    shape = (size, width) if shared else (n_rows, size, width)
    weights = torch.randn(shape, generator=generator, dtype=torch.float64) / size
    return [t.requires_grad_() for t in (start, inputs, weights)]


def _reference_states(start, inputs, weights, cell, candidate, n_steps):
    """The same recurrence through :meth:`CollaborativeRNN.step` and autograd."""
    size = start.shape[1]
    network = CollaborativeRNN(1, 1, size, cell=cell, candidate=candidate,
                               dtype=torch.float64)
    split = network.split_recurrent(weights)
    terms = inputs.unsqueeze(2)
    if cell == "gru":
        terms = (terms[..., :2 * size], terms[..., 2 * size:])
    else:
        terms = (terms,)
    hidden, states = start.unsqueeze(1), []
    for t in range(inputs.shape[1]):
        states.append(hidden)
        if t < n_steps:
            hidden = network.step(hidden, tuple(x[:, t] for x in terms), split)
    return torch.cat(states, dim=1), hidden.squeeze(1)


@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("n_columns, n_steps", [(5, 5), (5, 4), (1, 1), (1, 0)])
def test_chunk_states_match_autograd(cell, shared, n_columns, n_steps, loops):
    cell, candidate = CELLS[cell]
    tensors = _inputs(cell, shared, n_columns=n_columns)
    generator = torch.Generator().manual_seed(1)
    # a loss on every state and on the carry, with random weights
    state_weights = torch.randn(4, n_columns, 3, generator=generator,
                                dtype=torch.float64)
    carry_weights = torch.randn(4, 3, generator=generator, dtype=torch.float64)

    def loss(states, final):
        return (states * state_weights).sum() + (final * carry_weights).sum()

    fused = chunk_states(*tensors, cell, candidate, n_steps)
    fused_grads = torch.autograd.grad(loss(*fused), tensors)
    reference = _reference_states(*tensors, cell, candidate, n_steps)
    reference_grads = torch.autograd.grad(loss(*reference), tensors, allow_unused=True,
                                          materialize_grads=True)
    for got, expected in zip(fused, reference):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for got, expected, name in zip(fused_grads, reference_grads,
                                   ("start", "inputs", "weights")):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_chunk_states_gradcheck(cell, shared, loops):
    cell, candidate = CELLS[cell]
    tensors = _inputs(cell, shared, n_rows=2, n_columns=3, size=2)
    assert torch.autograd.gradcheck(
        lambda *t: chunk_states(*t, cell, candidate, 3), tensors)


def test_chunk_states_only_state_gradient():
    """A loss on the states alone (the carry unused) still back-propagates."""
    tensors = _inputs("gru", False)
    states, _ = chunk_states(*tensors, "gru", "sigmoid", 4)
    reference, _ = _reference_states(*tensors, "gru", "sigmoid", 4)
    got = torch.autograd.grad(states.pow(2).sum(), tensors)
    expected = torch.autograd.grad(reference.pow(2).sum(), tensors)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


# ------------------------------------------------------------ output layer
@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("scale", [1.0, 60.0], ids=["usual", "saturated"])
def test_single_precision_chunk_states_match_double(cell, shared, scale, loops):
    """float32 loops (vectorized exp in the compiled ones) against float64.

    The saturated case drives the gates far past where exp under- or
    overflows in float32 (pre-activations of a few hundred).
    """
    cell, candidate = CELLS[cell]
    tensors = _inputs(cell, shared, n_rows=7, n_columns=9, size=20, seed=4)
    with torch.no_grad():
        tensors[1].mul_(scale)
    single = [t.detach().float().requires_grad_() for t in tensors]
    generator = torch.Generator().manual_seed(2)
    state_weights = torch.randn(7, 9, 20, generator=generator, dtype=torch.float64)

    def loss(states, final):
        return (states * state_weights.to(states.dtype)).sum() + final.sum()

    expected = chunk_states(*tensors, cell, candidate, 9)
    got = chunk_states(*single, cell, candidate, 9)
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=2e-6)
    expected_grads = torch.autograd.grad(loss(*expected), tensors)
    got_grads = torch.autograd.grad(loss(*got), single)
    for g, e, name in zip(got_grads, expected_grads, ("start", "inputs", "weights")):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("size", [1, 17, 33, 48])
@pytest.mark.parametrize("shared", [False, True], ids=["per-user", "shared"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("n_steps", [6, 5])
def test_compiled_loops_match_python_loops_at_every_width(cell, shared, size, dtype,
                                                         n_steps, monkeypatch):
    """Hidden sizes that take the compiled products' wide, narrow and scalar paths."""
    cell, candidate = CELLS[cell]
    tensors = [t.detach().to(dtype).requires_grad_()
               for t in _inputs(cell, shared, n_rows=3, n_columns=6, size=size, seed=7)]
    generator = torch.Generator().manual_seed(3)
    state_weights = torch.randn(3, 6, size, generator=generator, dtype=dtype)

    def run(enabled):
        monkeypatch.setattr(_native, "ENABLED", enabled)
        states, final = chunk_states(*tensors, cell, candidate, n_steps)
        loss = (states * state_weights).sum() + (final * final).sum()
        return (states, final) + torch.autograd.grad(loss, tensors)

    monkeypatch.setattr(_native, "ENABLED", True)
    if _native.load() is None:
        pytest.skip(f"no compiled recurrence here: {_native.status()}")
    compiled, python = run(True), run(False)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    names = ("states", "final", "start", "inputs", "weights")
    for got, expected, name in zip(compiled, python, names):
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance,
                                   msg=name)


def test_chunk_states_refuse_a_chunk_without_columns():
    tensors = _inputs("gru", False, n_columns=0)
    with pytest.raises(ValueError, match="T >= 1"):
        chunk_states(*tensors, "gru", "tanh", 0)


def test_compiled_loops_refuse_inconsistent_shapes(monkeypatch):
    monkeypatch.setattr(_native, "ENABLED", True)
    native = _native.load()
    if native is None:
        pytest.skip(f"no compiled recurrence here: {_native.status()}")
    start, inputs, weights = (t.detach() for t in _inputs("gru", False, n_rows=3))
    with pytest.raises(RuntimeError, match="start states"):
        native.gru_forward(start[:1].contiguous(), inputs, weights, False, 5)
    with pytest.raises(RuntimeError, match="n_steps"):
        native.gru_forward(start, inputs, weights, False, 3)
    with pytest.raises(RuntimeError, match="contiguous"):
        native.gru_forward(start, inputs.transpose(0, 1), weights, False, 5)


@pytest.mark.parametrize("cell", ["gru", "tanh"])
@pytest.mark.parametrize("n_steps", [5, 4])
def test_a_non_contiguous_carry_gradient_is_accepted(cell, n_steps, loops):
    tensors = _inputs(cell, False, n_rows=4, n_columns=5, size=3)
    states, final = chunk_states(*tensors, cell, "tanh", n_steps)
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


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "torch-mm"])
def test_single_precision_cross_entropy_matches_double(onednn, monkeypatch):
    """The float32 products (oneDNN or torch's) against a float64 reference."""
    monkeypatch.setattr(_fused, "ONEDNN", onednn)
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


@pytest.mark.parametrize("shape", [(5, 3, 4), (130, 33, 7), (1, 1, 1)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("strided_bias", [False, True])
def test_linear_matches_addmm_in_single_precision(shape, transposed, strided_bias):
    n, m, k = shape
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, k, generator=generator)
    weight = torch.randn(m, k, generator=generator)
    bias = torch.randn(m, generator=generator)
    if strided_bias:  # every other element of a longer vector
        bias = torch.randn(2 * m, generator=generator)[::2]
    if transposed:  # a transposed view, as the weight's gradient uses
        weight = torch.randn(k, m, generator=generator).T
    expected = inputs.double() @ weight.double().T + bias.double()
    torch.testing.assert_close(linear(inputs, weight, bias).double(), expected,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear(inputs, weight).double(),
                               expected - bias.double(), rtol=1e-5, atol=1e-5)


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


def test_recurrence_restores_the_thread_count_even_from_several_threads():
    import threading
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tensors = _inputs("gru", False)

        def run():
            for _ in range(20):
                states, final = chunk_states(*tensors, "gru", "sigmoid", 5)
                torch.autograd.grad(states.sum() + final.sum(), tensors)

        workers = [threading.Thread(target=run) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
