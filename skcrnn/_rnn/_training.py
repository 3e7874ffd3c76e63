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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._batching import length_sorted_batches, pad


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


def chunk_losses(module, batch, chunk_size, initial_state):
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
    """
    dtype = module.item_input.dtype
    device = batch.items.device
    hidden = torch.full((len(batch.lengths), 1, module.hidden_size), initial_state,
                        dtype=dtype, device=device)
    n_columns = batch.items.shape[1]
    descending = -batch.lengths
    for start in range(0, n_columns, chunk_size):
        stop = min(start + chunk_size, n_columns)
        active = int(np.searchsorted(descending, -start, side="left"))
        users = batch.users[:active]
        items = batch.items[:active, start:stop]
        remaining = torch.as_tensor(batch.lengths[:active] - start, device=device)
        real = torch.arange(stop - start, device=device)[None, :] < remaining[:, None]
        if module.shared:
            user_weights = None
            weights = module.recurrent_for(users)
        else:
            user_weights = module.recurrent.detach()[users].requires_grad_()
            weights = module.split_recurrent(user_weights)
        inputs = list(zip(*(terms.unbind(1) for terms in module.input_terms(items))))
        hidden = hidden[:active].detach()
        states = []
        # the last step of the last chunk would only feed a carry nobody reads
        n_steps = stop - start if stop < n_columns else stop - start - 1
        for t in range(stop - start):
            states.append(hidden)
            if t < n_steps:
                hidden = module.step(hidden, inputs[t], weights)
        states = torch.cat(states, dim=1)[real]
        nll = F.cross_entropy(module.logits(states), items[real], reduction="sum")
        loss = nll / (len(batch.lengths) * chunk_size)
        yield Chunk(loss, nll.detach(), int(real.sum()), users, user_weights)



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

    @torch.no_grad()
    def step(self, chunk):
        """Update the parameters from the gradients of ``chunk.loss``."""
        for name, param in self.module.named_parameters():
            rows, grad = None, param.grad
            if name == "recurrent" and not self.module.shared:
                rows, grad = chunk.users, chunk.user_weights.grad
            if grad is not None:  # None: the chunk only predicted from its carry
                self._update(param, self.state[name], rows, grad)

    def _update(self, param, state, rows, grad):
        """Update ``param`` (or only its ``rows``) from ``grad`` (of those rows)."""
        def read(tensor):
            return tensor if rows is None else tensor[rows]

        mean_square = read(state["mean_square"])
        if self.name == "rmsprop":
            mean_square.mul_(self.rho).addcmul_(grad, grad, value=1 - self.rho)
            update = grad / (mean_square + self.epsilon).sqrt()
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
                state["step"][rows] = step
                state["mean"][rows] = mean
        if rows is None:
            param.sub_(update, alpha=self.learning_rate)
        else:
            state["mean_square"][rows] = mean_square
            param[rows] = param[rows] - self.learning_rate * update


def train(module, optimizer, batches, *, max_epochs, chunk_size, initial_state,
          validate, n_iter_no_change, rng, verbose=0):
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

    Returns
    -------
    history : list of dict
        Per epoch: ``epoch`` (from 1), ``train_loss``, ``valid_loss`` (NaN
        without validation), ``seconds``, ``events_per_second`` (training
        events over the training time).
    best_epoch : int or None
        The epoch whose weights the module holds on return (None without
        validation).
    """
    history = []
    best_loss, best_epoch, best_weights = np.inf, None, None
    n_events = sum(batch.n_events for batch in batches)
    n_chunks = sum(-(-batch.items.shape[1] // chunk_size) for batch in batches)
    device = module.item_input.device
    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=device)
        with tqdm(total=n_chunks, desc=f"epoch {epoch}", disable=not verbose,
                  leave=False, unit="chunk") as progress:
            for index in rng.permutation(len(batches)):
                for chunk in chunk_losses(module, batches[index], chunk_size,
                                          initial_state):
                    optimizer.zero_grad()
                    chunk.loss.backward()
                    optimizer.step(chunk)
                    total += chunk.nll.double()
                    progress.update()
        train_seconds = time.perf_counter() - started
        train_loss = float(total) / max(n_events, 1)
        valid_loss = float("nan") if validate is None else float(validate())
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "train_loss": train_loss,
                        "valid_loss": valid_loss, "seconds": seconds,
                        "events_per_second": n_events / max(train_seconds, 1e-12)})
        if verbose:
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, valid loss "
                       f"{valid_loss:.4f}, {seconds:.1f} s")
        if validate is None:
            continue
        if valid_loss < best_loss:
            best_loss, best_epoch = valid_loss, epoch
            best_weights = copy.deepcopy(module.state_dict())
        elif epoch - best_epoch >= n_iter_no_change:
            break
    if best_weights is not None:
        module.load_state_dict(best_weights)
    return history, best_epoch
