"""Every estimator of the package, with settings small enough for tests.

New estimators are added here so that the contract suite covers them.
"""

from skcrnn import (BigramRecommender, PersonalUnigramRecommender,
                    UniformRecommender, UnigramRecommender)

ALL_ESTIMATORS = [
    UniformRecommender(),
    UnigramRecommender(alpha=0.5),
    PersonalUnigramRecommender(beta=2.0),
    BigramRecommender(alpha=3.0),
]

#: Estimators whose predictions depend on the user's history.
SEQUENTIAL = (PersonalUnigramRecommender, BigramRecommender)


def ids(estimator):
    return type(estimator).__name__
