"""Optimizers with lazy rows, for parameters that only some rows of a step touch.

A network declares in ``row_indexed`` which of its parameters are indexed by
user or by item along their first dimension (``{"recurrent": "user"}``). A
training step that reads only some rows of such a parameter reads them
through :class:`Rows`, which gives it a leaf copy of those rows: after
``loss.backward()`` the copy's ``.grad`` holds their gradient, and
:meth:`Optimizer.step` updates those rows alone (their statistics alone
move, as TensorFlow does for embedding lookups): a user's statistics do not
decay while it waits for its next batch, and a step costs nothing for the
other users. Every other parameter is updated densely.

When the vocabularies grow (``partial_fit``), :func:`grown_state_dict` gives
the statistics of the grown network: those of the known rows, zeros for the
new ones (a new row starts as a row never stepped does).
"""

import torch


def user_parameters(module):
    """Names of the parameters that ``module`` indexes by user (``row_indexed``)."""
    return [name for name, kind in getattr(module, "row_indexed", {}).items()
            if kind == "user"]


class Rows:
    """The rows a step reads of row-indexed parameters, as leaves of its graph."""

    def __init__(self):
        self.touched = {}

    def read(self, name, parameter, rows):
        """A leaf copy of ``parameter[rows]`` (distinct rows) whose gradient is kept."""
        leaf = parameter.detach().index_select(0, rows).requires_grad_()
        self.touched[name] = (rows, leaf)
        return leaf


class Optimizer:
    """RMSProp or Adam, lazy for the rows a step reads through :class:`Rows`.

    RMSProp follows TensorFlow's rule (the authors' optimizer)::

        mean_square = rho * mean_square + (1 - rho) * grad ** 2
        param -= learning_rate * grad / sqrt(mean_square + epsilon)

    with ``mean_square`` starting at zero. Adam is ``torch.optim.Adam``'s rule
    (betas 0.9 and 0.999, ``epsilon`` added to the root).

    Rows read through :class:`Rows` are updated lazily (see the module's
    docstring); every other parameter densely.

    Parameters
    ----------
    module : torch.nn.Module
    name : {"rmsprop", "adam"}
    learning_rate, rho, epsilon : float
    """

    _ADAM_BETAS = (0.9, 0.999)

    def __init__(self, module, name, learning_rate, rho, epsilon):
        self.module = module
        self.row_indexed = dict(getattr(module, "row_indexed", {}))
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
    def step(self, touched=None):
        """Update the parameters from their gradients.

        Parameters
        ----------
        touched : dict, optional
            ``Rows.touched`` of the step: parameter name -> ``(rows, leaf)``;
            those rows are updated from the leaf's gradient, alone.
        """
        touched = touched or {}
        undeclared = set(touched) - set(self.row_indexed)
        if undeclared:
            raise ValueError(f"The step read rows of {sorted(undeclared)}, which "
                             f"the network does not declare row-indexed.")
        for name, param in self.module.named_parameters():
            rows, grad = None, param.grad
            if name in touched:
                rows, leaf = touched[name]
                grad = leaf.grad
            if grad is not None:  # None: the step did not depend on it
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


def grown_state_dict(state_dict, module):
    """Statistics of :meth:`Optimizer.state_dict` for ``module`` grown along its rows.

    The statistics of a parameter that ``module.row_indexed`` declares get
    zero rows appended up to the parameter's rows in ``module`` (the new
    users or items); the others are kept as they are (shapes are checked
    when the result is loaded).

    Parameters
    ----------
    state_dict : dict
        Of :meth:`Optimizer.state_dict`, for the module before it grew.
    module : torch.nn.Module
        The grown module.

    Returns
    -------
    dict
        A new state dict; ``state_dict``'s tensors are not changed.
    """
    row_indexed = getattr(module, "row_indexed", {})
    parameters = dict(module.named_parameters())
    state = {}
    for param_name, statistics in state_dict["state"].items():
        rows = (parameters[param_name].shape[0]
                if param_name in row_indexed and param_name in parameters else None)
        state[param_name] = {key: _zero_padded(tensor, rows)
                             for key, tensor in statistics.items()}
    return {"name": state_dict["name"], "state": state}


def _zero_padded(tensor, rows):
    """``tensor`` with zero rows appended up to ``rows`` (None: none appended)."""
    if rows is None or tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0],)
                                               + tuple(tensor.shape[1:]))])
