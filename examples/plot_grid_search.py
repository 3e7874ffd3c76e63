"""
Tuning ``hidden_size`` and ``learning_rate`` with GridSearchCV
==============================================================

:class:`~skcrnn.model_selection.UserSuffixSplit` is a cross-validation
splitter over time: each split trains on every user's events before a cut and
tests on the block right after it. ``GridSearchCV`` maximizes ``score``,
which is minus the paper's error.
"""

import pandas as pd
from sklearn.model_selection import GridSearchCV

from skcrnn import CollaborativeGRURecommender
from skcrnn.datasets import make_sequences
from skcrnn.model_selection import UserSuffixSplit

events = make_sequences(n_users=20, n_items=30, n_events=1600, random_state=1)

search = GridSearchCV(
    CollaborativeGRURecommender(max_epochs=4, random_state=0),
    {"hidden_size": [8, 16], "learning_rate": [0.003, 0.01]},
    cv=UserSuffixSplit(n_splits=2, test_size=0.1),
)
search.fit(events)
results = pd.DataFrame(search.cv_results_)
print(results[["param_hidden_size", "param_learning_rate", "mean_test_score"]])
print("best:", search.best_params_)
