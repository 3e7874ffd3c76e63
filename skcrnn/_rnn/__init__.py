"""The collaborative recurrent neural network recommender (torch)."""

from ._estimator import CollaborativeGRURecommender

__all__ = ["CollaborativeGRURecommender"]
