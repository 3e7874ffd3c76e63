"""The one validation of the torch models: held-out events and the per-user mean NLL."""

import numpy as np
import pytest

from skcrnn._events import Sequences
from skcrnn._torch.validation import HeldOut, Validation


class Given(Validation):
    """A validation whose log-probabilities are given (per held-out event)."""

    def __init__(self, sequences, n_train, values):
        super().__init__(sequences, n_train)
        self.values = values

    def log_proba(self):
        return self.values(self.held_out)


def sequences():
    # users 0..3 with 4, 1, 0 and 5 events
    lengths = np.array([4, 1, 0, 5])
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return Sequences(np.arange(4), indptr, np.arange(indptr[-1]) % 3)


def test_held_out_events_are_those_after_each_users_training_part():
    seq = sequences()
    held_out = HeldOut.of(seq, np.array([2, 1, 0, 4]))
    np.testing.assert_array_equal(held_out.index, [2, 3, 9])
    np.testing.assert_array_equal(held_out.groups, [0, 0, 3])
    np.testing.assert_array_equal(held_out.positions, [2, 3, 4])
    np.testing.assert_array_equal(held_out.targets, seq.items[[2, 3, 9]])
    # the prefix that predicts each event: its group's first `position` items
    np.testing.assert_array_equal(held_out.prefixes,
                                  seq.prefix_start[held_out.groups] + held_out.positions)


def test_loss_is_the_mean_over_users_of_their_mean_nll():
    seq = sequences()
    validation = Given(seq, np.array([1, 0, 0, 3]),
                       lambda held: -np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0]))
    # user 0: 1, 2, 3; user 1: 4; user 3: 10, 20 (user 2 has none)
    assert validation() == pytest.approx(np.mean([2.0, 4.0, 15.0]), rel=1e-15)


def test_a_nan_log_probability_makes_the_loss_nan():
    seq = sequences()
    validation = Given(seq, np.array([1, 0, 0, 3]),
                       lambda held: np.array([-1.0, np.nan, -3.0, -4.0, -1.0, -2.0]))
    assert np.isnan(validation())
    assert np.isnan(Given(seq, seq.lengths, lambda held: np.zeros(0))())
