"""The training loop of every torch recommender: epochs, early stopping, resuming.

:func:`train` runs epochs over a model's training batches. Each batch yields
one or more :class:`Step` s (the recurrent models: one per chunk of truncated
back-propagation through time); each step is one ``backward`` and one
optimizer step. After each epoch the loop checks that training has not
diverged, asks the validation callable for the validation loss, keeps the
best epoch's weights for early stopping, and records a checkpoint from
which a killed run resumes exactly.
"""

import copy
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .cluster import Cluster


@dataclass
class Step:
    """The loss of one optimizer step, ready for ``loss.backward()``.

    Attributes
    ----------
    loss : Tensor
        The training objective of the step.
    nll : Tensor
        Summed negative log-likelihood of the step's events (for the
        epoch's training loss).
    n_events : int
        How many events.
    touched : dict
        ``Rows.touched`` (see :mod:`.optim`): the rows of row-indexed
        parameters the step read, updated lazily.
    """

    loss: torch.Tensor
    nll: torch.Tensor
    n_events: int
    touched: dict = field(default_factory=dict)


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


def train(module, optimizer, batches, steps, *, max_epochs, validate,
          n_iter_no_change, rng, n_steps=None, max_loss=np.inf, verbose=0,
          checkpoint=None, cluster=Cluster(), start_loss=None):
    """Epochs over ``batches`` with early stopping on ``validate()``.

    Parameters
    ----------
    module : torch.nn.Module
    optimizer : Optimizer
    batches : list or callable
        The training batches; each epoch visits them in a new order. Or a
        callable ``batches(rng)`` that returns each epoch's batches, in the
        order to visit them, drawn with ``rng`` (a model that regroups its
        training rows into new batches at every epoch, or draws per-batch
        seeds, such as dropout's); drawn from the loop's generator, they are
        resumed exactly from a checkpoint. Either way each batch has an
        ``n_events`` attribute, the events its steps train on.
    steps : callable
        ``steps(batch)`` yields the batch's :class:`Step` s, lazily: a step
        is taken before the next one is computed.
    max_epochs : int
    validate : callable or None
        Returns the validation loss of the current weights; ``None`` disables
        early stopping (the last weights are kept).
    n_iter_no_change : int
        Stop after this many epochs without a lower validation loss.
    rng : numpy.random.Generator
        Shuffles the order of the batches at each epoch.
    n_steps : int, optional
        Steps per epoch, for the progress bar.
    max_loss : float, default=inf
        A training loss above this means that training diverged (a loss can
        explode and stay finite).
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
    cluster : Cluster, default=Cluster()
        The processes of the run (:mod:`.cluster`), by default this one
        alone. With several ranks, ``batches`` are this rank's parts of the
        global batches, in the same order on every rank; after each step the
        gradients of the parameters that ``module`` does not index by user
        are summed over the ranks, and the epoch's training loss is that of
        all ranks' events.
    start_loss : float, optional
        The validation loss of the module's weights before the first epoch
        (``partial_fit``): an epoch must beat it to be the best, and if none
        does, the starting weights are restored (``best_epoch`` is then 0).
        By default the first validated epoch is the first best.

    Returns
    -------
    history : list of dict
        Per epoch: ``epoch`` (from 1), ``train_loss`` (mean negative
        log-likelihood of the epoch's training events), ``valid_loss`` (NaN
        without validation), ``seconds``, ``events_per_second`` (training
        events over the training time).
    best_epoch : int or None
        The epoch whose weights the module holds on return (None without
        validation; 0 for the starting weights, with ``start_loss``).

    Raises
    ------
    ValueError
        If the state of ``checkpoint`` does not fit the module or optimizer,
        or if training diverged: the training loss of an epoch is not finite
        or above ``max_loss``, or a parameter after it is not finite.
    """
    progress = _Progress()
    if start_loss is not None and validate is not None and np.isfinite(start_loss):
        progress = _Progress(best_loss=float(start_loss), best_epoch=0,
                             best_weights=copy.deepcopy(module.state_dict()))
    reduce = cluster.step_reducer(module)
    if checkpoint is not None:
        progress = _resume(checkpoint, module, optimizer, rng)
        if progress.epoch and verbose:
            tqdm.write(f"resuming from {checkpoint} after epoch {progress.epoch}")
    if not callable(batches):
        n_events = sum(batch.n_events for batch in batches)
    while progress.epoch < max_epochs and not progress.stopped:
        epoch = progress.epoch + 1
        started = time.perf_counter()
        with tqdm(total=n_steps, desc=f"epoch {epoch}", disable=not verbose,
                  leave=False, unit="step") as bar:
            if callable(batches):
                epoch_batches = batches(rng)
                n_events = sum(batch.n_events for batch in epoch_batches)
            else:
                order = rng.permutation(len(batches))
                epoch_batches = [batches[i] for i in order]
            total_nll, epoch_events = (float(value) for value in cluster.sum(
                [_train_epoch(module, optimizer, epoch_batches, steps, bar, reduce),
                 n_events]))
        train_seconds = time.perf_counter() - started
        train_loss = total_nll / max(epoch_events, 1)
        _check_divergence(module, train_loss, epoch, max_loss)
        valid_loss = float("nan") if validate is None else float(validate())
        seconds = time.perf_counter() - started
        if verbose:
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, valid loss "
                       f"{valid_loss:.4f}, {seconds:.1f} s")
        progress.record({"epoch": epoch, "train_loss": train_loss,
                         "valid_loss": valid_loss, "seconds": seconds,
                         "events_per_second": epoch_events / max(train_seconds,
                                                                 1e-12)},
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


def _train_epoch(module, optimizer, batches, steps, bar, reduce):
    """One optimizer step per :class:`Step` of ``batches``; this process's summed NLL.

    After each step, ``reduce(touched, took_step)`` (of
    :meth:`~.cluster.Cluster.step_reducer`) sums the gradients of the
    replicated parameters over the ranks and says whether any rank took a
    step; all of them then step. A rank with no step left in a batch (or no
    rows in it) adds zeros until no rank has one. In a cluster of one,
    ``reduce`` only says whether this process took a step.
    """
    total = None
    for batch in batches:
        local = iter(steps(batch))
        while True:
            step = next(local, None)
            optimizer.zero_grad()
            touched = {}
            if step is not None:
                step.loss.backward()
                touched = dict(step.touched)
            if not reduce(touched, step is not None):
                break
            optimizer.step(touched)
            if step is not None:
                nll = step.nll.detach().double()
                total = nll if total is None else total + nll
            bar.update()
    return 0.0 if total is None else float(total)


def _check_divergence(module, train_loss, epoch, max_loss):
    """Raise the divergence error if the loss or a parameter has blown up."""
    broken = [name for name, param in module.named_parameters()
              if not bool(torch.isfinite(param).all())]
    if np.isfinite(train_loss) and train_loss <= max_loss and not broken:
        return
    if broken:
        what = f"the parameter(s) {broken} are not finite"
    elif np.isfinite(train_loss):
        what = (f"the training loss is {train_loss:.4g} nats, above the "
                f"{max_loss:.4g} that means divergence")
    else:
        what = f"the training loss is {train_loss}"
    raise ValueError(f"Training diverged in epoch {epoch}: {what}. Lower "
                     f"learning_rate (or try optimizer='adam').")


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
