"""The built-in ``sentiment`` scorer: VADER's compound score of a text, a number in [-1, 1].

VADER (Valence Aware Dictionary and sEntiment Reasoner; C. J. Hutto and E. Gilbert, "VADER: A
Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014) is a lexicon of
about 7,500 words and emoticons, each with a human-rated valence, plus a handful of rules for what changes
a word's force: negation ("not good"), degree words ("very", "barely"), "but" (the clause after it
weighs more), capitals and exclamation marks. The valences of a text's words, so adjusted, are summed and
the sum ``x`` is normalised to ``x / sqrt(x**2 + 15)``, the *compound* score, in [-1, 1]: above 0.05 reads
as positive, below -0.05 as negative, in between as neutral. It needs no model and no network, scores
thousands of texts a second on one CPU core, and is deterministic.

It is the reward of the seed documents' worked example (``rlxf demo``, docs/design.md "The embedded
default"): the default model continues the opening of a review (``rlxf/assets/review_openings.jsonl``)
and is rewarded for continuing it positively. The openings are chosen so that VADER scores each of them 0,
and :class:`SentimentScorer` scores the completion alone, so the reward is what the policy wrote.

Needs the ``vaderSentiment`` package (``pip install vadersentiment``); the analyzer (and its lexicon
file) is loaded once, on first use, and shared by every caller in the process.

:func:`sentiment_lexicon` is the set of words of that lexicon with a strong valence, for measuring how
much of a text is sentiment-bearing vocabulary (``rlxf eval``'s ``naturalness.lexicon_share``: a policy
that games this reward by stuffing praise words shows as a share far above its starting model's).
"""

from __future__ import annotations

import functools
import threading
from importlib import resources
from typing import Any

from rlxf.rollout.text_stats import words

PIP_COMMAND = "pip install vadersentiment"
"""How to install the package this scorer needs (named in the error when it is missing)."""

_analyzer: Any = None
_lock = threading.Lock()


def _get_analyzer() -> Any:
    """The process-wide VADER ``SentimentIntensityAnalyzer``, created on the first call."""
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                try:
                    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
                except ImportError as exc:
                    raise ImportError(
                        "the 'sentiment' scorer needs the vaderSentiment package (VADER); install it with: "
                        f"{PIP_COMMAND}"
                    ) from exc
                _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


@functools.lru_cache(maxsize=8)
def sentiment_lexicon(min_abs_valence: float = 1.0) -> frozenset[str]:
    """The words of VADER's own lexicon (``vader_lexicon.txt`` in the ``vaderSentiment`` package) whose
    mean human-rated valence ``v`` (on -4..4) has ``|v| >= min_abs_valence``; cached per threshold.

    The file has one entry a line, tab-separated: token, mean valence, standard deviation, the ten raters'
    scores. Only entries that are one word as :func:`rlxf.rollout.text_stats.words` reads text are kept
    (no space, no surrounding punctuation, at least one letter), so the set can be matched against a
    text's words: multi-word entries ("can't stand") and emoticons edged with punctuation (":)", ":-d") are
    left out (a few of letters and digits, "x-d", "8d", stay: a text's word matches one only when it is
    exactly that). With the default threshold 1.0 this is about 5,600 words: "great" (3.1) and "bad" (-2.5) are in, "okay" (0.9)
    is not, nor is any word VADER does not rate ("the"). Raises ``ImportError`` naming the pip command when
    ``vaderSentiment`` is missing.
    """
    if min_abs_valence < 0:
        raise ValueError(f"min_abs_valence must be >= 0, got {min_abs_valence}")
    try:
        import vaderSentiment
    except ImportError as exc:
        raise ImportError(
            f"the sentiment lexicon is VADER's: it needs the vaderSentiment package; install it with: {PIP_COMMAND}"
        ) from exc
    text = (resources.files(vaderSentiment) / "vader_lexicon.txt").read_text(encoding="utf-8")
    lexicon = set()
    for line in text.splitlines():
        fields = line.strip().split("\t")
        if len(fields) < 2:
            continue
        token, valence = fields[0], float(fields[1])
        if abs(valence) >= min_abs_valence and any(c.isalpha() for c in token) and words(token) == [token]:
            lexicon.add(token)
    return frozenset(lexicon)


def sentiment_scores(texts: list[str]) -> list[float]:
    """VADER's compound score of each text, in [-1, 1] (positive text near 1, negative near -1, neutral 0).

    ``texts`` is a list of strings; an empty or blank string scores 0. Raises ``TypeError`` for an item
    that is not a string and ``ImportError`` (naming the pip command) when ``vaderSentiment`` is missing.
    """
    if isinstance(texts, str):
        raise TypeError("sentiment_scores takes a list of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, expected a string")
    analyzer = _get_analyzer()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in texts]


class SentimentScorer:
    """A reward source: the VADER compound score of each *completion* (the continuation), in [-1, 1].

    Called as ``scorer(prompts, completions)`` like every reward source, it returns one float per pair.
    The prompt is not scored: in the sentiment task it is the neutral opening of a review that the model
    continues, and the reward should reflect only what the model wrote (scoring the whole text would
    add the same constant to every completion of a prompt, or reward a prompt the policy did not choose).
    """

    name = "sentiment"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Score ``completions[i]`` (a continuation of ``prompts[i]``); the lists must be the same length."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"got {len(prompts)} prompts and {len(completions)} completions; expected one completion "
                "per prompt"
            )
        return sentiment_scores(completions)

    def __repr__(self) -> str:
        return "SentimentScorer()"
