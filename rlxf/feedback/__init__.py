"""Feedback: reward sources that score a model's completions of prompts, returning one float each.

A reward source is a :class:`RewardSource`, ``source(prompts, completions) -> list[float]`` with a
``name``, checked on every call (a failure, a wrong count, a non-number or NaN is a :class:`RewardError`
naming the source). :func:`parse_reward_spec` makes one from a specification (docs/design.md "Reward
specifications"; module :mod:`~rlxf.feedback.rewards`):

* ``model:PATH``: a trained reward model (:class:`ModelReward`; inference in
  :mod:`~rlxf.feedback.reward_model`: :class:`RewardModel`, :class:`RewardHead`, input encoding);
* ``fn:module:function`` or ``fn:path/file.py:function``: a Python callable, called with keyword
  arguments ``prompts=``, ``completions=`` (as TRL calls reward functions);
* ``sentiment``: VADER's compound score of the completion, in [-1, 1] (:class:`SentimentScorer`,
  :func:`sentiment_scores`, :mod:`~rlxf.feedback.sentiment`; needs ``pip install vadersentiment``);
* ``judge:MODEL``: a language model's 1-9 rating from a rubric, as its expected value mapped to [0, 1]
  (:class:`JudgeReward` over :class:`PointwiseJudge`);
* ``http://...`` / ``https://...``: a remote scorer answering a JSON POST (:class:`HttpReward`, over
  :func:`~rlxf.feedback.http.post_json`);
* a weighted sum: ``"0.7*sentiment + 0.3*model:PATH"``, or in YAML a list of ``{source: SPEC, weight: W}``
  (:class:`WeightedSum`).

Language-model judges (pointwise ratings, pairwise verdicts in both orders, local or OpenAI-compatible)
are :mod:`~rlxf.feedback.lm_judge`; the commands ``rlxf judge`` and ``rlxf simulate`` are
:mod:`~rlxf.feedback.judge` and :mod:`~rlxf.feedback.simulate`; the labelling app is
:mod:`~rlxf.feedback.label`.
"""

from rlxf.feedback.http import RemoteError, post_json
from rlxf.feedback.lm_judge import DEFAULT_JUDGE_TEMPLATE, JudgeRatings, PointwiseJudge
from rlxf.feedback.reward_model import RewardHead, RewardModel, RewardScores
from rlxf.feedback.rewards import (
    SPEC_FORMS,
    HttpReward,
    JudgeReward,
    KeywordFunction,
    ModelReward,
    RewardError,
    RewardOptions,
    RewardSource,
    WeightedSum,
    parse_reward_spec,
)
from rlxf.feedback.sentiment import SentimentScorer, sentiment_scores

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "SPEC_FORMS",
    "HttpReward",
    "JudgeRatings",
    "JudgeReward",
    "KeywordFunction",
    "ModelReward",
    "PointwiseJudge",
    "RemoteError",
    "RewardError",
    "RewardHead",
    "RewardModel",
    "RewardOptions",
    "RewardScores",
    "RewardSource",
    "SentimentScorer",
    "WeightedSum",
    "parse_reward_spec",
    "post_json",
    "sentiment_scores",
]
