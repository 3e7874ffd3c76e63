"""What every torch-backed recommender shares; nothing here knows a recurrent cell.

- :mod:`.estimator`: :class:`TorchRecommender`, the base class (device,
  seeds, threads, the fit path with early stopping and refit, checkpoints,
  save/load/pickle of the network);
- :mod:`.loop`: the training loop (epochs, divergence check, early
  stopping, resuming);
- :mod:`.validation`: the held-out events and their validation loss (the
  per-user mean), one for all models, each supplying the events'
  log-probabilities;
- :mod:`.optim`: RMSProp and Adam with lazy updates of the rows a step reads;
- :mod:`.output`: the softmax output layer, for training (blocked
  cross-entropy with a hand-written backward) and for exact scoring, with
  an optional per-row adjustment that a model supplies;
- :mod:`.batching`: windows, padding and length-sorted batches of sequences;
- :mod:`.checkpoint`: the checkpoint file of a fit, and the fit's
  fingerprint;
- :mod:`.cluster`: the processes of a run (one process is a cluster of
  one), the users each trains, the collectives they meet at;
- :mod:`.launch`: :func:`~skcrnn.fit_distributed`, which starts a
  ``torchrun`` process group and fits on it (above the estimator);
- :mod:`.runtime`: device resolution, the CPU thread policy, seeds.
"""

from .estimator import TorchRecommender

__all__ = ["TorchRecommender"]
