"""Feedback: reward sources that score a model's completions of prompts, returning one float each.

A reward source is a callable ``(prompts, completions) -> list[float]`` (DESIGN.md "Reward
specifications"). Built in so far:

* :class:`SentimentScorer` (spec ``sentiment``) and :func:`sentiment_scores`: VADER's compound score of
  the completion, in [-1, 1], the reward of the worked sentiment example
  (:mod:`~rlxf.feedback.sentiment`; needs ``pip install vadersentiment``, imported on first use).
"""

from rlxf.feedback.sentiment import SentimentScorer, sentiment_scores

__all__ = ["SentimentScorer", "sentiment_scores"]
