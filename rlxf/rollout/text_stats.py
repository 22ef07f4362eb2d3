"""Statistics of generated text: diversity (distinct-n) and degenerate repetition.

Words are lower-cased whitespace tokens with surrounding punctuation stripped, so "Great," and "great"
count as one word; the statistics do not depend on any model's tokenizer.

* :func:`distinct_n` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct n-grams / all n-grams over a set of texts.
* :func:`repeats_ngram`: whether one n-gram occurs ``times`` or more in a text, the signature of a policy
  that found a reward hack by looping ("great great great ...").
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable

_PUNCTUATION = string.punctuation + "“”‘’…"


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens without surrounding punctuation; empty ones dropped."""
    out = []
    for token in text.lower().split():
        token = token.strip(_PUNCTUATION)
        if token:
            out.append(token)
    return out


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of ``text`` in order."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    w = words(text)
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def repeats_ngram(text: str, n: int = 3, times: int = 3) -> bool:
    """Whether some word n-gram occurs at least ``times`` times in ``text`` (overlaps counted)."""
    if times < 2:
        raise ValueError(f"times must be >= 2, got {times}")
    counts = Counter(ngrams(text, n))
    return any(c >= times for c in counts.values())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct word n-grams over all texts divided by their total count (0.0 when there are none)."""
    total = 0
    seen: set[tuple[str, ...]] = set()
    for text in texts:
        grams = ngrams(text, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0
