"""
Sharing strength between users: tuning the deviation penalty with GridSearchCV
==============================================================================

Per-user recurrent matrices (C-GRU) let each user have its own dynamics, but
they are many parameters for a user with little data: larger hidden states
overfit. ``deviation_penalty`` writes each user's matrices as shared ones
plus a deviation and shrinks the deviations toward zero: ``0`` is the
paper's C-GRU, a huge value is P-GRU (one set for everybody), and values in
between share strength between users. ``dropout`` regularises the inputs and
the states that feed the output layer.

The search below runs on the training events only:
:class:`~skcrnn.model_selection.UserSuffixSplit` cuts each user's sequence
in time, trains on the past and scores the block that follows (``score`` is
minus the paper's error). The test suffix is kept for the end.
"""

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.model_selection import GridSearchCV

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import UserSuffixSplit, suffix_split

events = make_sequences(n_users=30, n_items=40, n_events=2400, random_state=3)
train, test = suffix_split(events, test_size=0.1, min_test=2, max_test=10)

search = GridSearchCV(
    CollaborativeGRURecommender(learning_rate=0.02, max_epochs=6, random_state=0),
    {"hidden_size": [8, 24], "deviation_penalty": [0.0, 0.01, 1.0],
     "dropout": [0.0, 0.2]},
    cv=UserSuffixSplit(n_splits=2, test_size=0.1),
)
search.fit(train)
results = pd.DataFrame(search.cv_results_)
columns = ["param_hidden_size", "param_deviation_penalty", "param_dropout",
           "mean_test_score"]
print(results[columns].sort_values("mean_test_score", ascending=False).to_string())
print("best:", search.best_params_)
print(f"held-out error of the refitted best model: {-search.score(test):.3f}")

# %%
# The validation error against the penalty, for each hidden size (without
# dropout): without a penalty the larger network is the worst of all, and it
# gains the most from sharing.
fig, ax = plt.subplots(figsize=(5, 3.2))
no_dropout = results[results["param_dropout"] == 0.0]
for hidden, rows in no_dropout.groupby("param_hidden_size"):
    penalty = rows["param_deviation_penalty"].astype(float).to_numpy()
    ax.plot(penalty + 1e-3, -rows["mean_test_score"], marker="o",
            label=f"hidden_size={hidden}")
ax.set_xscale("log")
ax.set_xlabel("deviation_penalty (+0.001, log scale)")
ax.set_ylabel("validation error (nats)")
ax.legend()
fig.tight_layout()
plt.show()
