"""Statistics of generated text: diversity (distinct-n) and degenerate repetition.

Words are lower-cased whitespace tokens with surrounding punctuation stripped, so "Great," and "great"
count as one word; the statistics do not depend on any model's tokenizer.

* :func:`distinct_n` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct n-grams / all n-grams over a set of texts.
* :func:`repeats_ngram`: whether one n-gram occurs ``times`` or more in a text, the signature of a policy
  that found a reward hack by looping ("great great great ...").
* :func:`self_bleu` (Zhu et al. 2018, "Texygen"): how much each text's wording is shared by the others
  (higher = less diverse).
* :func:`novelty`: how unlike every text of a history each text is, by word n-gram overlap (the novelty
  bonus of Hong et al. 2024, "Curiosity-driven Red-teaming", in n-gram form).
* :func:`lexicon_share`: the share of words that belong to a lexicon, e.g. VADER's sentiment words
  (:func:`rlxf.feedback.sentiment.sentiment_lexicon`): a policy stuffing praise words to game a sentiment
  reward shows as a share far above its starting model's.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Collection, Iterable, Sequence

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


def lexicon_share(texts: Iterable[str], lexicon: Collection[str]) -> float:
    """Words of all texts found in ``lexicon`` divided by all their words (0.0 when there are none).

    Words are :func:`words`' (lower-cased, surrounding punctuation stripped), so the lexicon should hold
    lower-case words. Pooled over the texts, like :func:`distinct_n`: a long text weighs more than a
    short one. ``["Great, great film.", "The end"]`` with lexicon ``{"great"}``: 2 of 5 words, 0.4.
    """
    total = found = 0
    for text in texts:
        w = words(text)
        total += len(w)
        found += sum(word in lexicon for word in w)
    return found / total if total else 0.0


def _clipped_precision(candidate: list[tuple[str, ...]], references: list[Counter[tuple[str, ...]]]) -> int:
    """Matches of ``candidate``'s n-grams, each n-gram's count clipped by its largest count in one reference."""
    matches = 0
    for gram, count in Counter(candidate).items():
        best = max((ref[gram] for ref in references), default=0)
        matches += min(count, best)
    return matches


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al. 2018, "Texygen"): the mean over texts of BLEU of each text against all others.

    For text ``i`` (the candidate) and the other texts as references, with ``c_n(g)`` the count of n-gram
    ``g`` in the candidate and ``r_n(g)`` its largest count in any *one* reference::

        m_n = sum_g min(c_n(g), r_n(g))              (clipped matches)
        t_n = sum_g c_n(g)                           (candidate n-grams)
        p_1 = m_1 / t_1                              (unsmoothed)
        p_n = (m_n + 1) / (t_n + 1)       for n > 1  (add-one smoothing)
        BLEU_i = exp((1 / max_n) * sum_{n=1}^{max_n} log p_n)

    and ``self_bleu = mean_i BLEU_i``. The smoothing keeps a short text (fewer than ``n`` words, so
    ``t_n = 0`` and ``p_n = 1``) or one missing a single bigram from scoring 0 overall. There is no
    brevity penalty: the references are the other samples of the same policy, not translations of one
    source, so a text shorter than its neighbours is not thereby less similar to them (and a penalty would
    make the score depend on length differences rather than on shared wording). A text with no words scores
    0 (``p_1`` is undefined). Fewer than 2 texts give 0.0. Higher = the texts share more wording = less
    diverse.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    texts = list(texts)
    if len(texts) < 2:
        return 0.0
    # n-gram counts of every text per order, computed once and reused as candidate and as reference.
    counts = [[Counter(ngrams(text, n)) for n in range(1, max_n + 1)] for text in texts]
    grams = [[ngrams(text, n) for n in range(1, max_n + 1)] for text in texts]
    total = 0.0
    for i in range(len(texts)):
        if not grams[i][0]:
            continue  # no words: BLEU 0
        log_sum = 0.0
        for k in range(max_n):
            references = [counts[j][k] for j in range(len(texts)) if j != i]
            matches = _clipped_precision(grams[i][k], references)
            if k == 0:
                if matches == 0:
                    log_sum = -math.inf
                    break
                log_sum += math.log(matches / len(grams[i][k]))
            else:
                log_sum += math.log((matches + 1) / (len(grams[i][k]) + 1))
        total += math.exp(log_sum / max_n) if log_sum != -math.inf else 0.0
    return total / len(texts)


def novelty(texts: Sequence[str], history: Sequence[str], n: int = 2) -> list[float]:
    """Per text, the share of its word n-grams that are distinct and not in the closest history text, in
    [0, 1].

    With ``g(x)`` the list of word n-grams of ``x`` (every occurrence) and ``G(x)`` their *set*::

        novelty(x) = (|G(x)| - max_{h in history} |G(x) ∩ G(h)|) / |g(x)|
                   = (1 - max_h |G(x) ∩ G(h)| / |G(x)|)  *  |G(x)| / |g(x)|
                      new relative to the history        distinct within x

    This is the novelty bonus of Curiosity-driven Red-Teaming (Hong et al., ICLR 2024, "Curiosity-driven
    Red-teaming for Large Language Models") in an n-gram form: the red-team policy is paid for test cases
    unlike those it has already produced. (The paper's own terms are a negative SelfBLEU against the history
    and a cosine distance of sentence embeddings; this is the lexical, model-free analogue, cheap enough for
    every rollout.) Two ways to be paid without being new are closed, both seen in training:

    - a text of fewer than ``n`` words brings no new n-gram, so its novelty is 0 (paid 1, a prompter
      learned one-word inputs such as ``"Fake"``);
    - repeating one phrase adds occurrences but no distinct n-gram, so ``|G(x)| / |g(x)|`` scales it down
      ("Nonsense. Nonsense. Nonsense." has one distinct bigram in two: at most 0.5).

    With an empty history a text's novelty is its own distinct share ``|G(x)| / |g(x)|``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    history_sets = [set(ngrams(h, n)) for h in history]
    out = []
    for text in texts:
        occurrences = ngrams(text, n)  # g(x)
        if not occurrences:
            out.append(0.0)  # no n-gram: nothing new to pay for
            continue
        grams = set(occurrences)  # G(x)
        # n-grams shared with the closest history text
        seen = max((len(grams & h) for h in history_sets), default=0)
        out.append((len(grams) - seen) / len(occurrences))
    return out
