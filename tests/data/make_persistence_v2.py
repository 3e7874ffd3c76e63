"""Write the format-version-2 files that test_persistence_formats.py loads.

These files were written by skcrnn at commit cdb4459, the last version that
saved models with ``torch.save`` (format version 2), with::

    git archive cdb4459 | tar -x -C /tmp/skcrnn_v2
    PYTHONPATH=/tmp/skcrnn_v2 python tests/data/make_persistence_v2.py

The expected scores are written with them. Run it again only to write such
files with that old version: today's skcrnn writes format version 3.
"""

from pathlib import Path

import numpy as np
import pandas as pd

import skcrnn
from skcrnn import BigramRecommender, CollaborativeGRURecommender

HERE = Path(__file__).resolve().parent


def events():
    """40 events of 4 users over 5 items, written out so that they never change."""
    users = ["ann", "bob", "cy", "dee"]
    rows = [(users[i % 4], "abcde"[(3 * i + i // 4) % 5], i) for i in range(40)]
    frame = pd.DataFrame(rows, columns=["user", "item", "minute"])
    frame["timestamp"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        frame.pop("minute"), unit="min")
    return frame


def main():
    frame = events()
    models = {
        "bigram": BigramRecommender(alpha=2.0),
        "cgru": CollaborativeGRURecommender(hidden_size=3, max_epochs=2,
                                            batch_size=2, chunk_size=4,
                                            device="cpu", random_state=0),
    }
    for name, model in models.items():
        model.fit(frame)
        model.save(HERE / f"persistence_v2_{name}.pt")
        np.save(HERE / f"persistence_v2_{name}_scores.npy",
                model.score_samples(frame), allow_pickle=False)
    print("written with skcrnn from", Path(skcrnn.__file__).parent)


if __name__ == "__main__":
    main()
