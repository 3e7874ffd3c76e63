"""skcrnn: collaborative recurrent neural network recommenders for scikit-learn.

Estimators model ``P(next item | the user's past)`` from event DataFrames (one
row per event with a user, an item and a time column); see the user guide.
"""

from ._base import BaseRecommender
from ._counts import (BigramRecommender, PersonalUnigramRecommender,
                      UniformRecommender, UnigramRecommender)
from ._hmm import HMMRecommender
from ._mf import MatrixFactorizationRecommender
from ._rnn import CollaborativeGRURecommender

__version__ = "0.1.0"

__all__ = [
    "BaseRecommender",
    "BigramRecommender",
    "CollaborativeGRURecommender",
    "HMMRecommender",
    "MatrixFactorizationRecommender",
    "PersonalUnigramRecommender",
    "UniformRecommender",
    "UnigramRecommender",
    "__version__",
]
