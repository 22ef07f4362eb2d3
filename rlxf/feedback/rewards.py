"""Reward specifications -> reward sources, checked on every call.

A *reward source* is a :class:`RewardSource`: ``source(prompts, completions) -> list[float]``, one finite
float per completion, with a ``name`` (the specification it came from). :func:`parse_reward_spec` turns a
specification (docs/design.md "Reward specifications") into one:

* ``model:PATH``: a trained reward model (its run folder or ``model/`` folder), scored through
  :class:`~rlxf.feedback.reward_model.RewardModel` exactly as it was trained; an ensemble gives the mean of
  its heads, minus ``uncertainty_penalty`` times their std when that is set (:class:`ModelReward`);
* ``fn:module:function`` or ``fn:path/file.py:function``: a Python callable, called as
  ``fn(prompts=..., completions=...)`` (keyword arguments, as TRL calls its reward functions);
* ``sentiment``: the built-in VADER scorer (:class:`~rlxf.feedback.sentiment.SentimentScorer`);
* ``pep8`` and ``offensive``: the built-in scorers of the pretraining-with-human-feedback tasks (Korbak et
  al. 2023), minus PEP 8 violations per character (:class:`~rlxf.feedback.code_style.Pep8Scorer`) and
  minus the probability of offensive language (:class:`~rlxf.feedback.offensive.OffensiveScorer`); both
  need the ``rlxf[phf]`` extra;
* ``judge:MODEL``: AI feedback from a language model that rates each completion 1-9
  (:class:`JudgeReward`, a thin adapter over :class:`~rlxf.feedback.lm_judge.PointwiseJudge`; the reward
  is the expected rating mapped to [0, 1]);
* ``http://...`` or ``https://...``: a remote scorer that answers a JSON POST (:class:`HttpReward`, over
  :func:`~rlxf.feedback.http.post_json`);
* a weighted sum of these: in YAML a list of ``{source: SPEC, weight: W}`` (or bare specs, weight 1), on
  the command line ``"0.7*sentiment + 0.3*model:runs/rm"`` (:class:`WeightedSum`).

Parsing loads what a source needs (the reward or judge model, the Python module, VADER, pycodestyle, the
offensive-language classifier), so a bad specification stops a run before any work. Every call goes
through :meth:`RewardSource.__call__`, which turns a failure, a wrong count, a non-number, NaN or an
infinity into a :class:`RewardError` that names the source, the completion and its prompt: a broken
reward never silently becomes zero.

What an RL trainer does to a batch's rewards before computing advantages (length penalty, normalisation,
clipping) lives beside it, in :mod:`rlxf.algos.reward_shaping`.

Everything about language-model judges (rubrics, answer-token probabilities, pairwise verdicts) lives in
:mod:`rlxf.feedback.lm_judge`.

Left out: per-token (process) rewards, passing dataset columns besides prompts and completions to ``fn:``
sources, concurrent HTTP requests, and caching scores of repeated completions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlxf.config import option
from rlxf.feedback.code_style import Pep8Scorer, pep8_scores
from rlxf.feedback.http import post_json
from rlxf.feedback.lm_judge import DEFAULT_JUDGE_TEMPLATE, PointwiseJudge, check_judge_template
from rlxf.feedback.offensive import OffensiveScorer, offensive_probabilities
from rlxf.feedback.reward_model import RewardModel
from rlxf.feedback.sentiment import SentimentScorer, sentiment_scores
from rlxf.models.load import Device, DType, ModelConfig

SPEC_FORMS = (
    "model:PATH (a trained reward model), fn:module:function or fn:path/file.py:function (a Python "
    "callable), sentiment (the built-in VADER scorer), pep8 or offensive (the built-in scorers of code "
    "style and offensive language), judge:MODEL (AI feedback), an http:// or https:// URL (a remote "
    "scorer), or a weighted sum: '0.7*sentiment + 0.3*model:PATH' (in YAML a list of "
    "{source: SPEC, weight: W})"
)
"""The accepted specification forms, as error messages list them."""

ScoreFn = Callable[[list[str], list[str]], Any]
"""What a source wraps: prompts and completions in, one number per completion out (checked by the source)."""


class RewardError(RuntimeError):
    """A reward source failed or returned something other than one finite number per completion."""


# ---------------------------------------------------------------------------------------------- the source


def _excerpt(text: Any, limit: int = 60) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class RewardSource:
    """A named reward source: ``source(prompts, completions) -> list[float]``, checked on every call.

    ``scorer`` does the work (one of the scorer classes of this module, a user's function, ...); the source
    makes sure that what comes back is one finite float per completion and names itself when it is not.
    """

    def __init__(self, name: str, scorer: ScoreFn) -> None:
        self.name = name
        self.scorer = scorer

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """One finite float per completion; raises :class:`RewardError` naming this source otherwise."""
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):  # the caller's mistake, not the source's
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not completions:  # nothing to score: do not ask a model or a server about an empty batch
            return []
        try:
            result = self.scorer(prompts, completions)
        except RewardError:  # a part of a weighted sum: its message already names the culprit
            raise
        except Exception as exc:
            raise RewardError(f"reward source {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        return self._check(result, prompts)

    def _check(self, result: Any, prompts: list[str]) -> list[float]:
        n = len(prompts)
        if isinstance(result, (torch.Tensor, np.ndarray)):  # as python numbers, checked like a list's
            result = result.tolist()
        if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
            raise RewardError(
                f"reward source {self.name!r} returned a {type(result).__name__}, expected a list of {n} numbers"
            )
        if len(result) != n:
            raise RewardError(
                f"reward source {self.name!r} returned {len(result)} values for {n} completions"
            )
        rewards = []
        for i, value in enumerate(result):
            where = f"for completion {i} of {n} (prompt {_excerpt(prompts[i])})"
            if not isinstance(value, Real):
                raise RewardError(
                    f"reward source {self.name!r} returned {value!r} ({type(value).__name__}, not a number) "
                    f"{where}"
                )
            value = float(value)
            if not math.isfinite(value):
                raise RewardError(f"reward source {self.name!r} returned {value} {where}")
            rewards.append(value)
        return rewards

    def __repr__(self) -> str:
        return f"RewardSource({self.name!r})"


# ---------------------------------------------------------------------------------------------- options


@dataclass
class RewardOptions:
    """How the sources of a reward specification run (the parts of a weighted sum share these)."""

    device: Device = option("auto", help="where model: and judge: models run; auto = cuda if available")
    dtype: DType = option(
        "auto", help="precision of model: and judge: models; auto = bfloat16 where native, else float32"
    )
    batch_size: int = option(16, help="texts per forward pass of model: and judge: sources")
    uncertainty_penalty: float = option(
        0.0, help="model: with an ensemble: reward = mean - k * std across its heads (pessimism where unsure)"
    )
    judge_template: str = option(
        DEFAULT_JUDGE_TEMPLATE, help="judge: the rubric, with {prompt} and {completion} placeholders"
    )
    timeout: float = option(60.0, help="http(s): seconds to wait for the scorer's answer")
    retries: int = option(2, help="http(s): attempts after the first when the connection fails")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        check_judge_template(self.judge_template)


# ---------------------------------------------------------------------------------------------- scorers


class ModelReward:
    """``model:PATH``: a trained reward model's reward (the mean over an ensemble's heads), optionally minus
    ``uncertainty_penalty * std`` across the heads: an ensemble disagrees most where the policy has left
    the reward model's data, which is where over-optimisation happens (Coste et al. 2024)."""

    def __init__(self, model: Any, uncertainty_penalty: float = 0.0) -> None:
        if uncertainty_penalty and model.head.ensemble_size == 1:
            raise ValueError("uncertainty_penalty needs an ensemble reward model (ensemble_size > 1)")
        self.model = model
        self.uncertainty_penalty = uncertainty_penalty

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        scores = self.model.score(prompts, completions)
        reward = scores.reward
        if self.uncertainty_penalty:
            reward = reward - self.uncertainty_penalty * scores.std
        return reward.tolist()


class KeywordFunction:
    """``fn:...``: a user's callable, called with keyword arguments as TRL calls its reward functions, so
    the same function serves both (it may take ``**kwargs`` and return floats)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, prompts: list[str], completions: list[str]) -> Any:
        return self.fn(prompts=prompts, completions=completions)


class HttpReward:
    """A remote scorer: POST ``{"prompts": [...], "completions": [...]}`` as JSON (through
    :func:`~rlxf.feedback.http.post_json`: timeouts, retries of failed connections, errors naming the URL)
    and expect ``{"rewards": [...]}`` back."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 2) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries

    def __call__(self, prompts: list[str], completions: list[str]) -> Any:
        body = {"prompts": prompts, "completions": completions}
        answer = post_json(self.url, body, timeout=self.timeout, retries=self.retries)
        if not isinstance(answer, dict) or "rewards" not in answer:
            raise ValueError(f'the answer has no "rewards" field: {str(answer)[:200]}')
        return answer["rewards"]


class JudgeReward:
    """``judge:MODEL``: the reward is a pointwise LM judge's expected 1-9 rating mapped to [0, 1],
    ``(expected - 1) / 8``, so judges compose with other sources in a weighted sum on a known scale. The
    judge (rubric, answer-token probabilities) is :class:`~rlxf.feedback.lm_judge.PointwiseJudge`; no
    sampling, so the reward is deterministic."""

    def __init__(self, judge: PointwiseJudge) -> None:
        self.judge = judge

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return ((self.judge.rate(prompts, completions).expected - 1) / 8).tolist()


class WeightedSum:
    """``sum_k w_k * source_k``: each part is a checked :class:`RewardSource`, so a bad part is named."""

    def __init__(self, parts: Sequence[tuple[float, RewardSource]]) -> None:
        if not parts:
            raise ValueError("a weighted sum needs at least one reward source")
        self.parts = list(parts)

    @property
    def name(self) -> str:
        return " + ".join(f"{weight:g}*{source.name}" for weight, source in self.parts)

    def score_parts(self, prompts: list[str], completions: list[str]) -> dict[str, list[float]]:
        """Each part's (unweighted) rewards by name, e.g. to log them apart."""
        return {source.name: source(prompts, completions) for _, source in self.parts}

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        total = [0.0] * len(completions)
        for weight, source in self.parts:
            total = [t + weight * r for t, r in zip(total, source(prompts, completions))]
        return total


# ---------------------------------------------------------------------------------------------- parsing


_WEIGHTED_TERM = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*(\S.*)$")


def _load_function(spec: str) -> Callable[..., Any]:
    """The callable of ``fn:module:function`` or ``fn:path/file.py:function``."""
    target, _, name = spec.removeprefix("fn:").rpartition(":")
    if not target or not name:
        raise ValueError(f"reward spec {spec!r}: expected fn:module:function or fn:path/file.py:function")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ValueError(f"reward spec {spec!r}: no such file {path}")
        # A name unique to the file, registered before running it (dataclasses and pickling look it up)
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        module_spec = importlib.util.spec_from_file_location(f"rlxf_reward_fn_{path.stem}_{digest}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_spec.name]
            raise ValueError(
                f"reward spec {spec!r}: running {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        where = f"file {path}"
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ValueError(
                f"reward spec {spec!r}: cannot import {target}: {type(exc).__name__}: {exc}"
            ) from exc
        where = f"module {target}"
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward spec {spec!r}: {where} has no function {name!r}")
    return fn


def _parse_one(spec: str, options: RewardOptions) -> RewardSource:
    """One specification that is not a weighted sum."""
    if spec.startswith("model:"):
        try:
            model = RewardModel.load(
                spec.removeprefix("model:"),
                device=options.device,
                dtype=options.dtype,
                batch_size=options.batch_size,
            )
            return RewardSource(spec, ModelReward(model, options.uncertainty_penalty))
        except (OSError, ValueError) as exc:
            raise ValueError(f"reward spec {spec!r}: {exc}") from exc
    if spec.startswith("fn:"):
        return RewardSource(spec, KeywordFunction(_load_function(spec)))
    if spec == "sentiment":
        sentiment_scores([])  # loads VADER now: a missing package stops the run before any work
        return RewardSource(spec, SentimentScorer())
    if spec == "pep8":
        pep8_scores([])  # imports pycodestyle now: a missing package stops the run before any work
        return RewardSource(spec, Pep8Scorer())
    if spec == "offensive":
        offensive_probabilities([])  # loads the classifier now: a missing package stops the run here too
        return RewardSource(spec, OffensiveScorer())
    if spec.startswith("judge:"):
        try:
            model = ModelConfig(
                name_or_path=spec.removeprefix("judge:"), device=options.device, dtype=options.dtype
            )
            judge = PointwiseJudge.load(model, template=options.judge_template, batch_size=options.batch_size)
        except (OSError, ValueError) as exc:
            raise ValueError(f"reward spec {spec!r}: {exc}") from exc
        return RewardSource(spec, JudgeReward(judge))
    if spec.startswith(("http://", "https://")):
        return RewardSource(spec, HttpReward(spec, timeout=options.timeout, retries=options.retries))
    raise ValueError(f"unknown reward spec {spec!r}; expected one of: {SPEC_FORMS}")


def _list_term(item: Any) -> tuple[float, str]:
    """``(weight, spec)`` of one YAML list item: a spec string or ``{source: SPEC, weight: W}``."""
    if isinstance(item, str):
        return 1.0, item.strip()
    if not isinstance(item, Mapping) or not isinstance(item.get("source"), str):
        raise ValueError(
            f"a weighted reward item must be a spec or {{source: SPEC, weight: W}}, got {item!r}"
        )
    unknown = set(item) - {"source", "weight"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in weighted reward item {dict(item)!r}")
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight):
        raise ValueError(f"the weight of {item['source']!r} must be a finite number, got {weight!r}")
    return float(weight), item["source"].strip()


def _string_term(term: str) -> tuple[float, str]:
    """``(weight, spec)`` of ``W*SPEC`` or ``SPEC`` (weight 1)."""
    match = _WEIGHTED_TERM.match(term.strip())
    return (float(match[1]), match[2].strip()) if match else (1.0, term.strip())


def parse_reward_spec(
    spec: str | Sequence[str | Mapping[str, Any]], options: RewardOptions | None = None
) -> RewardSource:
    """The reward source a specification names (see the module docstring for the forms).

    ``spec`` is a string (``"sentiment"``, ``"0.7*sentiment + 0.3*model:runs/rm"``) or, from YAML, a list
    of specs and ``{source: SPEC, weight: W}`` items. Models, modules and the built-in scorers' packages
    (VADER, pycodestyle, the offensive-language classifier) are loaded here, so a bad specification raises
    ``ValueError`` (naming it) and a missing package ``ImportError`` (naming the pip command) before any
    training. The source's ``name`` is the specification; a weighted sum's is written ``W*SPEC + ...``.
    """
    options = options or RewardOptions()
    if isinstance(spec, str):
        spec = spec.strip()
        terms = [_string_term(term) for term in spec.split(" + ")]
        if len(terms) == 1 and not _WEIGHTED_TERM.match(spec):
            return _parse_one(spec, options)
    elif isinstance(spec, Sequence):
        if not spec:
            raise ValueError(f"the weighted reward list is empty; expected one of: {SPEC_FORMS}")
        terms = [_list_term(item) for item in spec]
    else:
        raise TypeError(f"a reward spec is a string or a list, got {type(spec).__name__}")
    total = WeightedSum([(weight, _parse_one(part, options)) for weight, part in terms])
    return RewardSource(total.name, total)
