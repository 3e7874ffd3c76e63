"""skcrnn: collaborative recurrent neural network recommenders for scikit-learn.

Estimators model ``P(next item | the user's past)`` from event DataFrames (one
row per event with a user, an item and a time column); see the user guide.

The estimators are imported on first use (PEP 562), so that ``import skcrnn``
stays light: torch, ``implicit`` and ``hmmlearn`` are loaded only by the
models that compute with them.
"""

import importlib

from ._version import __version__

#: Public name -> the module that defines it.
_LAZY = {
    "BaseRecommender": "._base",
    "BigramRecommender": "._counts",
    "PersonalUnigramRecommender": "._counts",
    "UniformRecommender": "._counts",
    "UnigramRecommender": "._counts",
    "HMMRecommender": "._hmm",
    "MatrixFactorizationRecommender": "._mf",
    "CollaborativeGRURecommender": "._rnn",
    "fit_distributed": "._torch.launch",
    "SelfAttentionRecommender": "._attention",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
