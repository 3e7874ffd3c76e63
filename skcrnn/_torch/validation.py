"""The held-out events of a fit and their validation loss, one for all torch models.

``fit`` holds out each user's last events (:func:`.batching.validation_sizes`):
those after the first ``n_train`` of each group of a
:class:`~skcrnn._events.Sequences`. After each epoch the training loop calls
a :class:`Validation`, whose loss is the mean over users of the mean negative
log-likelihood of their held-out events under the network's current weights
(:func:`skcrnn._events.mean_of_group_means`, the paper's error), so that
early stopping compares what the error measures.

A model supplies one thing, a subclass whose :meth:`Validation.log_proba`
returns the held-out events' log-probabilities (in the precision it
chooses); it reads the events from :attr:`Validation.held_out`.
"""

from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np

from .._events import mean_of_group_means


class HeldOut(NamedTuple):
    """The held-out events of a :class:`~skcrnn._events.Sequences`, in event order.

    Attributes
    ----------
    index : ndarray of int64
        Each event's index in ``sequences.items``.
    groups : ndarray of int64
        Its group.
    positions : ndarray of int64
        Its position in the group: the length of the prefix that predicts it.
    targets : ndarray of int64
        Its item.
    """

    index: np.ndarray
    groups: np.ndarray
    positions: np.ndarray
    targets: np.ndarray

    @classmethod
    def of(cls, sequences, n_train):
        """The events after the first ``n_train[g]`` of each group ``g``."""
        position = sequences.position_of_event
        group = sequences.group_of_event
        index = np.flatnonzero(position >= n_train[group])
        return cls(index, group[index], position[index], sequences.items[index])

    @property
    def prefixes(self):
        """The prefix id that predicts each event (see ``Sequences.prefix_start``)."""
        return self.index + self.groups


class Validation(ABC):
    """The validation loss of a network's current weights, as a callable for ``train``.

    Parameters
    ----------
    sequences : Sequences
        Each user's events: a training part, then the held-out events.
    n_train : ndarray of int
        The length of each group's training part.

    Attributes
    ----------
    sequences : Sequences
    held_out : HeldOut
    """

    def __init__(self, sequences, n_train):
        self.sequences = sequences
        self.held_out = HeldOut.of(sequences, np.asarray(n_train))

    @abstractmethod
    def log_proba(self):
        """The log-probability of each of :attr:`held_out`'s events (ndarray of float)."""

    def __call__(self):
        """The mean over users of the mean negative log-likelihood of their held-out events.

        NaN if any event's is (diverged weights): such a loss is never the
        best.
        """
        nll = -np.asarray(self.log_proba(), dtype=np.float64)
        if not len(nll) or np.isnan(nll).any():
            return float("nan")
        return mean_of_group_means(nll, self.held_out.groups)
