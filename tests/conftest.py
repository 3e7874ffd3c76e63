"""Shared fixtures: small event frames built here, independent of the package."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def random_events(n_users=6, n_items=8, n_events=120, seed=0, str_items=True,
                  ties=True):
    """Events with string items, datetime times (with ties) and shuffled rows."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    items = rng.integers(0, n_items, n_events)
    seconds = rng.integers(0, n_events // 3 if ties else 10 ** 9, n_events)
    frame = pd.DataFrame({
        "user": users + 100,
        "item": [f"i{v}" for v in items] if str_items else items,
        "timestamp": pd.Timestamp("2021-01-01") + pd.to_timedelta(seconds, unit="s"),
    })
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture
def events():
    return random_events()


@pytest.fixture
def train_test(events):
    from skcrnn.model_selection import suffix_split
    return suffix_split(events, test_size=0.2, min_test=2, max_test=50)


#: Settings of a recurrent model small enough for unit tests.
TINY_RNN = dict(hidden_size=4, max_epochs=2, batch_size=4, chunk_size=5,
                device="cpu", random_state=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: a second torch thread only adds contention.

    Module-scoped, so that module-scoped fits run on one thread too.
    """
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_split():
    """A small train/test split of :func:`random_events` without tied times."""
    from skcrnn.model_selection import suffix_split
    return suffix_split(random_events(n_users=6, n_events=150, ties=False, seed=3),
                        0.2, 2, 50)
