"""Every estimator of the package, with settings small enough for tests.

New estimators are added here so that the contract suite covers them.
"""

from skcrnn import (BigramRecommender, CollaborativeGRURecommender,
                    HMMRecommender, MatrixFactorizationRecommender,
                    PersonalUnigramRecommender, SelfAttentionRecommender,
                    UniformRecommender, UnigramRecommender)

ALL_ESTIMATORS = [
    UniformRecommender(),
    UnigramRecommender(alpha=0.5),
    PersonalUnigramRecommender(beta=2.0),
    BigramRecommender(alpha=3.0),
    CollaborativeGRURecommender(hidden_size=4, max_epochs=2, batch_size=4,
                                chunk_size=5, random_state=0),
    CollaborativeGRURecommender(hidden_size=4, cell="tanh", max_epochs=2,
                                batch_size=4, chunk_size=5, random_state=0),
    CollaborativeGRURecommender(hidden_size=4, recurrent_weights="shared",
                                max_epochs=2, batch_size=4, chunk_size=5,
                                random_state=0),
    CollaborativeGRURecommender(hidden_size=4, copy_history=True, copy_decay=0.8,
                                max_epochs=2, batch_size=4, chunk_size=5,
                                random_state=0),
    CollaborativeGRURecommender(hidden_size=4, recurrent_weights="low_rank", rank=2,
                                max_epochs=2, batch_size=4, chunk_size=5,
                                random_state=0),
    CollaborativeGRURecommender(hidden_size=4, recurrent_weights="basis", rank=3,
                                max_epochs=2, batch_size=4, chunk_size=5,
                                random_state=0),
    CollaborativeGRURecommender(hidden_size=4, deviation_penalty=0.5, dropout=0.2,
                                max_epochs=2, batch_size=4, chunk_size=5,
                                random_state=0),
    CollaborativeGRURecommender(hidden_size=4, recurrent_weights="low_rank",
                                loss="sampled", max_epochs=2, batch_size=4,
                                chunk_size=5, random_state=0),
    MatrixFactorizationRecommender(n_factors=4, n_iterations=3, random_state=0),
    MatrixFactorizationRecommender(n_factors=4, algorithm="bpr", n_iterations=5,
                                   random_state=0),
    HMMRecommender(n_states=3, n_iter=5, random_state=0),
    SelfAttentionRecommender(hidden_size=4, max_history=4, max_epochs=2, batch_size=4,
                             random_state=0),
    SelfAttentionRecommender(hidden_size=4, n_heads=2, max_history=3,
                             user_embedding=True, max_epochs=2, batch_size=4,
                             random_state=0),
]

#: Estimators that depend on who the user is (its training history) but not on
#: the rows scored before: static, yet a known user differs from a stranger.
STATIC_PERSONALIZED = (MatrixFactorizationRecommender,)

#: Estimators whose predictions depend on the user's history.
SEQUENTIAL = (PersonalUnigramRecommender, BigramRecommender,
              CollaborativeGRURecommender, HMMRecommender,
              SelfAttentionRecommender) + STATIC_PERSONALIZED


def ids(estimator):
    return type(estimator).__name__
