"""
Saving, loading and recommending
================================

``save`` writes parameters, vocabularies and tensors to one file (a zip of
JSON and arrays, read back without pickle), replacing an existing file
atomically; ``load`` maps a model trained on a GPU onto the CPU (or any
device you name).
"""

import tempfile
from pathlib import Path

import numpy as np

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import suffix_split

events = make_sequences(n_users=20, n_items=30, n_events=2000, random_state=4)
train, test = suffix_split(events, test_size=0.1)
model = CollaborativeGRURecommender(hidden_size=8, max_epochs=5,
                                    random_state=0).fit(train)

path = Path(tempfile.mkdtemp()) / "cgru.pt"
model.save(path)
restored = CollaborativeGRURecommender.load(path, device="cpu")
assert np.array_equal(restored.score_samples(test), model.score_samples(test))
print(f"saved to {path.name} ({path.stat().st_size / 1024:.0f} KiB); "
      f"identical scores after loading")

# %%
# Recommend the next items of two users, leaving out what they have seen.
print(restored.recommend(train["user"].unique()[:2], k=5, exclude_seen=True))
