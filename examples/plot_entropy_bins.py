"""
Error by user entropy
=====================

The paper characterizes errors by splitting users into three bins by the
Shannon entropy of their items: predictable users (low entropy) and
explorers (high entropy). This example fits three models and plots their
held-out error per bin.
"""

import matplotlib.pyplot as plt
import pandas as pd

from skcrnn import (BigramRecommender, CollaborativeGRURecommender,
                    UnigramRecommender)
from skcrnn.datasets import make_sequences
from skcrnn.metrics import entropy_bins
from skcrnn.model_selection import suffix_split

events = make_sequences(n_users=30, n_items=50, n_events=4000, memory=0.3,
                        random_state=3)
train, test = suffix_split(events, test_size=0.1)
bins = entropy_bins(train, n_bins=3)

errors = {}
for name, model in [
        ("unigram", UnigramRecommender()),
        ("bigram", BigramRecommender(alpha=10)),
        ("C-GRU", CollaborativeGRURecommender(hidden_size=16, learning_rate=0.01,
                                              max_epochs=8, random_state=0))]:
    model.fit(train)
    per_row = pd.Series(-model.score_samples(test), index=test.index)
    per_user = per_row.groupby(test["user"]).mean()
    errors[name] = per_user.groupby(bins.reindex(per_user.index)).mean()

table = pd.DataFrame(errors)
print(table)
ax = table.plot.bar(rot=0)
ax.set_xlabel("entropy bin (0 = most predictable users)")
ax.set_ylabel("held-out error (nats)")
plt.tight_layout()
