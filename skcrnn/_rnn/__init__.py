"""The collaborative recurrent models, and only them.

- :mod:`.cells`: each recurrent cell's step (GRU, tanh) and its derivative,
  written once;
- :mod:`.network`: the network's parameters, with per-user or shared
  recurrent weights (the collaborative parameterisation);
- :mod:`.recurrence`: the loops that run a cell over time (training with
  hand-written BPTT, the autograd reference, scoring);
- :mod:`.tbptt`: a batch's chunks of truncated back-propagation through time,
  as training steps;
- :mod:`.copy`: the copy gate (``copy_history``): the decayed history it
  reads, the gate and the mixture's exact log-probability;
- :mod:`.estimator`: :class:`CollaborativeGRURecommender`, parameters to
  network and batches; the rest is :mod:`skcrnn._torch`'s.
"""

from .estimator import CollaborativeGRURecommender

__all__ = ["CollaborativeGRURecommender"]
