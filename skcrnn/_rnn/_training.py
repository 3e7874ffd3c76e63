"""Training the collaborative network: truncated BPTT over padded user batches.

A batch holds up to ``batch_size`` users (rows sorted by decreasing length);
each user's sequence is cut into chunks of ``chunk_size`` events. Chunk ``c``
of a user reads its items ``x_k`` (``cC <= k < (c+1)C``) and predicts each of
them from the state before it, ``h(k)``: the first chunk predicts the first
item from the initial state, and the state after the chunk is carried into
the next one, detached. One optimizer step per chunk.

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

import copy
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._batching import length_sorted_batches, pad
from ._fused import chunk_states, summed_cross_entropy


@dataclass
class Batch:
    """Padded users of one training batch, on the training device.

    Attributes
    ----------
    users : LongTensor of shape (B,)
    items : LongTensor of shape (B, L)
        Right-padded item codes, rows in decreasing length.
    lengths : ndarray of int64 of shape (B,)
        Real events per row (host memory: it drives the loops).
    """

    users: torch.Tensor
    items: torch.Tensor
    lengths: np.ndarray

    @property
    def n_events(self):
        return int(self.lengths.sum())


def make_batches(sequences, batch_size, device):
    """The training batches of :func:`length_sorted_batches`, padded."""
    batches = []
    for groups in length_sorted_batches(sequences.lengths, batch_size):
        items, lengths = pad(sequences, groups)
        batches.append(Batch(
            users=torch.as_tensor(sequences.user_codes[groups], device=device),
            items=torch.as_tensor(items, device=device), lengths=lengths))
    return batches


@dataclass
class Chunk:
    """The loss of one chunk of a batch, ready for ``loss.backward()``.

    Attributes
    ----------
    loss : Tensor
        The training objective: summed cross-entropy of the chunk's real
        events over the number of slots (rows x chunk_size).
    nll : Tensor
        Summed cross-entropy of the chunk's real events.
    n_events : int
        How many real events.
    users : LongTensor of shape (A,)
        The users still running in this chunk.
    user_weights : Tensor of shape (A, H, k*H) or None
        With per-user weights: a copy of these users' recurrent matrices,
        a leaf of the graph, so that after ``backward`` its ``.grad`` holds
        their gradient (the gradient of ``recurrent`` is zero elsewhere).
        None with shared weights, whose gradient reaches ``recurrent``.
    """

    loss: torch.Tensor
    nll: torch.Tensor
    n_events: int
    users: torch.Tensor
    user_weights: torch.Tensor = None


#: Train with the hand-written passes of :mod:`._fused` (True) or with
#: autograd through :meth:`CollaborativeRNN.step` (False, the reference path
#: the fast one is tested and benchmarked against).
FUSED = True


def chunk_losses(module, batch, chunk_size, initial_state, fused=None):
    """Yield a :class:`Chunk` for each chunk of a batch, in time order.

    The generator is lazy: it reads the users' recurrent matrices when the
    chunk starts, so an optimizer step taken between two chunks is seen by
    the next one. The state carried from one chunk to the next is detached.

    Parameters
    ----------
    module : CollaborativeRNN
    batch : Batch
    chunk_size : int
    initial_state : float
        Value of every coordinate of the state before a user's first event.
    fused : bool, optional
        Use the hand-written passes of :mod:`._fused` (the same numbers,
        faster) rather than autograd; :data:`FUSED` by default.
    """
    fused = FUSED if fused is None else fused
    dtype = module.item_input.dtype
    device = batch.items.device
    hidden = torch.full((len(batch.lengths), module.hidden_size), initial_state,
                        dtype=dtype, device=device)
    n_columns = batch.items.shape[1]
    descending = -batch.lengths
    for start in range(0, n_columns, chunk_size):
        stop = min(start + chunk_size, n_columns)
        active = int(np.searchsorted(descending, -start, side="left"))
        users = batch.users[:active]
        items = batch.items[:active, start:stop]
        real = _real_slots(batch.lengths[:active] - start, stop - start, device)
        if module.shared:
            user_weights = None
            weights = module.recurrent[0]
        else:
            user_weights = module.recurrent.detach().index_select(0, users)
            user_weights.requires_grad_()
            weights = user_weights
        # the last step of the last chunk would only feed a carry nobody reads
        n_steps = stop - start if stop < n_columns else stop - start - 1
        run = _fused_states if fused else _autograd_states
        states, hidden = run(module, hidden[:active].detach(), items, weights, n_steps)
        states = states.flatten(0, 1).index_select(0, real)
        targets = items.flatten().index_select(0, real)
        if fused:
            nll = summed_cross_entropy(states, module.output_weight,
                                       module.output_bias, targets)
        else:
            nll = F.cross_entropy(module.logits(states), targets, reduction="sum")
        loss = nll / (len(batch.lengths) * chunk_size)
        yield Chunk(loss, nll.detach(), len(real), users, user_weights)


def _real_slots(remaining, width, device):
    """Flat indices of the real (not padding) slots of a ``(rows, width)`` chunk.

    Computed on the host from the known lengths, so that selecting them
    needs no device-to-host synchronization (a boolean mask would).
    """
    counts = np.clip(remaining, 0, width)
    offsets = np.repeat(np.arange(len(counts)) * width - np.cumsum(counts) + counts,
                        counts)
    return torch.as_tensor(offsets + np.arange(int(counts.sum())), device=device)


def _fused_states(module, start, items, weights, n_steps):
    """States before each item of a chunk and the carry, by :func:`chunk_states`."""
    inputs = F.embedding(items, module.item_input)
    return chunk_states(start, inputs, weights, module.cell, module.candidate,
                        n_steps)


def _autograd_states(module, start, items, weights, n_steps):
    """What :func:`_fused_states` computes, step by step through autograd."""
    weights = module.split_recurrent(weights)
    inputs = list(zip(*(terms.unbind(1) for terms in module.input_terms(items))))
    hidden, states = start.unsqueeze(1), []
    for t in range(items.shape[1]):
        states.append(hidden)
        if t < n_steps:
            hidden = module.step(hidden, inputs[t], weights)
    return torch.cat(states, dim=1), hidden.squeeze(1)


class Optimizer:
    """RMSProp or Adam, lazy for the per-user recurrent matrices.

    RMSProp follows TensorFlow's rule (the authors' optimizer)::

        mean_square = rho * mean_square + (1 - rho) * grad ** 2
        param -= learning_rate * grad / sqrt(mean_square + epsilon)

    with ``mean_square`` starting at zero. Adam is ``torch.optim.Adam``'s rule
    (betas 0.9 and 0.999, ``epsilon`` added to the root).

    The per-user recurrent matrices are updated only for the users of the
    chunk, and only their statistics move (as TensorFlow does for embedding
    lookups): a user's statistics do not decay while it waits for its next
    batch, and a step costs nothing for the other users. Every other
    parameter is updated densely.

    Parameters
    ----------
    module : CollaborativeRNN
    name : {"rmsprop", "adam"}
    learning_rate, rho, epsilon : float
    """

    _ADAM_BETAS = (0.9, 0.999)

    def __init__(self, module, name, learning_rate, rho, epsilon):
        self.module = module
        self.name = name
        self.learning_rate = learning_rate
        self.rho = rho
        self.epsilon = epsilon
        self.state = {}
        # scratch space of the dense RMSProp steps (not state: not saved);
        # a fresh tensor per step of the larger parameters costs page faults
        self._denominators = {}
        for param_name, param in module.named_parameters():
            state = {"mean_square": torch.zeros_like(param)}
            if name == "adam":
                state["mean"] = torch.zeros_like(param)
                # a step count per row: the lazy rows each have their own
                state["step"] = torch.zeros(param.shape[0], dtype=param.dtype,
                                            device=param.device)
            self.state[param_name] = state

    def zero_grad(self):
        for param in self.module.parameters():
            param.grad = None

    def state_dict(self):
        """The optimizer's statistics, on the CPU (for a checkpoint).

        Returns
        -------
        dict
            ``{"name": name, "state": {parameter name: {statistic: tensor}}}``;
            the hyperparameters are not included.
        """
        return {"name": self.name,
                "state": {param_name: {key: tensor.detach().to("cpu", copy=True)
                                       for key, tensor in state.items()}
                          for param_name, state in self.state.items()}}

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """Restore statistics written by :meth:`state_dict` (onto any device).

        Raises
        ------
        ValueError
            If they belong to another optimizer or to other parameters.
        """
        if state_dict["name"] != self.name:
            raise ValueError(f"the optimizer state is of {state_dict['name']!r}, "
                             f"not {self.name!r}")
        saved = state_dict["state"]
        if saved.keys() != self.state.keys():
            raise ValueError(f"the optimizer state is for the parameters "
                             f"{sorted(saved)}, not {sorted(self.state)}")
        for param_name, state in self.state.items():
            if saved[param_name].keys() != state.keys():
                raise ValueError(f"the optimizer state of {param_name!r} has "
                                 f"{sorted(saved[param_name])}, not {sorted(state)}")
            for key, tensor in state.items():
                source = saved[param_name][key]
                if source.shape != tensor.shape:
                    raise ValueError(
                        f"the optimizer's {key} of {param_name!r} has shape "
                        f"{tuple(source.shape)}, not {tuple(tensor.shape)}")
                tensor.copy_(source)

    @torch.no_grad()
    def step(self, chunk):
        """Update the parameters from the gradients of ``chunk.loss``."""
        for name, param in self.module.named_parameters():
            rows, grad = None, param.grad
            if name == "recurrent" and not self.module.shared:
                rows, grad = chunk.users, chunk.user_weights.grad
            if grad is not None:  # None: the chunk only predicted from its carry
                self._update(param, self.state[name], rows, grad, name)

    def _update(self, param, state, rows, grad, name):
        """Update ``param`` (or only its ``rows``) from ``grad`` (of those rows)."""
        def read(tensor):
            # index_select / index_copy_: cheaper than advanced indexing, and
            # the rows (a chunk's users) are distinct
            return tensor if rows is None else tensor.index_select(0, rows)

        mean_square = read(state["mean_square"])
        if self.name == "rmsprop":
            mean_square.mul_(self.rho).addcmul_(grad, grad, value=1 - self.rho)
            if rows is None:  # in place, then one fused pass over the parameter
                denominator = self._denominators.get(name)
                if denominator is None:
                    denominator = self._denominators[name] = torch.empty_like(param)
                torch.add(mean_square, self.epsilon, out=denominator).sqrt_()
                param.addcdiv_(grad, denominator, value=-self.learning_rate)
                return
            update = grad / mean_square.add(self.epsilon).sqrt_()
        else:
            beta1, beta2 = self._ADAM_BETAS
            mean = read(state["mean"]).mul_(beta1).add_(grad, alpha=1 - beta1)
            mean_square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = read(state["step"]) + 1
            shape = (-1,) + (1,) * (grad.dim() - 1)
            update = (mean / (1 - beta1 ** step).view(shape)) / (
                (mean_square / (1 - beta2 ** step).view(shape)).sqrt() + self.epsilon)
            if rows is None:
                state["step"].copy_(step)
            else:
                state["step"].index_copy_(0, rows, step)
                state["mean"].index_copy_(0, rows, mean)
        if rows is None:
            param.sub_(update, alpha=self.learning_rate)
        else:
            state["mean_square"].index_copy_(0, rows, mean_square)
            param.index_copy_(0, rows, read(param) - self.learning_rate * update)


@dataclass
class _Progress:
    """How far a run of :func:`train` has gone, apart from the weights.

    Attributes
    ----------
    epoch : int
        Epochs done.
    history : list of dict
        One entry per epoch done.
    best_loss : float
    best_epoch : int or None
    best_weights : dict or None
        A copy of the module's state dict at ``best_epoch``.
    stopped : bool
        Whether early stopping has ended the run.
    """

    epoch: int = 0
    history: list = field(default_factory=list)
    best_loss: float = np.inf
    best_epoch: int = None
    best_weights: dict = None
    stopped: bool = False

    def record(self, entry, module, validated, n_iter_no_change):
        """Account for the epoch of history ``entry``, just trained."""
        self.epoch = entry["epoch"]
        self.history.append(entry)
        if not validated:
            return
        if entry["valid_loss"] < self.best_loss:
            self.best_loss, self.best_epoch = entry["valid_loss"], self.epoch
            self.best_weights = copy.deepcopy(module.state_dict())
        elif self.epoch - (self.best_epoch or 0) >= n_iter_no_change:
            # (a NaN validation loss never improves: it counts as no change)
            self.stopped = True


def train(module, optimizer, batches, *, max_epochs, chunk_size, initial_state,
          validate, n_iter_no_change, rng, verbose=0, checkpoint=None):
    """Epochs of truncated BPTT with early stopping on ``validate()``.

    Parameters
    ----------
    module : CollaborativeRNN
    optimizer : Optimizer
    batches : list of Batch
    max_epochs, chunk_size : int
    initial_state : float
    validate : callable or None
        Returns the validation loss of the current weights; ``None`` disables
        early stopping (the last weights are kept).
    n_iter_no_change : int
        Stop after this many epochs without a lower validation loss.
    rng : numpy.random.Generator
        Shuffles the order of the batches at each epoch.
    verbose : int
        Progress bar and one line per epoch when positive.
    checkpoint : object or None
        Where the run resumes from and records itself: ``checkpoint.load()``
        returns ``None`` (start afresh) or a state that
        ``checkpoint.save(state)`` received, which is called after every
        epoch with a dict of plain values and CPU tensors (weights, optimizer
        statistics, ``rng`` state, history, best epoch and weights). Resuming
        from the state of epoch ``e`` continues exactly as the run that wrote
        it did after epoch ``e``. ``str(checkpoint)`` names it in messages.

    Returns
    -------
    history : list of dict
        Per epoch: ``epoch`` (from 1), ``train_loss``, ``valid_loss`` (NaN
        without validation), ``seconds``, ``events_per_second`` (training
        events over the training time).
    best_epoch : int or None
        The epoch whose weights the module holds on return (None without
        validation).

    Raises
    ------
    ValueError
        If the state of ``checkpoint`` does not fit the module or optimizer,
        or if the training loss of an epoch is not finite.
    """
    progress = _Progress()
    if checkpoint is not None:
        progress = _resume(checkpoint, module, optimizer, rng)
        if progress.epoch and verbose:
            tqdm.write(f"resuming from {checkpoint} after epoch {progress.epoch}")
    n_events = sum(batch.n_events for batch in batches)
    n_chunks = sum(-(-batch.items.shape[1] // chunk_size) for batch in batches)
    while progress.epoch < max_epochs and not progress.stopped:
        epoch = progress.epoch + 1
        started = time.perf_counter()
        with tqdm(total=n_chunks, desc=f"epoch {epoch}", disable=not verbose,
                  leave=False, unit="chunk") as bar:
            order = rng.permutation(len(batches))
            total_nll = _train_epoch(module, optimizer, [batches[i] for i in order],
                                     chunk_size, initial_state, bar)
        train_seconds = time.perf_counter() - started
        train_loss = total_nll / max(n_events, 1)
        if not np.isfinite(train_loss):
            raise ValueError(
                f"Training diverged in epoch {epoch}: the training loss is "
                f"{train_loss}. Lower learning_rate (or try optimizer='adam').")
        valid_loss = float("nan") if validate is None else float(validate())
        seconds = time.perf_counter() - started
        if verbose:
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, valid loss "
                       f"{valid_loss:.4f}, {seconds:.1f} s")
        progress.record({"epoch": epoch, "train_loss": train_loss,
                         "valid_loss": valid_loss, "seconds": seconds,
                         "events_per_second": n_events / max(train_seconds, 1e-12)},
                        module, validate is not None, n_iter_no_change)
        if checkpoint is not None:
            checkpoint.save(_state(progress, module, optimizer, rng))
    if progress.best_weights is not None:
        module.load_state_dict(progress.best_weights)
    elif validate is not None:
        warnings.warn("The validation loss was not finite in any epoch; the "
                      "weights of the last epoch are kept.", RuntimeWarning,
                      stacklevel=2)
    return progress.history, progress.best_epoch


def _train_epoch(module, optimizer, batches, chunk_size, initial_state, bar):
    """One optimizer step per chunk of ``batches``; the summed NLL (float)."""
    device = module.item_input.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        for chunk in chunk_losses(module, batch, chunk_size, initial_state):
            optimizer.zero_grad()
            chunk.loss.backward()
            optimizer.step(chunk)
            total += chunk.nll.double()
            bar.update()
    return float(total)


def _state(progress, module, optimizer, rng):
    """What :func:`train` needs to go on after ``progress.epoch``."""
    return {"epoch": progress.epoch, "stopped": progress.stopped,
            "history": [dict(entry) for entry in progress.history],
            "best_loss": float(progress.best_loss),
            "best_epoch": progress.best_epoch,
            "best_weights": _on_cpu(progress.best_weights),
            "network": _on_cpu(module.state_dict()),
            "optimizer": optimizer.state_dict(),
            # taken between epochs, after this epoch's permutation: a resumed
            # run draws the next epoch's permutation from here
            "rng": rng.bit_generator.state}


def _resume(checkpoint, module, optimizer, rng):
    """Load ``checkpoint`` into the module, optimizer and ``rng``.

    Returns the :class:`_Progress` it records, a fresh one without state.
    """
    state = checkpoint.load()
    if state is None:
        return _Progress()
    try:
        progress = _Progress(
            epoch=int(state["epoch"]),
            history=[dict(entry) for entry in state["history"]],
            best_loss=float(state["best_loss"]), best_epoch=state["best_epoch"],
            best_weights=state["best_weights"], stopped=bool(state["stopped"]))
        if len(progress.history) != progress.epoch:
            raise ValueError(f"{len(progress.history)} epochs of history for "
                             f"{progress.epoch} epochs done")
        module.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"Cannot resume from {checkpoint}: its training state is "
                         f"damaged ({type(error).__name__}: {error}). Delete it "
                         f"to start afresh.") from error
    return progress


def _on_cpu(state_dict):
    if state_dict is None:
        return None
    return {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
