"""
Quick start: fit, score and recommend
=====================================

Generate activity logs from a collaborative recurrent process, hold out the
end of each user's sequence, and compare a bigram baseline with the
collaborative GRU on the paper's metric (mean over users of the mean negative
log-likelihood of their held-out events, in nats; lower is better).
"""

from skcrnn import BigramRecommender, CollaborativeGRURecommender
from skcrnn.datasets import make_sequences
from skcrnn.metrics import recall_at_k, sequence_nll
from skcrnn.model_selection import suffix_split

events = make_sequences(n_users=30, n_items=50, n_events=4000, random_state=0)
print(events.head())

# %%
# The last 10 % of each user's events are held out.
train, test = suffix_split(events, test_size=0.1)
print(f"{len(train)} training events, {len(test)} held-out events")

# %%
# Fit two models and compare them.
bigram = BigramRecommender(alpha=10).fit(train)
cgru = CollaborativeGRURecommender(hidden_size=16, learning_rate=0.01, max_epochs=8,
                                   random_state=0).fit(train)
for name, model in [("bigram", bigram), ("C-GRU", cgru)]:
    print(f"{name:>7}: error {sequence_nll(model, test):.3f} nats, "
          f"recall@10 {recall_at_k(model, test, k=10):.3f}")

# %%
# ``score_samples`` gives the log-probability of every held-out event, given
# everything the user did before it, and ``recommend`` the most probable next
# items after each user's history.
print(cgru.score_samples(test)[:5])
print(cgru.recommend(train["user"].unique()[:2], k=3))
