"""recommend's top-k selection against a stable sort of every whole row."""

import numpy as np
import pytest

from skcrnn._base import _top_k


@pytest.mark.parametrize("seed", range(5))
def test_top_k_equals_the_head_of_a_stable_sort(seed):
    """Ties (rounded values, excluded -inf items) break by the smaller index."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        n_rows, n_items = rng.integers(1, 8), rng.integers(1, 12)
        log_proba = np.round(rng.normal(size=(n_rows, n_items)), rng.integers(0, 2))
        if rng.random() < 0.3:
            log_proba[rng.random((n_rows, n_items)) < 0.3] = -np.inf
        k = int(rng.integers(1, n_items + 1))
        top, values = _top_k(log_proba, k)
        expected = np.argsort(-log_proba, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top, expected)
        np.testing.assert_array_equal(values, np.take_along_axis(log_proba, expected, 1))
