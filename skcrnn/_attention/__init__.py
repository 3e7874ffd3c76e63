"""The self-attention recommender, a small subclass of :mod:`skcrnn._torch`.

- :mod:`.network`: the causal self-attention network (item, start and
  position embeddings, optional user embeddings, pre-norm transformer
  blocks, the output layer);
- :mod:`.windows`: the windows it reads, for training steps and for the
  scored prefixes;
- :mod:`.estimator`: :class:`SelfAttentionRecommender`, parameters to
  network and windows; the rest is :mod:`skcrnn._torch`'s.
"""

from .estimator import SelfAttentionRecommender

__all__ = ["SelfAttentionRecommender"]
