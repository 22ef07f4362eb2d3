"""The built-in ``offensive`` scorer: minus the probability that a text is offensive, a number in [-1, 0].

The toxicity task of *pretraining with human feedback* (Korbak et al., "Pretraining Language Models with
Human Preferences", ICML 2023) scores text with a classifier of offensive language and
rewards the model for writing what it finds inoffensive. The paper uses Detoxify, a fine-tuned BERT
that has to be downloaded; the built-in scorer is an offline stand-in, ``alt-profanity-check``: TF-IDF
weights of words (a bag of about 15,000 English words, stop words dropped) under a linear SVM, its scores
calibrated to probabilities by Platt's sigmoid (scikit-learn's ``CalibratedClassifierCV``), trained on
about 200,000 human-labelled texts (tweets and Wikipedia talk-page comments) and shipped inside the wheel,
so nothing is downloaded. The reward is::

    r(text) = - P(offensive | text)          in [-1, 0]

It is fast (over 100,000 short texts a second on one CPU core) and deterministic, but it reads
words, not meaning: it catches profanity and insults, not politely worded hostility, and it flags a swear
word in a harmless sentence. It suits a filter or a reward of text written by a small model; a learned
reward model (``model:PATH``) or a judge (``judge:MODEL``) reads more.

Needs the ``alt-profanity-check`` package (``pip install 'rlxf[phf]'``), which pins the scikit-learn
version its model was pickled with. The model is loaded once, on first use, and shared by every caller
in the process; a missing package is an ``ImportError`` naming the pip command. When scikit-learn is not
the version the model was pickled with (another was installed after it), unpickling warns "Trying to
unpickle estimator ... from version X when using version Y. This might lead to breaking code or invalid
results" once per pickled estimator, a dozen times: those warnings are logged at DEBUG (logger
``rlxf.feedback.offensive``) instead of shown; any other warning is passed on.

Left out: Detoxify and other neural classifiers (a ``model:`` or ``fn:`` reward covers them), per-category
scores (threat, identity attack), languages other than English.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["PIP_COMMAND", "OffensiveScorer", "offensive_probabilities"]

PIP_COMMAND = "pip install 'rlxf[phf]'"
"""How to install the package this scorer needs (named in the error when it is missing)."""

logger = logging.getLogger(__name__)

_VERSION_WARNING = "Trying to unpickle estimator"
"""How scikit-learn's warning about a model pickled by another version begins (InconsistentVersionWarning
since 1.3, a plain UserWarning before)."""

_predict_prob: Callable[[list[str]], Any] | None = None
_lock = threading.Lock()

T = TypeVar("T")


def _load_quietly(load: Callable[[], T]) -> T:
    """``load()``, with scikit-learn's version warnings logged at DEBUG and every other warning passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record everything; the caller's filters judge what is passed on
        result = load()
    versions = [w for w in caught if str(w.message).startswith(_VERSION_WARNING)]
    if versions:
        logger.debug(
            "alt-profanity-check: %d scikit-learn version warnings while loading its model, the first: %s",
            len(versions),
            versions[0].message,
        )
    for w in caught:
        if w not in versions:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return result


def _import_predict_prob() -> Callable[[list[str]], Any]:
    from profanity_check import predict_prob  # unpickles the vectorizer and the model on import

    return predict_prob


def _get_predict_prob() -> Callable[[list[str]], Any]:
    """alt-profanity-check's ``predict_prob``, its model loaded on the first call."""
    global _predict_prob
    if _predict_prob is None:
        with _lock:
            if _predict_prob is None:
                try:
                    _predict_prob = _load_quietly(_import_predict_prob)
                except ImportError as exc:
                    raise ImportError(
                        "the 'offensive' scorer needs the alt-profanity-check package (a scikit-learn model "
                        f"shipped in the wheel); install it with: {PIP_COMMAND}"
                    ) from exc
    return _predict_prob


def offensive_probabilities(texts: Sequence[str]) -> list[float]:
    """The probability that each text is offensive, in [0, 1], from alt-profanity-check's classifier.

    ``texts`` is a sequence of strings (not one string); an empty string gets the score of a text without
    words (about 0.04). Raises ``TypeError`` naming a non-string item and ``ImportError`` (naming the pip
    command) when the package is missing.
    """
    if isinstance(texts, str):
        raise TypeError("offensive_probabilities takes a list of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, expected a string")
    predict_prob = _get_predict_prob()  # a missing package fails even for an empty list
    if not texts:  # scikit-learn refuses a batch of 0 samples
        return []
    return [float(p) for p in predict_prob(texts)]  # [n] numpy float64 -> python floats


class OffensiveScorer:
    """A reward source: minus the probability that each *completion* is offensive, in [-1, 0].

    Called as ``scorer(prompts, completions)`` like every reward source. The prompt is not scored: it is
    given, not written by the model, so an offensive prompt must not lower the reward of a completion
    that answers it decently (nor a clean prompt dilute an offensive completion, since the classifier
    reads word frequencies of the whole text it is given).
    """

    name = "offensive"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Score ``completions[i]`` (a continuation of ``prompts[i]``); the lists must be the same length."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"got {len(prompts)} prompts and {len(completions)} completions; expected one completion "
                "per prompt"
            )
        return [-p for p in offensive_probabilities(completions)]

    def __repr__(self) -> str:
        return "OffensiveScorer()"
